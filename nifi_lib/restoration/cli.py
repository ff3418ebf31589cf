"""``nifi restore`` (the authors' inference.py flags, plus --t0/--seed) and ``nifi export-ckpt``."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from ..diffusion.backbone import DTYPES
from ..errors import NifiError
from ..io.images import IMAGE_EXTS, ImageError, list_images, load_image, save_image
from ..paths import repo_path


class RestoreInputError(NifiError, ValueError):
    pass


def _resolve_io(lq: Path, out: Path) -> list[tuple[Path, Path]]:
    if lq.is_dir():
        files = list_images(lq)
        if not files:
            raise RestoreInputError(f"{lq}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
        if out.exists() and not out.is_dir():
            raise RestoreInputError(f"{out}: --lq is a folder, so --out must be a folder")
        return [(f, out / (f.stem + ".png")) for f in files]
    if not lq.is_file():
        raise RestoreInputError(f"{lq}: input image or folder not found")
    target = out / (lq.stem + ".png") if out.is_dir() or str(out).endswith("/") else out
    return [(lq, target)]


def cmd_restore(args: argparse.Namespace) -> int:
    from .restorer import Restorer, to_model_range, to_unit_range

    pairs = _resolve_io(Path(args.lq), Path(args.out))
    # Read and check every input before loading the model or writing anything.
    images = []
    for src, _ in pairs:
        images.append(load_image(src))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    restorer = Restorer.from_pretrained(str(repo_path(args.base_model)) if Path(repo_path(args.base_model)).exists()
                                        else args.base_model, ckpt=args.ckpt, embeddings=args.embeddings,
                                        device=device, dtype=dtype, t0=args.t0, tile_size=args.tile_size)
    results = []
    for (src, dst), img in tqdm(list(zip(pairs, images)), desc="restore", disable=len(pairs) < 2):
        out = restorer.restore(to_model_range(img)[None], seed=args.seed)
        results.append((dst, to_unit_range(out[0]).cpu()))
    for dst, img in results:  # every frame restored before the first is written
        save_image(dst, img)
        print(dst)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..diffusion.backbone import load_backbone
    from .checkpoint import save_authors_checkpoint
    from .io import load_restorer_weights

    bb = load_backbone(args.base_model, embeddings=None, device="cpu", dtype="fp32")
    fmt = load_restorer_weights(args.ckpt, bb)
    save_authors_checkpoint(args.out, bb)
    print(f"exported phi- from {args.ckpt} ({fmt}) to {args.out} in the authors' format")
    return 0


def register(sub) -> None:
    p = sub.add_parser("restore", help="one-step restoration of rendered frames (Eq. 7)")
    p.add_argument("--base_model", default="data/embedded/backbone",
                   help="diffusers folder or hub id (paper: stabilityai/stable-diffusion-3-medium-diffusers)")
    p.add_argument("--ckpt", default=None, help="phi- weights: the authors' .ckpt, a .safetensors adapter file or "
                                                "a training checkpoint (latest.pt/best.pt); omit for the frozen base")
    p.add_argument("--lq", required=True, help="degraded image or folder of images")
    p.add_argument("--out", required=True, help="output image or folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--embeddings", default=None, help="prompt-embedding .npz (prompt_embeds, pooled_prompt_embeds)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--t0", type=int, default=199, help="intermediate timestep of Eq. 7 (of 1000)")
    p.add_argument("--seed", type=int, default=0, help="seeds the latent sample and the noise")
    p.add_argument("--tile_size", type=int, default=None, help="process frames larger than this in tiles (pixels)")
    p.set_defaults(func=cmd_restore)

    e = sub.add_parser("export-ckpt", help="export phi- to the authors' checkpoint format")
    e.add_argument("--base_model", default="data/embedded/backbone")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)


__all__ = ["register", "ImageError"]

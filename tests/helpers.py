"""Small builders shared by tests (tiny SD3-shaped backbones, random LoRA checkpoints)."""
from __future__ import annotations

import torch

from nifi_lib.diffusion.backbone import build_tiny_backbone

# SD3-like VAE: factor 8 (four blocks), its scaling and shift factors (the shift must NOT be applied).
SD3_LIKE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
    scaling_factor=1.5305, shift_factor=0.0609,
)
TINY_TRANSFORMER = dict(
    sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
    num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
    pos_embed_max_size=32,
)


def tiny_backbone(seed: int = 0):
    bb = build_tiny_backbone(seed=seed, vae_config=SD3_LIKE_VAE, transformer_config=TINY_TRANSFORMER)
    return bb.freeze()


def randomize_lora(model, adapter: str, seed: int, scale: float = 0.05) -> None:
    """Give an adapter non-zero A and B (peft initialises B to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n and f".{adapter}." in n + ".":
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def save_tiny_restorer(root, note: str = "test"):
    """``root/backbone`` (a tiny SD3-shaped backbone folder) and ``root/r.ckpt`` (phi- with random rank-2 LoRA
    weights, the authors' checkpoint format); returns the backbone with its adapters."""
    from pathlib import Path

    from nifi_lib.restoration.checkpoint import save_authors_checkpoint
    from nifi_lib.restoration.lora import RESTORER, add_restorer_adapters

    root = Path(root)
    bb = tiny_backbone(seed=0)
    bb.save_pretrained(root / "backbone", info={"note": note})
    add_restorer_adapters(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=1)
    save_authors_checkpoint(root / "r.ckpt", bb)
    return bb


def folder_of_frames(root, sizes):
    """A folder of random RGB PNG frames ``f00.png, f01.png, ...`` of the given ``(width, height)`` sizes."""
    import numpy as np
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"f{i:02d}.png")
    return root


def restore_folder(model_dir, lq, out, *extra) -> int:
    """`nifi restore` of ``lq`` with the tiny restorer saved by :func:`save_tiny_restorer` in ``model_dir``."""
    from nifi_lib.cli import main

    return main(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(model_dir / "r.ckpt"),
                 "--lq", str(lq), "--out", str(out), "--device", "cpu", "--seed", "3", *extra])


def png_arrays(folder) -> dict:
    """``{file name: uint8 array}`` of every image in ``folder``."""
    import numpy as np
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


def lib_call_sites(name: str) -> dict[str, int]:
    """``{module path under nifi_lib: number of direct calls of name}`` (calls of the imported function, not
    methods of the same name): the one-home checks."""
    import ast
    from pathlib import Path

    lib = Path(__file__).resolve().parents[1] / "nifi_lib"
    out: dict[str, int] = {}
    for f in lib.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
                rel = str(f.relative_to(lib))
                out[rel] = out.get(rel, 0) + 1
    return out

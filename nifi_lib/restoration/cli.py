"""``nifi restore`` (the authors' inference.py flags, plus --t0/--seed; a folder streamed in batches, resumable;
the loop itself is :func:`restore_stream`, which the GPU bench's ``stream`` part also runs) and ``nifi export-ckpt``."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from ..devices import default_device
from ..diffusion.backbone import DTYPES
from ..errors import NifiError
from ..io.images import BACKGROUNDS, IMAGE_EXTS, ImageError, ImageModeError, list_images, load_image, probe_rgb
from ..io.prefetch import BackgroundWriter, prefetched

# (input, output, (width, height)): a frame to restore and where it goes
Item = tuple[Path, Path, tuple[int, int]]


class RestoreInputError(NifiError, ValueError):
    pass


# The authors' inference.py spellings of --dtype, on top of the canonical names of DTYPES.
DTYPE_ALIASES = {"f16": "fp16", "f32": "fp32"}
DTYPE_CHOICES = sorted(set(DTYPES) | set(DTYPE_ALIASES))


def _canonical_dtype(name: str | None) -> str | None:
    return None if name is None else DTYPE_ALIASES.get(name, name)


def _check_device(device: str) -> str:
    """``--device`` as torch understands it, or a one-line error when that device is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise RestoreInputError(f"--device {device}: not a device torch knows ({e}); use cpu or cuda") from e
    if dev.type == "cuda":
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        if not torch.cuda.is_available():
            raise RestoreInputError(f"--device {device} requested but no CUDA GPU is available ({build}); "
                                    "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RestoreInputError(f"--device {device} requested but only {torch.cuda.device_count()} CUDA "
                                    f"GPU(s) are visible ({build}); use --device cuda:0 or --device cpu")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RestoreInputError(f"--device {device} requested but no Apple MPS device is available "
                                    f"(torch {torch.__version__}); use --device cpu")
    return device


def _read_input(src: Path, allow_convert: bool, background: str) -> torch.Tensor:
    try:
        return load_image(src, allow_convert=allow_convert, background=background)
    except ImageModeError as e:   # the library's hint names the Python keyword; name the flag instead
        raise RestoreInputError(f"{src}: image mode is {e.mode}, expected 8-bit RGB; convert it to RGB first "
                                f"or pass --allow_convert (greyscale/palette -> RGB, transparency composited on "
                                f"--background, default white)") from e


def _resolve_io(lq: Path, out: Path) -> list[tuple[Path, Path]]:
    """``(input, output)`` paths (paths only: frames are read one batch at a time, :func:`iter_batches`)."""
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


def _probe_input(src: Path, allow_convert: bool) -> tuple[int, int]:
    """``(width, height)`` of an input after the header checks (mode, bit depth, size), pixels not decoded."""
    try:
        return probe_rgb(src, allow_convert=allow_convert)
    except ImageModeError as e:
        raise RestoreInputError(f"{src}: image mode is {e.mode}, expected 8-bit RGB; convert it to RGB first "
                                f"or pass --allow_convert (greyscale/palette -> RGB, transparency composited on "
                                f"--background, default white)") from e


def iter_batches(items: Iterable[Item], batch_size: int,
                 read: Callable[[Path], torch.Tensor]) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """``(outputs, frames (B, 3, H, W) in [0, 1])`` batches of up to ``batch_size`` consecutive frames of one size.

    Lazy: a frame is read (``read(src)``) only when its batch is formed, so at most one batch is held in memory
    whatever the folder's length; a frame of another size than the one before starts a new batch."""
    if batch_size < 1:
        raise RestoreInputError(f"--batch_size {batch_size}: must be at least 1")
    dsts: list[Path] = []
    frames: list[torch.Tensor] = []
    size = None
    for src, dst, wh in items:
        if dsts and (wh != size or len(dsts) == batch_size):
            yield dsts, torch.stack(frames)
            dsts, frames = [], []
        size = wh
        dsts.append(dst)
        frames.append(read(src))
    if dsts:
        yield dsts, torch.stack(frames)


def check_stream_options(prefetch: int, writers: int, png_level: int | None) -> None:
    """:class:`RestoreInputError` unless ``--prefetch`` >= 0, ``--writers`` >= 1 and ``--png_level`` is a zlib level."""
    from ..io.images import PNG_LEVELS

    if prefetch < 0:
        raise RestoreInputError(f"--prefetch {prefetch}: must be 0 or more")
    if writers < 1:
        raise RestoreInputError(f"--writers {writers}: must be at least 1")
    if png_level is not None and png_level not in PNG_LEVELS:
        raise RestoreInputError(f"--png_level {png_level}: must be 0-9 (zlib's levels)")


def restore_stream(restorer, items: Iterable[Item], *, batch_size: int, prefetch: int,
                   read: Callable[[Path], torch.Tensor], seed: int, pin: bool = False,
                   on_written: Callable[[Path], None] | None = None, writers: int = 1,
                   png_level: int | None = None) -> int:
    """Restore every frame of ``items`` with ``restorer`` (a :class:`~.restorer.Restorer`) and write it, in order;
    returns the number of frames written.

    ``batch_size`` frames of one size are restored together, each with its own generator seeded with ``seed`` (a
    frame's output does not depend on its batch). ``prefetch`` > 0: the next batches are decoded (``read``, then
    pinned with ``pin``, for an asynchronous host-to-device copy) by a background thread up to ``prefetch`` ahead,
    and the finished batch is written by another thread while the next one is restored; 0: one step after the
    other. ``writers`` > 1: the PNGs of a batch are encoded by that many threads at once (at 1080p a PNG costs more
    host time than the GPU's restore; the files are still written one after the other, in order), with zlib level
    ``png_level`` (None: Pillow's 6; lossless at any level). The outputs are the same bit for bit at any
    ``prefetch`` and ``writers``. ``on_written(dst)`` is called (on the writing thread) once each frame is on
    disk. A read or write error is raised after the frames before it were written."""
    from concurrent.futures import ThreadPoolExecutor

    from ..diffusion.latents import to_model_range, to_unit_range
    from ..io.atomic import atomic_write_bytes
    from ..io.images import encode_png, to_uint8_hwc

    check_stream_options(prefetch, writers, png_level)
    written = 0     # counted on the writing thread, read after it finished (leaving BackgroundWriter waits)

    def batches() -> Iterator[tuple[list[Path], torch.Tensor]]:
        for dsts, frames in iter_batches(items, batch_size, read):
            yield dsts, (frames.pin_memory() if pin else frames)

    def write(dsts: list[Path], imgs: torch.Tensor) -> None:   # imgs: uint8 (B, H, W, 3) on the host
        nonlocal written
        encode = lambda img: encode_png(img.numpy(), png_level)  # noqa: E731
        blobs = encoders.map(encode, imgs) if encoders is not None else map(encode, imgs)   # lazily, in order
        for dst, blob in zip(dsts, blobs):
            atomic_write_bytes(dst, blob)   # atomic: an interrupted run leaves whole frames only
            written += 1
            if on_written is not None:
                on_written(dst)

    encoders = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="nifi-png") if writers > 1 else None
    # leaving: the writer waits for the last batch first, then the encoders shut down
    with encoders or contextlib.nullcontext(), BackgroundWriter(enabled=prefetch > 0) as writer:
        for dsts, frames in prefetched(batches(), prefetch):
            out = restorer.restore(to_model_range(frames), seed=[seed] * len(dsts))
            imgs = to_uint8_hwc(to_unit_range(out)).cpu()   # quantised on the device: a quarter of the bytes to copy
            writer.wait()          # the previous batch is on disk (at most one batch waits to be written)
            writer.submit(write, dsts, imgs)
    return written


def cmd_restore(args: argparse.Namespace) -> int:
    from .restorer import Restorer

    device = _check_device(args.device) if args.device else default_device()
    check_stream_options(args.prefetch, args.writers, args.png_level)   # before the model loads
    lq = Path(args.lq)
    pairs = _resolve_io(lq, Path(args.out))
    # A folder resumes: frames whose output exists are skipped (--overwrite restores them again).
    skipped = 0
    if lq.is_dir() and not args.overwrite:
        todo = [(s, d) for s, d in pairs if not d.is_file()]
        skipped = len(pairs) - len(todo)
        pairs = todo
    # Check every input's header (mode, bit depth, size) before loading the model or writing anything; the
    # pixels are decoded one batch at a time while restoring.
    items = [(src, dst, _probe_input(src, args.allow_convert)) for src, dst in pairs]
    if skipped:
        print(f"nifi restore: {skipped} frame(s) already restored in {args.out}, skipped (--overwrite to redo)",
              file=sys.stderr)
    if not items:
        return 0
    dtype = _canonical_dtype(args.dtype) or ("bf16" if device.startswith("cuda") else "fp32")
    restorer = Restorer.from_pretrained(args.base_model, ckpt=args.ckpt,
                                        embeddings=args.embeddings, device=device, dtype=dtype, t0=args.t0,
                                        tile_size=args.tile_size, vae_attention=args.vae_attention,
                                        compile=args.compile, fuse_lora=args.compile or args.fp8,
                                        size_bucket=args.size_bucket, fp8=args.fp8)
    # frames beyond the transformer's position table are tiled automatically: said once, on stderr
    restorer.notify = lambda msg: print(f"nifi restore: {msg}", file=sys.stderr)
    read = lambda src: _read_input(src, args.allow_convert, args.background)  # noqa: E731

    with tqdm(total=len(items), desc="restore", unit="frame", disable=len(items) < 2) as bar:
        def written(dst: Path) -> None:
            tqdm.write(str(dst))
            bar.update(1)

        # --prefetch > 0: the next batch is decoded and the last one written while this one is restored; one
        # generator per frame, each seeded with --seed: a batch restores each frame as one by one
        restore_stream(restorer, items, batch_size=args.batch_size, prefetch=args.prefetch, read=read,
                       seed=args.seed, pin=device.startswith("cuda"), on_written=written, writers=args.writers,
                       png_level=args.png_level)
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


def cmd_export_peft(args: argparse.Namespace) -> int:
    from .peft_export import SETTINGS_FILE, export_peft

    out = Path(args.out)
    settings = export_peft(args.ckpt, out, args.base_model)
    if args.authors_ckpt:
        args.base_model = args.base_model or settings["backbone"]
        args.out = str(out / "restorer.ckpt")
        cmd_export(args)
    print(f"phi- of {args.ckpt} -> {out}/transformer/, {out}/vae/ (peft), {out / SETTINGS_FILE} (t0 {settings['t0']})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("restore", help="one-step restoration of rendered frames (Eq. 7)",
                       description="One-step restoration of rendered frames (Eq. 7). A folder is streamed (one batch "
                                   "in memory), resumes (outputs that exist are skipped) and shows progress. Frames "
                                   "larger than the transformer's position table are restored in overlapping tiles "
                                   "automatically.")
    p.add_argument("--base_model", default=None,
                   help="diffusers folder or hub id (paper: stabilityai/stable-diffusion-3-medium-diffusers) "
                        "(default: data/embedded/backbone, or the backbone --ckpt records when it records one)")
    p.add_argument("--ckpt", default=None, help="phi- weights: the authors' .ckpt, a .safetensors adapter file or "
                                                "a training checkpoint (latest.pt/best.pt) (default: none, the "
                                                "frozen base)")
    p.add_argument("--lq", required=True, help="degraded image or folder of images")
    p.add_argument("--out", required=True, help="output image or folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--embeddings", default=None, help="prompt-embedding .npz (prompt_embeds, pooled_prompt_embeds) "
                                                      "(default: the backbone folder's own prompt_embeds.npz)")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, metavar="{bf16,f16,f32,fp16,fp32,...}",
                   help="compute dtype; f16/f32 are the authors' spellings of fp16/fp32; choices: "
                        f"{', '.join(DTYPE_CHOICES)} (default: bf16 on CUDA, fp32 otherwise)")
    p.add_argument("--t0", type=int, default=None,
                   help="intermediate timestep of Eq. 7 (of 1000) (default: the checkpoint's t0, else 199)")
    p.add_argument("--seed", type=int, default=0, help="seeds the latent sample and the noise (default: %(default)s)")
    p.add_argument("--tile_size", type=int, default=None,
                   help="process frames larger than this in tiles (pixels) (default: none; frames beyond the "
                        "transformer's position table are tiled automatically)")
    p.add_argument("--prefetch", type=int, default=2,
                   help="batches decoded ahead by a background thread, and frames written by another, while a batch "
                        "is restored (0: one step after the other; the outputs are the same)")
    p.add_argument("--writers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads that encode a batch's PNGs at once (default: %(default)s; at 1080p a PNG costs more "
                        "host time than a restore on the GPU; the files are the same)")
    p.add_argument("--png_level", type=int, default=None,
                   help="PNG (zlib) compression level 0-9 (default: Pillow's 6; lossless at any level: 1 encodes ~4x "
                        "faster for ~15%% larger files)")
    p.add_argument("--vae_attention", default=None, choices=["sdpa", "chunked"],
                   help="the VAE's attention: sdpa (diffusers' processor) or chunked (GEMMs and a float32 softmax: the "
                        "same function, 1.1-1.2x faster restores on an H100, docs/performance.md runs 6-7) (default: "
                        "chunked with --compile on CUDA, else sdpa)")
    p.add_argument("--compile", action="store_true",
                   help="the optimised restorer (docs/performance.md): phi- fused into the base weights, torch.compile "
                        "of the transformer blocks and the VAE, channels_last and CUDA graphs on CUDA; the same "
                        "function, 2.8x faster at 1024x1024 on an H100, after a first frame of each size that compiles "
                        "(~30-40 s; ~10 s when TORCHINDUCTOR_CACHE_DIR holds an earlier run's kernels)")
    p.add_argument("--fp8", action="store_true",
                   help="the transformer's linear layers as float8 GEMMs with rowwise scaling (phi- fused first; an "
                        "approximation measured in docs/performance.md; on CUDA a bf16 backbone on an Ada/Hopper GPU)")
    p.add_argument("--size_bucket", type=int, default=None,
                   help="pad each frame to a multiple of this many pixels (a multiple of 16 for SD3) and crop after, so "
                        "frames of different sizes share one compiled graph (with --compile: a new size within a "
                        "bucket compiles nothing); the padding is context the model sees, so results differ a little "
                        "from unpadded ones (default: off)")
    p.add_argument("--batch_size", type=int, default=1,
                   help="frames of one size restored together (default: %(default)s); each frame keeps its own "
                        "--seed generator, so the result does not depend on it")
    p.add_argument("--overwrite", action="store_true",
                   help="with a folder --lq, restore frames whose output already exists again (default: skip them, "
                        "so an interrupted run resumes)")
    p.add_argument("--allow_convert", action="store_true",
                   help="convert greyscale/palette inputs to RGB and composite RGBA on --background instead of "
                        "refusing them (default: off, only 8-bit RGB accepted)")
    p.add_argument("--background", default="white", choices=sorted(BACKGROUNDS),
                   help="background for RGBA inputs with --allow_convert (default: %(default)s)")
    p.set_defaults(func=cmd_restore)

    x = sub.add_parser("export", help="phi- as peft adapter folders (transformer/, vae/) + restore settings",
                       description="Write phi- in peft's save_pretrained layout (PeftModel.from_pretrained loads each "
                                   "folder onto the diffusers model), with nifi_restore.json (backbone, embeddings, "
                                   "t0, dtype) and, with --authors_ckpt, the authors' .ckpt too.")
    x.add_argument("--ckpt", required=True, help="latest.pt/best.pt, a .safetensors adapter file or the authors' .ckpt")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--base_model", default=None, help="default: the backbone --ckpt records, else the embedded one")
    x.add_argument("--authors_ckpt", action="store_true", help="also write <out>/restorer.ckpt (authors' format)")
    x.set_defaults(func=cmd_export_peft)

    e = sub.add_parser("export-ckpt", help="export phi- to the authors' checkpoint format")
    e.add_argument("--base_model", default="data/embedded/backbone")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)


__all__ = ["register", "ImageError"]

"""Render then fix along a camera path (``nifi render-path``): the compressed level rendered frame by frame,
each frame restored with phi- (Eq. 7), an mp4 of ``compressed | restored | clean`` and the flicker measured.

Inputs: an artifacts folder of ``nifi synthesize`` (``synth.json``, ``level_<l>.nifigs``, ``full.ply``), a rate
label, a path (:mod:`nifi_lib.gs.camera_paths`):

- ``test``: the scene's test views; *clean* is the test photo;
- ``spiral``: a spiral around the scene's focus point, at the training cameras' distance;
- ``interp``: through (at most 8 evenly spaced) training cameras, rotations slerped;
- ``FILE.json``: a nerfstudio camera path (poses in the scene's world frame; ``dataparser_transforms`` maps a
  path from nerfstudio's normalized frame back);

for every path but ``test`` *clean* is the dense ``full.ply`` rendered at the same camera (no photo exists).

Outputs in ``out/``: ``compressed/``, ``restored/``, ``clean/`` (``<index>.png``, atomic writes), ``render_path.mp4``
(the three side by side, left to right, 2 px white gaps) and ``render_path.json`` (settings, timings and the
temporal-stability numbers). Resumable: a frame whose three PNGs exist is not rendered or restored again (unless
``overwrite``); a folder made with other settings is refused. Frames are restored in batches of one size, each with
its own generator seeded with ``seed`` (the same noise every frame, so the restorer adds no frame-to-frame noise
of its own; batching does not change a frame).

**Temporal stability** (:func:`temporal_flicker`): the mean absolute difference between consecutive frames
(8-bit frames in [0, 1], averaged over pixels, channels and the ``T - 1`` pairs), for the compressed, restored and
clean sequences. Camera motion moves every sequence alike, so the clean number is the floor the motion alone gives;
``restored_over_clean`` > 1 means the restorer adds flicker of its own, < 1 that its frames change less than the
clean ones (smoother, less detail moving). :func:`temporal_error` separates the two: the mean absolute difference
between a sequence's frame-to-frame change and the clean one's (0 = it moves exactly as the clean video). On the ``test`` path consecutive frames are
distinct test views (far apart), so there the numbers measure view changes, not flicker.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import NifiError
from ..devices import default_device
from ..io.atomic import atomic_path, atomic_write_json
from ..io.hashing import sha256_file
from ..io.images import load_image, save_image
from ..paths import repo_path
from ..synthesis.pairs import display_path

PATHS = ("test", "spiral", "interp")
STREAMS = ("compressed", "restored", "clean")
SUMMARY = "render_path.json"
VIDEO = "render_path.mp4"
STAMP = ".render_path_settings.json"
GAP = 2
DEFAULT_FRAMES = 120   # spiral / interp: 4 s at 30 fps


class RenderPathError(NifiError, ValueError):
    """``nifi render-path`` cannot run (incomplete artifacts, unknown rate or path, a folder of other settings)."""


# --- temporal stability ---------------------------------------------------------------------------------------

class FlickerMeter:
    """Streaming :func:`temporal_flicker`: ``add`` frames in order, holding only the previous one."""

    def __init__(self) -> None:
        self.prev: torch.Tensor | None = None
        self.total = 0.0
        self.pairs = 0

    def add(self, frame: torch.Tensor) -> None:
        f = frame.detach().double()
        if self.prev is not None:
            if f.shape != self.prev.shape:
                raise ValueError(f"frames of different shapes {tuple(self.prev.shape)} and {tuple(f.shape)}")
            self.total += float((f - self.prev).abs().mean())
            self.pairs += 1
        self.prev = f

    @property
    def value(self) -> float | None:
        return self.total / self.pairs if self.pairs else None


def temporal_flicker(frames: Iterable[torch.Tensor]) -> float | None:
    """Mean over ``t`` of ``mean |f_{t+1} - f_t|`` (frames in [0, 1]); None for fewer than two frames."""
    m = FlickerMeter()
    for f in frames:
        m.add(f)
    return m.value


class TemporalErrorMeter:
    """Streaming :func:`temporal_error`: ``add(frame, reference)`` in order, holding only the previous pair."""

    def __init__(self) -> None:
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None
        self.total = 0.0
        self.pairs = 0

    def add(self, frame: torch.Tensor, reference: torch.Tensor) -> None:
        f, r = frame.detach().double(), reference.detach().double()
        if self.prev is not None:
            pf, pr = self.prev
            self.total += float(((f - pf) - (r - pr)).abs().mean())
            self.pairs += 1
        self.prev = (f, r)

    @property
    def value(self) -> float | None:
        return self.total / self.pairs if self.pairs else None


def temporal_error(frames: Iterable[torch.Tensor], references: Iterable[torch.Tensor]) -> float | None:
    """Mean over ``t`` of ``mean |(f_{t+1} - f_t) - (g_{t+1} - g_t)|``: how far a sequence's frame-to-frame change
    is from the reference's (0: it changes exactly as the clean video does; flicker and lost motion both count)."""
    m = TemporalErrorMeter()
    for f, g in zip(frames, references):
        m.add(f, g)
    return m.value


def flicker_summary(values: dict[str, float | None]) -> dict:
    """The three flicker numbers and the restored and compressed ones relative to clean (None when undefined)."""
    clean = values.get("clean")
    rel = lambda k: (values[k] / clean if values.get(k) is not None and clean else None)  # noqa: E731
    return {**values, "restored_over_clean": rel("restored"), "compressed_over_clean": rel("compressed")}


# --- the path --------------------------------------------------------------------------------------------------

def path_cameras(path: str, scene, frames: int | None = None, dataparser_transforms: str | None = None):
    """``(cameras, views or None)`` of ``path`` for ``scene`` (module docstring); ``views`` (with photos) for ``test``."""
    from ..gs import camera_paths as cp

    if path == "test":
        views = scene.views("test")[:frames] if frames else scene.views("test")
        if not views:
            raise RenderPathError(f"{scene.root}: no test views")
        return [v.camera for v in views], views
    train = [v.camera for v in scene.views("train")]
    if not train:
        raise RenderPathError(f"{scene.root}: no training cameras to build a {path} path from")
    n = int(frames or DEFAULT_FRAMES)
    if path == "spiral":
        return cp.spiral_path(train, n), None
    if path == "interp":
        return cp.interpolate_path(cp.subsample_keys(train, 8), n), None
    p = Path(path)
    if p.suffix.lower() == ".json":
        if not p.is_file():
            raise RenderPathError(f"{path}: camera-path file not found")
        cams = cp.read_camera_path(p, dataparser_transforms)
        return (cams[:frames] if frames else cams), None
    raise RenderPathError(f"--path {path}: use test, spiral, interp or a nerfstudio camera-path .json")


def _level(meta: dict, rate: str) -> dict:
    def same(a, b):
        try:
            return math.isclose(float(a), float(b))
        except (TypeError, ValueError):
            return str(a) == str(b)
    for lv in meta["levels"]:
        if same(lv["label"], rate):
            return lv
    raise RenderPathError(f"--rate {rate}: not a level of this synthesis (rates: "
                          f"{', '.join(str(lv['label']) for lv in meta['levels'])})")


def _side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels (H, W, 3) uint8 left to right with white gaps, padded to even sides (yuv420p needs them)."""
    h = max(p.shape[0] for p in panels)
    gap = np.full((h, GAP, 3), 255, np.uint8)
    parts = []
    for i, p in enumerate(panels):
        if i:
            parts.append(gap)
        parts.append(np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255))
    frame = np.concatenate(parts, axis=1)
    return np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), constant_values=255)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 30.0) -> int:
    """An H.264 mp4 (yuv420p) of uint8 (H, W, 3) frames with ffmpeg from ``imageio-ffmpeg``, written atomically;
    returns the number of frames."""
    import imageio.v2 as iio

    n = 0
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = iio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, quality=8,
                                ffmpeg_log_level="error")
        try:
            for f in frames:
                writer.append_data(np.ascontiguousarray(f))
                n += 1
        finally:
            writer.close()
    return n


def render_path(artifacts: str | Path, rate: str, path: str, out: str | Path, ckpt: str | None = None,
                base_model: str | None = None, embeddings: str | None = None, fps: float = 30.0,
                frames: int | None = None, batch_size: int = 4, seed: int = 0, t0: int | None = None,
                device: str | None = None, dtype: str | None = None, backend: str = "auto",
                tile_size: int | None = None, dataparser_transforms: str | None = None, overwrite: bool = False,
                progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Render the level ``rate`` of ``artifacts`` along ``path``, restore every frame, write the frames, the mp4
    and ``render_path.json`` into ``out`` (module docstring); returns the summary. ``frames``: the number of
    frames of a spiral/interp path (default 120), at most that many of a test/JSON path (default all)."""
    from ..gs.model import load_ply
    from ..gs.render import render
    from ..diffusion.latents import to_model_range, to_unit_range
    from ..restoration.restorer import Restorer
    from ..synthesis import codec
    from ..synthesis.pipeline import FULL_PLY, SYNTH_JSON, synth_complete
    from ..synthesis.scene import open_scene

    t_start = time.perf_counter()
    artifacts, out = Path(artifacts), Path(out)
    meta = synth_complete(artifacts)
    if meta is None:
        raise RenderPathError(f"{artifacts}: not a complete synthesis (synth.json, full.ply and every level file); "
                              f"run `nifi synthesize --scene <scene folder> --out {artifacts}` first")
    level = _level(meta, rate)
    if batch_size < 1:
        raise RenderPathError(f"batch_size {batch_size}: must be at least 1")
    scene = open_scene(repo_path(meta["source"]), name=meta["scene"], background=meta["background"],
                       downscale=(meta.get("settings") or {}).get("downscale"), require_cameras=True)
    cams, views = path_cameras(path, scene, frames, dataparser_transforms)
    clean_source = "photo (test view)" if views is not None else f"dense render ({FULL_PLY})"
    dev = default_device(device)
    dtype = dtype or ("bf16" if dev.startswith("cuda") else "fp32")
    settings = {"artifacts": display_path(artifacts), "synth_sha256": sha256_file(artifacts / SYNTH_JSON)[:16],
                "rate": str(level["label"]), "level": level["level"], "path": path if path in PATHS else display_path(path),
                "frames": len(cams), "ckpt": display_path(ckpt) if ckpt else None, "base_model": base_model,
                "embeddings": embeddings, "seed": int(seed), "t0": t0, "tile_size": tile_size,
                "dataparser_transforms": display_path(dataparser_transforms) if dataparser_transforms else None,
                "size": [cams[0].width, cams[0].height]}
    stamp = out / STAMP
    if stamp.is_file() and not overwrite:
        old = json.loads(stamp.read_text())
        if old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise RenderPathError(f"{out}: holds frames made with other settings ({', '.join(diff)}); pass "
                                  "--overwrite or another --out")
    atomic_write_json(stamp, settings)

    names = [f"{i:05d}.png" for i in range(len(cams))]
    files = {s: [out / s / n for n in names] for s in STREAMS}
    todo = [i for i in range(len(cams)) if overwrite or not all(files[s][i].is_file() for s in STREAMS)]
    if len(todo) < len(cams):
        log(f"{out}: {len(cams) - len(todo)} of {len(cams)} frames already made, skipped (overwrite to redo)")
    timings = {"render": 0.0, "restore": 0.0, "load": 0.0}
    restorer = None
    if todo:
        t = time.perf_counter()
        bg = scene.background
        compressed = codec.read_level(artifacts / level["file"]).to(dev)
        dense = load_ply(artifacts / FULL_PLY).to(dev) if views is None else None
        restorer = Restorer.from_pretrained(base_model, ckpt=ckpt, embeddings=embeddings, device=dev, dtype=dtype,
                                            t0=t0, tile_size=tile_size)
        restorer.notify = lambda msg: log(f"render-path: {msg}")
        timings["load"] = time.perf_counter() - t
        bar = tqdm(total=len(todo), desc=f"render-path {path if path in PATHS else Path(path).name}", unit="frame",
                   disable=not progress)
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            t = time.perf_counter()
            with torch.no_grad():
                deg = torch.stack([render(compressed, cams[i], backend=backend, background=bg).image.clamp(0, 1).cpu()
                                   for i in idx])
                clean = (scene.load_images([views[i] for i in idx]) if views is not None else
                         torch.stack([render(dense, cams[i], backend=backend, background=bg).image.clamp(0, 1).cpu()
                                      for i in idx]))
            timings["render"] += time.perf_counter() - t
            t = time.perf_counter()
            restored = to_unit_range(restorer.restore(to_model_range(deg), seed=[int(seed)] * len(idx))).cpu()
            timings["restore"] += time.perf_counter() - t
            for k, i in enumerate(idx):
                # restored last: a frame counts as made only when all three exist
                save_image(files["compressed"][i], deg[k])
                save_image(files["clean"][i], clean[k])
                save_image(files["restored"][i], restored[k])
            bar.update(len(idx))
        bar.close()

    # one streaming pass over the written frames: flicker of each stream, PSNR against clean, the video
    t = time.perf_counter()
    meters = {s: FlickerMeter() for s in STREAMS}
    psnr = {"compressed": [], "restored": []}
    terr = {s: TemporalErrorMeter() for s in psnr}

    def panels():
        for i in range(len(cams)):
            imgs = {s: load_image(files[s][i]) for s in STREAMS}
            for s in STREAMS:
                meters[s].add(imgs[s])
            for s in psnr:
                terr[s].add(imgs[s], imgs["clean"])
                mse = float(((imgs[s] - imgs["clean"]) ** 2).mean())
                psnr[s].append(10 * math.log10(1.0 / max(mse, 1e-10)))
            yield _side_by_side([(imgs[s].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for s in STREAMS])

    n_video = write_video(out / VIDEO, panels(), fps)
    timings["video"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    summary = {
        **settings, "scene": meta["scene"], "level_bytes": level.get("bytes"), "num_gaussians": level.get("num_gaussians"),
        "t0": restorer.t0 if restorer is not None else t0, "device": dev, "dtype": dtype, "fps": fps,
        "video": display_path(out / VIDEO), "video_frames": n_video, "video_layout": list(STREAMS),
        "frames_dirs": {s: display_path(out / s) for s in STREAMS},
        "made_now": len(todo), "clean_source": clean_source,
        "flicker": flicker_summary({s: meters[s].value for s in STREAMS}),
        "flicker_definition": "mean over consecutive frame pairs of mean |f_{t+1} - f_t| (8-bit frames in [0, 1])",
        "temporal_error_vs_clean": {s: m.value for s, m in terr.items()},
        "temporal_error_definition": "mean over t of mean |(f_{t+1} - f_t) - (clean_{t+1} - clean_t)|",
        "psnr_vs_clean": {s: (sum(v) / len(v) if v else None) for s, v in psnr.items()},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "seconds_per_frame": round(timings["total"] / max(len(cams), 1), 4),
    }
    if path == "test":
        summary["flicker_note"] = ("test path: consecutive frames are distinct test views, so these numbers measure "
                                   "view changes, not flicker")
    atomic_write_json(out / SUMMARY, summary)
    return summary


def describe(summary: dict) -> str:
    """Two lines: what was rendered and the flicker numbers."""
    f = summary["flicker"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"{summary['scene']} rate {summary['rate']} along {summary['path']}: {summary['frames']} frames "
            f"{summary['size'][0]}x{summary['size'][1]} -> {summary['video']} ({summary['seconds']['total']:.1f} s)\n"
            f"flicker (mean |f_t+1 - f_t|): compressed {fmt(f['compressed'])}, restored {fmt(f['restored'])}, "
            f"clean {fmt(f['clean'])} [{summary['clean_source']}]; restored / clean "
            f"{fmt(f['restored_over_clean'])}\n"
            f"temporal error vs clean (mean |d_t f - d_t clean|): compressed "
            f"{fmt(summary['temporal_error_vs_clean']['compressed'])}, restored "
            f"{fmt(summary['temporal_error_vs_clean']['restored'])}")


def cmd_render_path(args) -> int:
    s = render_path(args.artifacts, args.rate, args.path, args.out, ckpt=args.ckpt, base_model=args.base_model,
                    embeddings=args.embeddings, fps=args.fps, frames=args.frames, batch_size=args.batch_size,
                    seed=args.seed, t0=args.t0, device=args.device, dtype=args.dtype, backend=args.backend,
                    tile_size=args.tile_size, dataparser_transforms=args.dataparser_transforms,
                    overwrite=args.overwrite)
    print(describe(s))
    print(Path(args.out) / SUMMARY)
    return 0


def register(sub) -> None:
    p = sub.add_parser("render-path", help="render the compressed scene along a camera path, restore every frame, "
                                           "write an mp4 (compressed | restored | clean) and the flicker",
                       description="Render then fix along a camera path: the compressed level of --artifacts "
                                   "(nifi synthesize) rendered frame by frame, each frame restored with --ckpt "
                                   "(Eq. 7), the frames and an mp4 of compressed | restored | clean written to "
                                   "--out with render_path.json (temporal stability: mean |f_t+1 - f_t| of each "
                                   "sequence). Clean: the test photo on --path test, else the dense full.ply "
                                   "rendered. Resumable (frames already made are skipped).")
    p.add_argument("--artifacts", required=True, help="an artifacts folder of nifi synthesize (synth.json, levels)")
    p.add_argument("--rate", required=True, help="the level's rate label (synth.json levels, e.g. 0.1)")
    p.add_argument("--path", required=True, help="test (the test views), spiral, interp (through the training "
                                                 "cameras) or a nerfstudio camera-path FILE.json (world frame)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ckpt", default=None, help="phi- weights (best.pt, .safetensors, the authors' .ckpt) "
                                                "(default: none, the frozen base)")
    p.add_argument("--base_model", default=None, help="default: the backbone --ckpt records, else the embedded one")
    p.add_argument("--embeddings", default=None, help="prompt-embedding .npz (default: what --ckpt records)")
    p.add_argument("--fps", type=float, default=30.0, help="video frame rate (default: %(default)s)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames of a spiral/interp path (default: {DEFAULT_FRAMES}); at most this many of a "
                        "test/JSON path (default: all)")
    p.add_argument("--batch_size", type=int, default=4, help="frames restored together (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the seed of every frame's generator (default: %(default)s)")
    p.add_argument("--t0", type=int, default=None, help="Eq. 7's t0 (default: the checkpoint's, else 199)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on CUDA, fp32 otherwise)")
    p.add_argument("--backend", default="auto", help="rasterizer: auto, torch or gsplat (default: %(default)s)")
    p.add_argument("--tile_size", type=int, default=None, help="restore frames larger than this in tiles (pixels)")
    p.add_argument("--dataparser_transforms", default=None,
                   help="nerfstudio's dataparser_transforms.json: the JSON path is in its normalized frame")
    p.add_argument("--overwrite", action="store_true", help="make every frame again")
    p.set_defaults(func=cmd_render_path)


__all__ = ["FlickerMeter", "RenderPathError", "describe", "flicker_summary", "path_cameras", "render_path",
           "register", "temporal_error", "temporal_flicker", "write_video"]

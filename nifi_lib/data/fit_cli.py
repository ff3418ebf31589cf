"""``nifi fit``: fit a 3DGS scene to posed images (Blender/NeRF-synthetic, embedded, or COLMAP scenes).

The command lives in the data layer, above :mod:`nifi_lib.gs`: it reads every scene format (COMMAND_MODULES
registers it between ``nifi_lib.data.cli`` and ``nifi_lib.gs.cli``, so ``nifi --help`` lists it where it was).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..gs.cameras import Camera, CameraError, load_camera_images, read_blender_scene, read_scene_cameras, split_views
from ..io.atomic import atomic_write_json
from ..paths import repo_path


def detect_format(scene: Path) -> str:
    """``blender`` (transforms_train.json), ``embedded`` (cameras.json) or ``colmap`` (sparse/ folder)."""
    if (scene / "transforms_train.json").is_file():
        return "blender"
    if (scene / "cameras.json").is_file():
        return "embedded"
    if any((scene / rel).is_dir() for rel in ("sparse", "colmap/sparse")) or any(
            (scene / f).is_file() for f in ("cameras.bin", "cameras.txt")):
        return "colmap"
    raise CameraError(f"{scene}: cannot tell the scene format (no transforms_train.json, cameras.json or "
                      "COLMAP sparse/ folder); pass --format")


def load_scene(scene: Path, fmt: str = "auto", split: str = "train", llffhold: int = 8, downscale: int = 1
               ) -> tuple[list[Camera], list[float], object]:
    """Cameras of ``split``, the background colour to fit with (white for Blender scenes, else black),
    and the initial point cloud ``(xyz, rgb)`` of COLMAP scenes (None otherwise)."""
    if not scene.is_dir():
        raise CameraError(f"{scene}: scene folder not found")
    fmt = detect_format(scene) if fmt == "auto" else fmt
    if fmt == "blender":
        if split == "all":
            cams = read_blender_scene(scene, "train") + read_blender_scene(scene, "test")
        else:
            cams = read_blender_scene(scene, split)
        return cams, [1.0, 1.0, 1.0], None
    if fmt == "embedded":
        return split_views(read_scene_cameras(scene / "cameras.json"), split, llffhold), [0.0, 0.0, 0.0], None
    if fmt == "colmap":
        from .colmap import read_colmap_scene

        kwargs = {} if downscale == 1 else {"downscale": downscale}
        cams, points = _unpack_colmap(read_colmap_scene(scene, **kwargs))
        return split_views(list(cams), split, llffhold), [0.0, 0.0, 0.0], points
    raise CameraError(f"unknown scene format {fmt!r} (blender, embedded, colmap or auto)")


def _unpack_colmap(result: object) -> tuple[list[Camera], tuple | None]:
    """Accept ``cameras``, ``(cameras, points[, colors])`` or an object with ``.cameras`` / ``.points``
    (``.points3d``, ``.xyz``) / ``.colors`` (``.rgb``); colours in 0..255 are rescaled to [0, 1]."""
    import torch

    if isinstance(result, tuple):
        cams, pts, cols = result[0], result[1] if len(result) > 1 else None, result[2] if len(result) > 2 else None
    elif hasattr(result, "cameras"):
        cams = result.cameras
        pts = next((getattr(result, a) for a in ("points", "points3d", "xyz") if getattr(result, a, None) is not None),
                   None)
        cols = next((getattr(result, a) for a in ("colors", "rgb") if getattr(result, a, None) is not None), None)
    else:
        cams, pts, cols = result, None, None
    if pts is None or len(pts) == 0:
        return list(cams), None
    pts = torch.as_tensor(pts, dtype=torch.float32)
    if cols is not None:
        cols = torch.as_tensor(cols, dtype=torch.float32)
        cols = cols / 255.0 if cols.numel() and float(cols.max()) > 1.0 else cols
    return list(cams), (pts, cols)


def cmd_fit(args: argparse.Namespace) -> int:
    from ..gs.fit import fit_gaussians
    from ..gs.model import save_ply

    scene, out = repo_path(args.scene), repo_path(args.out)
    cams, background, points = load_scene(scene, args.format, args.split, args.llffhold, args.downscale)
    if not cams:
        raise CameraError(f"{scene}: no views in split {args.split!r}")
    images = load_camera_images(cams, background=background)
    init_points, init_colors = None, None
    if points is not None:
        if isinstance(points, tuple):
            init_points, init_colors = points
        else:
            init_points = points
    model, history = fit_gaussians(cams, images, init=init_points, init_colors=init_colors,
                                   iterations=args.iterations, sh_degree=args.sh_degree, seed=args.seed,
                                   backend=args.backend, background=background, num_init_points=args.num_init_points,
                                   densify=not args.no_densify, progress=not args.quiet)
    save_ply(model, out)
    summary = {"scene": str(args.scene), "split": args.split, "views": len(cams), "iterations": args.iterations,
               "num_gaussians": model.num_gaussians, "sh_degree": model.sh_degree, "seconds": history.seconds,
               "backend": history.backend, "final_train_psnr": history.psnr[-1] if history.psnr else None}
    atomic_write_json(out.with_suffix(".fit.json"), summary)
    print(json.dumps(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fit", help="fit a 3D Gaussian scene to posed images (writes a 3DGS PLY)")
    p.add_argument("--scene", required=True, help="scene folder (Blender, embedded cameras.json or COLMAP)")
    p.add_argument("--out", required=True, help="output PLY path")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--format", default="auto", choices=["auto", "blender", "embedded", "colmap"])
    p.add_argument("--llffhold", type=int, default=8, help="every N-th view is a test view (embedded/COLMAP)")
    p.add_argument("--downscale", type=int, default=1, help="COLMAP: use images_N/ (1, 2, 4, 8)")
    p.add_argument("--sh-degree", type=int, default=3)
    p.add_argument("--num-init-points", type=int, default=10_000, help="random points when there is no point cloud")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-densify", action="store_true", help="disable adaptive density control")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)

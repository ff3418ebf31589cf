"""``nifi fit``: fit a 3DGS scene to posed images of any layout :func:`nifi_lib.data.scenes.load_scene` reads.

The command lives in the data layer, above :mod:`nifi_lib.gs`: it reads every scene format (COMMAND_MODULES
registers it between ``nifi_lib.data.cli`` and ``nifi_lib.gs.cli``, so ``nifi --help`` lists it where it was).
"""
from __future__ import annotations

import argparse
import json

from ..gs.cameras import load_camera_images
from ..io.atomic import atomic_write_json
from ..paths import repo_path
from .scenes import LAYOUTS, SceneError, detect_layout, load_scene, load_scene_points, scene_white_background


def cmd_fit(args: argparse.Namespace) -> int:
    from ..gs.fit import fit_gaussians
    from ..gs.model import save_ply

    scene, out = repo_path(args.scene), repo_path(args.out)
    layout = detect_layout(scene) if args.format == "auto" else args.format
    cams = load_scene(scene, args.split, args.llffhold, args.downscale, layout)
    if not cams:
        raise SceneError(f"{scene}: no views in split {args.split!r}")
    background = [1.0, 1.0, 1.0] if scene_white_background(scene, layout) else [0.0, 0.0, 0.0]  # 3DGS rule
    init_points, init_colors = load_scene_points(scene, layout) or (None, None)  # COLMAP/nerfstudio sparse points
    images = load_camera_images(cams, background=background)
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
    p.add_argument("--scene", required=True, help="scene folder (Blender, embedded cameras.json, COLMAP or nerfstudio)")
    p.add_argument("--out", required=True, help="output PLY path")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--format", default="auto", choices=["auto", *LAYOUTS])
    p.add_argument("--llffhold", type=int, default=8, help="every N-th view is a test view (not Blender)")
    p.add_argument("--downscale", type=int, default=1, help="COLMAP/nerfstudio: use images_N/ (1, 2, 4, 8)")
    p.add_argument("--sh-degree", type=int, default=3)
    p.add_argument("--num-init-points", type=int, default=10_000, help="random points when there is no point cloud")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-densify", action="store_true", help="disable adaptive density control")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)

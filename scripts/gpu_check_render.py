"""Compare the pure-PyTorch rasterizer with gsplat on one scene (run on a CUDA machine with gsplat).

    python scripts/gpu_check_render.py [--ply point_cloud.ply] [--size 256] [--n 20000] [--repeat 20]

Prints the max/mean absolute difference of image, alpha and depth, and ms per render (forward and
forward+backward) of each backend. Without a PLY a random scene seen by an orbit camera is used.
Importable on a CPU machine without gsplat (nothing runs at import).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _timed(fn, repeat: int, sync) -> float:
    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat * 1e3


def main(argv: list[str] | None = None) -> int:
    import torch

    from nifi_lib.gs.cameras import Camera, look_at
    from nifi_lib.gs.model import GaussianModel, load_ply
    from nifi_lib.gs.render import gsplat_available, render

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ply", type=Path, default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--sh-degree", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("CUDA is not available: this check needs a GPU", file=sys.stderr)
        return 2
    if not gsplat_available():
        print("gsplat cannot be imported (pip install gsplat)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(args.seed)
    if args.ply is not None:
        scene = load_ply(args.ply)
        centre = scene.means.median(0).values
        radius = float((scene.means - centre).norm(dim=1).quantile(0.9)) * 2.5
    else:
        n, k = args.n, (args.sh_degree + 1) ** 2 - 1
        scene = GaussianModel(
            means=torch.rand(n, 3, generator=gen) * 2 - 1,
            log_scales=torch.log(torch.rand(n, 3, generator=gen) * 0.04 + 0.005),
            quats=torch.randn(n, 4, generator=gen), opacity_logits=torch.randn(n, generator=gen),
            sh_dc=torch.randn(n, 3, generator=gen) * 0.6, sh_rest=torch.randn(n, k, 3, generator=gen) * 0.1)
        centre, radius = torch.zeros(3), 4.0
    w = h = args.size
    f = 0.5 * w / math.tan(0.5 * 0.8)
    eye = centre + torch.tensor([radius * 0.8, -radius * 0.6, radius * 0.4])
    cam = Camera("check", w, h, f, f, w / 2, h / 2, look_at(eye.tolist(), centre.tolist()))
    scene = scene.to(dev).requires_grad_(True)
    bg = torch.tensor([0.1, 0.2, 0.3])
    print(f"scene: {scene.num_gaussians} Gaussians, SH degree {scene.sh_degree}, {w}x{h}, device "
          f"{torch.cuda.get_device_name()}")

    outs = {b: render(scene, cam, backend=b, background=bg) for b in ("torch", "gsplat")}
    for key in ("image", "alpha", "depth"):
        a, b = getattr(outs["torch"], key), getattr(outs["gsplat"], key)
        diff = (a - b).abs()
        print(f"{key:6s} max |torch - gsplat| = {diff.max().item():.3e}  mean = {diff.mean().item():.3e}")
    vis = outs["torch"].visible & outs["gsplat"].visible
    d2 = (outs["torch"].means2d[vis] - outs["gsplat"].means2d[vis]).abs().max().item() if vis.any() else float("nan")
    print(f"means2d max diff = {d2:.3e} px; visible: torch {int(outs['torch'].visible.sum())}, "
          f"gsplat {int(outs['gsplat'].visible.sum())}")

    sync = torch.cuda.synchronize
    for b in ("torch", "gsplat"):
        with torch.no_grad():
            fwd = _timed(lambda: render(scene, cam, backend=b, background=bg), args.repeat, sync)

        def fwd_bwd():
            render(scene, cam, backend=b, background=bg).image.sum().backward()

        both = _timed(fwd_bwd, args.repeat, sync)
        print(f"{b:6s}: {fwd:8.2f} ms/render forward, {both:8.2f} ms forward+backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())

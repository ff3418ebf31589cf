"""3DGS fit speed of the two rasterizers (issue 16: gsplat vs the PyTorch reference, same scene, same settings).

``python -m nifi_lib.bench.fit_bench --scene DIR --iterations N --backends torch gsplat --out FILE.json``
fits the scene's training views once per backend with :func:`~nifi_lib.gs.fit.fit_gaussians` (same seed,
initialisation, densification schedule and device) and records wall seconds, iterations per second, the final
number of Gaussians and the test-view PSNR. Every model is scored with the **same** renderer (the PyTorch
reference, on the same device), so a PSNR difference is the fit's, not the scorer's. The first gsplat fit of a
machine includes its CUDA build unless ``--warm`` renders one frame with each backend first (the build is then
timed separately as ``warm_seconds``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ..devices import default_device
from ..data.scenes import load_scene, load_scene_points, scene_white_background
from ..gs.cameras import load_camera_images
from ..gs.fit import evaluate_psnr, fit_gaussians
from ..gs.render import render
from ..io.atomic import atomic_write_json


def warm_up(backend: str, cam, device: torch.device) -> float:
    """Seconds of one render with ``backend`` (gsplat's first use compiles its CUDA extension)."""
    from ..gs.model import GaussianModel

    t = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    m = GaussianModel(means=torch.randn(64, 3, generator=g) * 0.3, log_scales=torch.full((64, 3), -3.0),
                      quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(64, 1), opacity_logits=torch.zeros(64),
                      sh_dc=torch.rand(64, 3, generator=g), sh_rest=torch.zeros(64, 0, 3)).to(device)
    render(m, cam, backend=backend)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def bench_fit(scene: str | Path, iterations: int, backends: list[str], device: str = "cuda", seed: int = 0,
              warm: bool = True, progress: bool = False) -> dict:
    """One fit per backend of ``scene``'s train split; PSNR on its test split with the reference renderer."""
    dev = torch.device(device)
    scene = Path(scene)
    train_cams, test_cams = load_scene(scene, "train"), load_scene(scene, "test")
    background = [1.0, 1.0, 1.0] if scene_white_background(scene) else [0.0, 0.0, 0.0]
    train_imgs = load_camera_images(train_cams, background=background)
    test_imgs = load_camera_images(test_cams, background=background)
    points, colors = load_scene_points(scene) or (None, None)
    res: dict = {"scene": str(scene), "train_views": len(train_cams), "test_views": len(test_cams),
                 "size": [train_cams[0].height, train_cams[0].width], "iterations": iterations, "device": str(dev),
                 "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "torch": torch.__version__,
                 "scorer": "torch reference renderer", "backends": {}}
    for b in backends:
        row: dict = {}
        if warm:
            row["warm_seconds"] = round(warm_up(b, train_cams[0], dev), 2)
        t = time.perf_counter()
        model, hist = fit_gaussians(train_cams, train_imgs, init=points, init_colors=colors, iterations=iterations,
                                    seed=seed, progress=progress, backend=b, background=background, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        sec = time.perf_counter() - t
        with torch.no_grad():
            psnr = evaluate_psnr(model.to(dev), test_cams, test_imgs, background=background, backend="torch")
        row.update(seconds=round(sec, 2), it_per_s=round(iterations / sec, 2), backend_used=hist.backend,
                   gaussians=model.num_gaussians, final_loss=round(statistics.fmean(hist.loss[-50:]), 5),
                   psnr_test=round(statistics.fmean(psnr), 3))
        res["backends"][b] = row
        print(f"[fit_bench] {b}: {row}", flush=True)
    if {"torch", "gsplat"} <= set(res["backends"]):
        a, g = res["backends"]["torch"], res["backends"]["gsplat"]
        res["speedup_gsplat"] = round(a["seconds"] / g["seconds"], 2)
        res["psnr_gap_db"] = round(g["psnr_test"] - a["psnr_test"], 3)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nifi_lib.bench.fit_bench", description=__doc__.split("\n")[0])
    p.add_argument("--scene", required=True, help="a scene with train and test splits (e.g. NeRF-synthetic lego)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--backends", nargs="+", default=["gsplat", "torch"], choices=["torch", "gsplat"])
    p.add_argument("--device", default=default_device())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warm", dest="warm", action="store_false", help="time gsplat's first build inside its fit")
    p.add_argument("--out", default=None, help="JSON result (written atomically)")
    a = p.parse_args(argv)
    res = bench_fit(a.scene, a.iterations, a.backends, device=a.device, seed=a.seed, warm=a.warm)
    if a.out:
        atomic_write_json(a.out, res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

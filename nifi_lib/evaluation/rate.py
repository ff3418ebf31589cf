"""Rate-perception analysis (Sec. 4.2, Table 1's size row): measured bytes of our codec against LPIPS.

Sizes come from the pair manifests (``bytes`` of each level's bitstream on disk) and the dense model's PLY;
LPIPS before/after restoration from a benchmark result.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..paths import repo_path


def level_sizes_mb(pairs_root: str | Path, dataset: str = "embedded") -> dict[str, float]:
    """Mean over scenes of each rate's measured file size (MB), from ``manifest.json``."""
    sizes: dict[str, list[float]] = {}
    for man in sorted((repo_path(pairs_root) / dataset).glob("*/manifest.json")):
        for lv in json.loads(man.read_text())["levels"]:
            if lv.get("bytes"):
                sizes.setdefault(str(lv["label"]), []).append(lv["bytes"] / 1e6)
    return {k: float(np.mean(v)) for k, v in sizes.items()}


def dense_scores(preds: torch.Tensor, gts: torch.Tensor, lpips_net: str = "alex",
                 metrics: tuple[str, ...] = ("lpips", "dists")) -> dict[str, float]:
    """Mean LPIPS (and DISTS when ``metrics`` names it) of the dense model's renders against the ground truth:
    the reference point of the rate-perception plot. A metric left out is never built (DISTS needs the VGG16
    trunk, which a machine may lack: notebooks 06/07's ``metrics`` parameter)."""
    from ..metrics import metrics as M

    out = {"lpips": float(M.lpips(preds, gts, net=lpips_net).mean())}
    if "dists" in metrics:
        out["dists"] = float(M.dists(preds, gts).mean())
    return out


def mean_reference(sizes_mb: list[float], scores: list[dict[str, float]]) -> dict | None:
    """``{"mb", "lpips", "dists", "scenes"}`` averaged over scenes (``dists`` None when it was not scored)."""
    if not sizes_mb:
        return None
    return {"mb": float(np.mean(sizes_mb)), "lpips": float(np.mean([s["lpips"] for s in scores])),
            "dists": float(np.mean([s["dists"] for s in scores])) if all("dists" in s for s in scores) else None,
            "scenes": len(sizes_mb)}


def uncompressed_reference(artifacts_root: str | Path, scenes_root: str | Path, split: str = "test",
                           lpips_net: str = "alex", metrics: tuple[str, ...] = ("lpips", "dists")) -> dict:
    """The dense (uncompressed) 3DGS as the reference point: mean PLY size (MB) and LPIPS/DISTS
    (:func:`dense_scores`) of its renders against the ground-truth views."""
    from ..data.scenes import load_scene
    from ..gs.model import load_ply
    from ..gs.render import render
    from ..io.images import load_image

    sizes, scores = [], []
    for art in sorted(p for p in repo_path(artifacts_root).iterdir() if (p / "full.ply").is_file()):
        ply = art / "full.ply"
        model = load_ply(ply)
        sizes.append(ply.stat().st_size / 1e6)
        cams = load_scene(repo_path(scenes_root) / art.name, split=split)
        with torch.no_grad():
            preds = torch.stack([render(model, c, backend="torch").image.clamp(0, 1) for c in cams])
        gts = torch.stack([load_image(c.image_path) for c in cams])
        scores.append(dense_scores(preds, gts, lpips_net, metrics))
    return mean_reference(sizes, scores)


def equal_quality_ratio(size_mb: float, lpips_value: float, curve_mb: list[float], curve_lpips: list[float]) -> float | None:
    """How many times smaller ``size_mb`` is than the size at which ``curve`` (e.g. the unrestored codec)
    reaches the same LPIPS, interpolating linearly in log-size. ``None`` when the curve never gets there."""
    order = np.argsort(curve_mb)
    mb = np.log(np.asarray(curve_mb, dtype=float)[order])
    lp = np.asarray(curve_lpips, dtype=float)[order]
    if lpips_value < lp.min():
        return None  # better than every point of the reference curve
    for i in range(len(mb) - 1):
        lo, hi = lp[i + 1], lp[i]
        if min(lo, hi) <= lpips_value <= max(lo, hi) and hi != lo:
            t = (lpips_value - lp[i]) / (lp[i + 1] - lp[i])
            return float(math.exp(mb[i] + t * (mb[i + 1] - mb[i])) / size_mb)
    if lpips_value >= lp.max():
        return float(math.exp(mb[0]) / size_mb)
    return None

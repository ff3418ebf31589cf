"""``nifi eval``: metrics of a restoration method on a pair root, before (degraded render) and after (restored).

Pair layout (seed README, Sec. 4.2): ``data_root/<scene>/rate_<label>/<split>/{clean,degraded}/*.png``
(``data_root`` may also be one scene folder holding ``rate_*/``), read by
:func:`~nifi_lib.synthesis.pairs.read_pairs` (``layout="scene"``): a frame present on one side only, a size
mismatch, an empty or missing folder are :class:`~nifi_lib.synthesis.pairs.PairError` naming the files.

Output (``metrics.json``, written atomically), the seed's contract plus PSNR/SSIM:

- ``metrics.aggregate.{lpips,dists,psnr,ssim}_{before,after}`` (mean over all images) and ``n_images``;
- ``metrics.per_scene_rate[scene][rate]`` (means over that scene's images at that rate);
- ``records[]``: one per image: ``scene, rate, split, file`` and every metric before and after;
- ``config``: method settings, data root, split, metric conventions.

"before" compares the degraded frame with the clean one, "after" the restored frame with the clean one.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm import tqdm

from ..io.atomic import atomic_write_json
from ..devices import default_device
from ..io.images import save_image
from ..synthesis.pairs import PairError, PairItem, load_pair, read_pairs
from .baselines import RestorationMethod, create_method, run_method
from ..metrics.metrics import compute_metrics

DEFAULT_METRICS = ("lpips", "dists", "psnr", "ssim")
CONVENTIONS = {
    "lpips": "lpips 0.1.4, v0.1, AlexNet trunk (torchvision ImageNet weights), inputs mapped to [-1, 1], no resizing",
    "lpips_vgg": "as lpips with the VGG16 trunk",
    "dists": "reference DISTS_pytorch 0.1 (VGG16 ImageNet trunk, released alpha/beta), no resizing",
    "psnr": "RGB, data range 1, 10*log10(1/(mse+1e-8)) per image (mean over channels and pixels)",
    "ssim": "RGB, data range 1, 11x11 Gaussian window sigma 1.5, valid filtering, no downsampling, channel mean",
    "ms_ssim": "piq.multi_scale_ssim, RGB, data range 1",
    "aggregate": "mean over images",
}


def check_pairs(items: Sequence[PairItem], progress: bool = False) -> None:
    """Decode every pair once (discarding the pixels): a corrupt, truncated, 16-bit, non-RGB or too large
    file, or a size mismatch, raises here, naming the file, before a model is loaded or anything written."""
    for item in tqdm(items, desc="check pairs", unit="pair", disable=not progress, leave=False):
        load_pair(item)


def evaluate_items(items: Sequence[PairItem], methods: dict[str, RestorationMethod],
                   metric_names: Sequence[str] = DEFAULT_METRICS, device: str | torch.device | None = None,
                   save_dir: str | Path | None = None, progress: bool = True, desc: str = "eval",
                   validate: bool = True) -> list[dict]:
    """Records (one per image and method): identity, ``method``, each metric ``_before`` and ``_after``.

    "before" metrics are computed once per image and shared by all methods. ``save_dir`` keeps restored
    frames as ``save_dir/<method>/<key>`` (PNG), readable later by ``precomputed:<method>``; every pair is
    then checked (:func:`check_pairs`) before the first frame is written, so a bad file never leaves a
    half-filled ``save_dir``.
    """
    if save_dir is not None and validate:
        check_pairs(items, progress)
    dev = torch.device(default_device(device))
    records = []
    for item in tqdm(items, desc=desc, unit="img", disable=not progress):
        clean, deg = load_pair(item)
        c, d = clean[None].to(dev), deg[None].to(dev)
        before = {k: float(v[0]) for k, v in compute_metrics(d, c, metric_names, device=dev).items()}
        for mname, method in methods.items():
            t0 = time.perf_counter()
            restored = run_method(method, d, [item.key])
            dt = time.perf_counter() - t0
            if method.is_identity:
                after = dict(before)
            else:
                after = {k: float(v[0]) for k, v in compute_metrics(restored, c, metric_names, device=dev).items()}
            if save_dir is not None:
                save_image(Path(save_dir) / mname / Path(item.key).with_suffix(".png"), restored[0].cpu())
            rec = {**item.ident(), "method": mname}
            for k in metric_names:
                rec[f"{k}_before"] = before[k]
                rec[f"{k}_after"] = after[k]
            rec["restore_seconds"] = dt
            used = getattr(method, "last_sigmas", None)   # BM3D/FFDNet: the sigma this frame was denoised with
            if used:
                rec["sigma"] = float(used[0])
            records.append(rec)
    return records


def metric_keys(metric_names: Iterable[str]) -> list[str]:
    return [f"{m}_{w}" for m in metric_names for w in ("before", "after")]


def mean_of(records: Sequence[dict], keys: Sequence[str], warn: bool = True) -> dict:
    """Mean of each key over the records with a finite value, plus ``n_images`` and ``n_nonfinite``
    (``{key: how many NaN/inf values were left out of that mean}``, every key listed, 0 when none); a
    missing or None value is not counted there. Any non-finite value also raises a ``RuntimeWarning``
    naming the keys and counts (``warn=False`` to silence it)."""
    out: dict = {}
    bad: dict[str, int] = {}
    for k in keys:
        present = [r[k] for r in records if k in r and r[k] is not None]
        vals = [v for v in present if math.isfinite(v)]
        bad[k] = len(present) - len(vals)
        out[k] = sum(vals) / len(vals) if vals else None
    out["n_images"] = len(records)
    out["n_nonfinite"] = bad
    if warn and any(bad.values()):
        warnings.warn("non-finite metric values left out of the means: "
                      + ", ".join(f"{k}: {n} of {len(records)}" for k, n in bad.items() if n),
                      RuntimeWarning, stacklevel=2)
    return out


def group(records: Sequence[dict], *fields: str) -> dict:
    """Nested dict ``{v1: {v2: [records]}}`` by the given fields (insertion order)."""
    out: dict = {}
    for r in records:
        node = out
        for f in fields[:-1]:
            node = node.setdefault(r[f], {})
        node.setdefault(r[fields[-1]], []).append(r)
    return out


HIGHER_IS_BETTER = frozenset({"psnr", "ssim", "ms_ssim"})
DEFAULT_SIGMA_SWEEP = (2.0, 5.0, 10.0, 15.0, 25.0)


def _center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if not size:
        return x
    h, w = x.shape[-2:]
    th, tw = min(size, h), min(size, w)
    y, z = (h - th) // 2, (w - tw) // 2
    return x[..., y:y + th, z:z + tw]


def choose_sigma(method_name: str, val_items_by_rate: dict[str, Sequence[PairItem]] | Sequence[PairItem],
                 sigmas: Sequence[float] = DEFAULT_SIGMA_SWEEP, metric: str = "lpips", max_items: int = 4,
                 crop: int | None = 64, device: str | torch.device | None = None,
                 method: RestorationMethod | None = None, **method_options) -> dict:
    """Pick BM3D's / FFDNet's sigma (8-bit levels) per rate from a small sweep on VALIDATION views.

    ``val_items_by_rate``: ``{rate: [PairItem]}`` or a flat list (grouped by ``item.rate``); items of the
    ``test`` split are refused (the choice must not see the frames it is evaluated on). Per rate, the first
    ``max_items`` pairs, centre-cropped to ``crop`` pixels (BM3D is slow; a few 64x64 views suffice), are
    restored at each sigma and scored with ``metric`` (lower is better, except PSNR/SSIM). Returns::

        {"method", "metric", "sigmas", "sigma_by_rate": {rate: best sigma among ``sigmas``},
         "table": {rate: {sigma: mean metric}},   # sigma 0.0 = no restoration ("none")
         "none": {rate: metric of the degraded views}, "best": {rate: metric at the chosen sigma},
         "loses_to_none": {rate: bool}, "n_items": {rate: int}, "crop", "split", "notes": [str]}

    ``notes`` says, with the sigma, where even the best sigma is worse than no restoration. Pass the
    result's ``sigma_by_rate`` (and the result as ``sigma_sweep``) to ``create_method`` to use it.
    """
    if isinstance(val_items_by_rate, dict):
        by_rate = {str(r): list(v) for r, v in val_items_by_rate.items()}
    else:
        by_rate = {}
        for it in val_items_by_rate:
            by_rate.setdefault(str(it.rate), []).append(it)
    if not by_rate or not any(by_rate.values()):
        raise PairError("choose_sigma: no validation pairs given")
    test = sorted({it.key for v in by_rate.values() for it in v if it.split == "test"})
    if test:
        raise PairError(f"choose_sigma: {len(test)} pair(s) of the 'test' split given (e.g. {test[0]}); choose "
                        "sigma on validation views, not on the frames it is evaluated on")
    sweep = [float(x) for x in sigmas]
    if not sweep or any(not x >= 0 for x in sweep):
        raise ValueError(f"choose_sigma: sigmas must be a non-empty list of values >= 0, got {list(sigmas)}")
    dev = torch.device(default_device(device))
    m = method or create_method(method_name, sigma=sweep[0], device=device, **method_options)
    if not hasattr(m, "sigma") or not hasattr(m, "sigma_by_rate"):
        raise ValueError(f"choose_sigma: method '{m.name}' has no sigma to choose")
    saved = (m.sigma, m.sigma_by_rate)
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    table: dict = {}
    none: dict = {}
    best_sigma: dict = {}
    best_val: dict = {}
    n_items: dict = {}
    try:
        m.sigma_by_rate = None
        for rate, items in sorted(by_rate.items()):
            pairs = []
            for it in items[:max(1, int(max_items))]:
                clean, deg = load_pair(it)
                pairs.append((_center_crop(clean, crop)[None].to(dev), _center_crop(deg, crop)[None].to(dev)))
            n_items[rate] = len(pairs)

            def score(outs) -> float:
                vals = [float(compute_metrics(o, c, [metric], device=dev)[metric][0]) for o, (c, _) in zip(outs, pairs)]
                return sum(vals) / len(vals)

            row = {0.0: score([d for _, d in pairs])}
            for sg in sweep:
                if sg == 0.0:
                    continue
                m.sigma = sg
                row[sg] = score([run_method(m, d) for _, d in pairs])
            table[rate] = row
            none[rate] = row[0.0]
            best = min(sweep, key=lambda sg: (sign * row[sg], sg))   # ties: the smaller sigma
            best_sigma[rate], best_val[rate] = best, row[best]
    finally:
        m.sigma, m.sigma_by_rate = saved
    loses = {r: bool(sign * best_val[r] > sign * none[r]) for r in table}
    notes = [f"rate {r}: {m.name} at its best sigma {best_sigma[r]:g} gives {metric} {best_val[r]:.4f}, worse than "
             f"no restoration ({none[r]:.4f})" for r in sorted(table) if loses[r]]
    splits = sorted({it.split for v in by_rate.values() for it in v})
    return {"method": m.name, "metric": metric, "sigmas": sweep, "sigma_by_rate": best_sigma, "table": table,
            "none": none, "best": best_val, "loses_to_none": loses, "n_items": n_items, "crop": crop,
            "split": splits[0] if len(splits) == 1 else splits, "notes": notes}


def run_eval(data_root: str | Path, split: str = "test", out: str | Path | None = None, method: str = "nifi",
             ckpt: str | None = None, base_model: str | None = None, device: str | None = None,
             metric_names: Sequence[str] = DEFAULT_METRICS, limit: int | None = None,
             save_restored: str | Path | None = None, progress: bool = True,
             method_instance: RestorationMethod | None = None, **method_options) -> dict:
    """Evaluate one method on a pair root; returns the result dict and writes it to ``out`` if given."""
    items = read_pairs(data_root, split, layout="scene")
    if limit:
        items = items[:int(limit)]
    check_pairs(items, progress)   # every file decodes and pairs match before a model loads or a file is written
    m = method_instance or create_method(method, ckpt=ckpt, base_model=base_model, device=device, **method_options)
    records = evaluate_items(items, {m.name: m}, metric_names, device=device, save_dir=save_restored,
                             progress=progress, desc=f"eval {m.name}", validate=False)
    keys = metric_keys(metric_names)
    per_scene_rate = {s: {r: mean_of(v, keys) for r, v in rates.items()}
                      for s, rates in group(records, "scene", "rate").items()}
    result = {
        "metrics": {"aggregate": mean_of(records, keys), "per_scene_rate": per_scene_rate},
        "records": [{k: v for k, v in r.items() if k != "method"} for r in records],
        "config": {"method": m.info(), "ckpt": ckpt, "base_model": base_model, "data_root": str(data_root),
                   "split": split, "metrics": list(metric_names),
                   "conventions": {k: CONVENTIONS[k] for k in [*metric_names, "aggregate"] if k in CONVENTIONS}},
    }
    if out is not None:
        atomic_write_json(out, result)
    return result


__all__ = ["PairError", "check_pairs", "evaluate_items", "mean_of", "group", "metric_keys", "run_eval", "DEFAULT_METRICS", "CONVENTIONS",
           "choose_sigma", "DEFAULT_SIGMA_SWEEP"]

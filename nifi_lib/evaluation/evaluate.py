"""``nifi eval``: metrics of a restoration method on a pair root, before (degraded render) and after (restored).

Pair layout (seed README, Sec. 4.2): ``data_root/<scene>/rate_<label>/<split>/{clean,degraded}/*.png``
(``data_root`` may also be one scene folder holding ``rate_*/``). Clean and degraded frames are matched by
file stem; a frame present on one side only, a size mismatch, an empty or missing folder are errors that
name the files.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm import tqdm

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from ..io.images import IMAGE_EXTS, load_image, save_image
from .baselines import RestorationMethod, create_method, run_method
from .metrics import compute_metrics

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


class PairError(NifiError, ValueError):
    """The pair root does not have the expected layout, or a pair does not match (names, sizes)."""


@dataclass(frozen=True)
class PairItem:
    """One clean/degraded frame pair."""

    scene: str
    rate: str
    split: str
    file: str
    clean: Path
    degraded: Path
    dataset: str | None = None

    @property
    def key(self) -> str:
        """Relative name ``[<dataset>/]<scene>/rate_<rate>/<split>/<file>`` (used by precomputed methods)."""
        parts = ([self.dataset] if self.dataset else []) + [self.scene, f"rate_{self.rate}", self.split, self.file]
        return "/".join(parts)

    def ident(self) -> dict:
        d = {"dataset": self.dataset} if self.dataset is not None else {}
        return {**d, "scene": self.scene, "rate": self.rate, "split": self.split, "file": self.file}


def _images_by_stem(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in out:
                raise PairError(f"{folder}: two images with the stem '{p.stem}' ({out[p.stem].name}, {p.name})")
            out[p.stem] = p
    return out


def pairs_in_rate_dir(rate_dir: Path, split: str, scene: str, dataset: str | None = None) -> list[PairItem]:
    """Pairs of ``rate_dir/<split>/{clean,degraded}``; errors for a missing side or unmatched names."""
    rate = rate_dir.name[len("rate_"):]
    base = rate_dir / split
    clean_dir, deg_dir = base / "clean", base / "degraded"
    for d in (clean_dir, deg_dir):
        if not d.is_dir():
            raise PairError(f"{d}: folder missing (expected {base}/clean/ and {base}/degraded/)")
    clean, deg = _images_by_stem(clean_dir), _images_by_stem(deg_dir)
    if not clean and not deg:
        raise PairError(f"{base}: clean/ and degraded/ hold no images ({', '.join(IMAGE_EXTS)})")
    only_c, only_d = sorted(set(clean) - set(deg)), sorted(set(deg) - set(clean))
    if only_c or only_d:
        msg = []
        if only_c:
            msg.append(f"{len(only_c)} clean frame(s) without a degraded one: {', '.join(clean[s].name for s in only_c[:5])}")
        if only_d:
            msg.append(f"{len(only_d)} degraded frame(s) without a clean one: {', '.join(deg[s].name for s in only_d[:5])}")
        raise PairError(f"{base}: unmatched pairs: " + "; ".join(msg))
    return [PairItem(scene=scene, rate=rate, split=split, file=deg[s].name, clean=clean[s], degraded=deg[s],
                     dataset=dataset) for s in sorted(clean)]


def _rate_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("rate_"))


def discover_scene_pairs(root: Path, split: str, dataset: str | None = None) -> tuple[list[PairItem], list[str]]:
    """Pairs under ``root/<scene>/rate_*/<split>/`` (or ``root/rate_*`` for one scene); returns (items, skipped)."""
    if not root.is_dir():
        raise PairError(f"{root}: pair root not found")
    scenes = [root] if _rate_dirs(root) else sorted(p for p in root.iterdir() if p.is_dir() and _rate_dirs(p))
    items: list[PairItem] = []
    skipped: list[str] = []
    for scene_dir in scenes:
        for rd in _rate_dirs(scene_dir):
            if not (rd / split).is_dir():
                skipped.append(f"{rd}: no '{split}' split")
                continue
            items.extend(pairs_in_rate_dir(rd, split, scene_dir.name, dataset))
    return items, skipped


def discover_pairs(data_root: str | Path, split: str = "test") -> list[PairItem]:
    """All pairs of ``data_root/<scene>/rate_<label>/<split>/{clean,degraded}``; :class:`PairError` if none."""
    root = Path(data_root)
    items, skipped = discover_scene_pairs(root, split)
    if not items:
        extra = f" ({'; '.join(skipped[:3])})" if skipped else ""
        raise PairError(f"{root}: no pairs found for split '{split}' in the layout "
                        f"<data_root>/<scene>/rate_<label>/{split}/{{clean,degraded}}/*.png{extra}")
    return items


def load_pair(item: PairItem) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean, degraded)`` as ``(3, H, W)`` in [0, 1]; a size mismatch names both files."""
    clean, deg = load_image(item.clean), load_image(item.degraded)
    if clean.shape != deg.shape:
        raise PairError(f"size mismatch: {item.clean} is {clean.shape[2]}x{clean.shape[1]}, "
                        f"{item.degraded} is {deg.shape[2]}x{deg.shape[1]}")
    return clean, deg


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
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
            records.append(rec)
    return records


def metric_keys(metric_names: Iterable[str]) -> list[str]:
    return [f"{m}_{w}" for m in metric_names for w in ("before", "after")]


def mean_of(records: Sequence[dict], keys: Sequence[str]) -> dict:
    """Mean of each key over records (non-finite values are skipped and counted), plus ``n_images``."""
    out: dict = {}
    for k in keys:
        vals = [r[k] for r in records if k in r and r[k] is not None and math.isfinite(r[k])]
        out[k] = sum(vals) / len(vals) if vals else None
    out["n_images"] = len(records)
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


def run_eval(data_root: str | Path, split: str = "test", out: str | Path | None = None, method: str = "nifi",
             ckpt: str | None = None, base_model: str | None = None, device: str | None = None,
             metric_names: Sequence[str] = DEFAULT_METRICS, limit: int | None = None,
             save_restored: str | Path | None = None, progress: bool = True,
             method_instance: RestorationMethod | None = None, **method_options) -> dict:
    """Evaluate one method on a pair root; returns the result dict and writes it to ``out`` if given."""
    items = discover_pairs(data_root, split)
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


__all__ = ["PairError", "PairItem", "discover_pairs", "discover_scene_pairs", "pairs_in_rate_dir", "load_pair",
           "check_pairs",
           "evaluate_items", "mean_of", "group", "metric_keys", "run_eval", "DEFAULT_METRICS", "CONVENTIONS"]

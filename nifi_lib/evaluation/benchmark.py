"""``nifi benchmark``: the Sec. 4.2 protocol over datasets, scenes and rates, several methods, beside Table 1.

Layout: ``data_root/<dataset>/<scene>/rate_<label>/<split>/{clean,degraded}/*.png`` (rates labelled by the
HAC++ lambda: ``rate_0.1``, ``rate_0.5``, ``rate_1.0``), read by :func:`~nifi_lib.synthesis.pairs.read_pairs`
(``layout="benchmark"``). Output (``benchmark_metrics.json``, atomic):

- ``summary.aggregate[method]``: mean over all images of every metric ``_before``/``_after``;
- ``summary.per_scene[dataset][scene][rate][method]``: mean over the scene's images;
- ``summary.per_dataset_rate[dataset][rate][method]``: mean over scenes of the per-scene means (each scene
  weighs the same, the usual 3DGS protocol behind Table 1);
- ``summary.per_dataset[dataset][method]``: mean over that dataset's rates of ``per_dataset_rate``;
- ``paper_comparison[dataset][rate]``: ours (LPIPS/DISTS after restoration, per method, and the degraded input)
  beside Table 1's NiFi and HAC++ numbers (and the same method's row where Table 1 has one), with deltas
  ``ours - paper``; datasets or rates that Table 1 does not have get ``in_table1: false`` and a note;
- ``records[]``: one per image and method; ``config``.

Restored frames: ``save_restored`` (CLI ``--save_outputs DIR``) keeps every method's output as
``DIR/<method>/<dataset>/<scene>/rate_<label>/<split>/<name>.png`` (atomic PNG writes) plus ``DIR/outputs.json``;
:class:`nifi_lib.evaluation.outputs.RunIndex` reads them back (notebook 08).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..io.atomic import atomic_write_json
from . import paper
from .baselines import RestorationMethod, create_method
from ..synthesis.pairs import PairError, read_pairs
from .evaluate import CONVENTIONS, DEFAULT_METRICS, evaluate_items, group, mean_of, metric_keys

# nifi_wo_t0 needs its own checkpoint (trained with diffusion.t0: 1000): add it with --ckpt_wo_t0
DEFAULT_METHODS = ("none", "bm3d", "ffdnet", "img2img", "nifi")


def _mean_dicts(dicts: Sequence[dict], keys: Sequence[str]) -> dict:
    out: dict = {}
    for k in keys:
        vals = [d[k] for d in dicts if d.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    out["n_images"] = sum(d.get("n_images", 0) for d in dicts)
    return out


def summarize(records: Sequence[dict], metric_names: Sequence[str] = DEFAULT_METRICS) -> dict:
    """``aggregate``, ``per_scene``, ``per_dataset_rate`` (scene-balanced), ``per_dataset`` (see module doc)."""
    keys = metric_keys(metric_names)
    aggregate = {m: mean_of(v, keys) for m, v in group(records, "method").items()}
    per_scene: dict = {}
    for ds, scenes in group(records, "dataset", "scene", "rate", "method").items():
        per_scene[ds] = {s: {r: {m: mean_of(v, keys) for m, v in methods.items()} for r, methods in rates.items()}
                         for s, rates in scenes.items()}
    per_dataset_rate: dict = {}
    for ds, scenes in per_scene.items():
        rates: dict = {}
        for s, by_rate in scenes.items():
            for r, by_method in by_rate.items():
                for m, v in by_method.items():
                    rates.setdefault(r, {}).setdefault(m, []).append(v)
        per_dataset_rate[ds] = {r: {m: {**_mean_dicts(v, keys), "n_scenes": len(v)} for m, v in ms.items()}
                                for r, ms in sorted(rates.items())}
    per_dataset: dict = {}
    for ds, rates in per_dataset_rate.items():
        ms: dict = {}
        for r, by_method in rates.items():
            for m, v in by_method.items():
                ms.setdefault(m, []).append(v)
        per_dataset[ds] = {m: {**_mean_dicts(v, keys), "n_rates": len(v)} for m, v in ms.items()}
    return {"aggregate": aggregate, "per_dataset": per_dataset, "per_dataset_rate": per_dataset_rate,
            "per_scene": per_scene,
            "conventions": {"per_scene": "mean over the scene's images",
                            "per_dataset_rate": "mean over scenes of per-scene means (scene-balanced)",
                            "per_dataset": "mean over rates of per_dataset_rate",
                            "aggregate": "mean over all images",
                            **{k: CONVENTIONS[k] for k in metric_names if k in CONVENTIONS}}}


def _pick(v: dict | None, which: str) -> dict | None:
    if v is None:
        return None
    return {"lpips": v.get(f"lpips_{which}"), "dists": v.get(f"dists_{which}")}


def _delta(ours: dict | None, ref: dict | None) -> dict | None:
    if ours is None or ref is None:
        return None
    return {k: (None if ours.get(k) is None else round(ours[k] - ref[k], 6)) for k in ("lpips", "dists")}


def paper_comparison(per_dataset_rate: dict) -> dict:
    """Per dataset and rate: ours beside Table 1 (NiFi, HAC++, same method) with deltas ``ours - paper``."""
    out: dict = {}
    for ds, rates in per_dataset_rate.items():
        cds = paper.canonical_dataset(ds)
        out[ds] = {}
        for r, by_method in rates.items():
            ours = {m: _pick(v, "after") for m, v in by_method.items()}
            first = next(iter(by_method.values()))
            entry: dict = {"ours": ours, "ours_input": _pick(first, "before"),
                           "n_scenes": first.get("n_scenes"), "n_images": first.get("n_images")}
            cr = paper.canonical_rate(r)
            if cds is None:
                entry = {"in_table1": False,
                         "note": f"dataset '{ds}' is not in Table 1 (the paper evaluates "
                                 f"{', '.join(paper.DATASET_TITLES.values())})", **entry}
            elif cr is None:
                entry = {"in_table1": False,
                         "note": f"rate '{r}' is not one of Table 1's lambda {', '.join(paper.RATES)}", **entry}
            else:
                p_nifi = paper.lookup("nifi", cds, cr)
                p_hac = paper.lookup("hacpp", cds, cr)
                same = {m: paper.lookup(m, cds, cr) for m in ours}
                entry = {
                    "in_table1": True, "table1_dataset": paper.DATASET_TITLES[cds], "lambda": float(cr),
                    "paper_size_mb": paper.SIZES_MB[cds][cr],
                    "paper": {"nifi": {k: p_nifi[k] for k in ("lpips", "dists")},
                              "hacpp": {k: p_hac[k] for k in ("lpips", "dists")},
                              "uncompressed_3dgs": {k: paper.UNCOMPRESSED_3DGS[cds][k] for k in ("lpips", "dists")}},
                    **entry,
                    "delta_vs_paper_nifi": {m: _delta(v, p_nifi) for m, v in ours.items()},
                    "delta_vs_paper_hacpp": {m: _delta(v, p_hac) for m, v in ours.items()},
                    "delta_vs_paper_same_method": {
                        m: (_delta(ours[m], same[m]) if same[m] else None) for m in ours},
                    "paper_same_method": {m: ({k: same[m][k] for k in ("lpips", "dists")} if same[m] else None)
                                          for m in ours},
                    "delta_input_vs_paper_hacpp": _delta(_pick(first, "before"), p_hac),
                }
            out[ds][r] = entry
    return out


def run_benchmark(data_root: str | Path, split: str = "test", out: str | Path | None = None,
                  methods: Sequence[str] = DEFAULT_METHODS, ckpt: str | None = None, base_model: str | None = None,
                  device: str | None = None, metric_names: Sequence[str] = DEFAULT_METRICS, limit: int | None = None,
                  save_restored: str | Path | None = None, progress: bool = True,
                  method_instances: dict[str, RestorationMethod] | None = None, **method_options) -> dict:
    """Run every method on every pair of the benchmark root; returns the result and writes ``out`` if given.

    All methods are created (and their weights checked) before the first image is processed.
    """
    items = read_pairs(data_root, split, layout="benchmark")
    if limit:
        items = items[:int(limit)]
    if method_instances is None:
        if not methods:
            raise PairError("no methods given")
        method_instances = {}
        for name in methods:
            m = create_method(name, ckpt=ckpt, base_model=base_model, device=device, **method_options)
            if m.name in method_instances:
                raise PairError(f"method '{m.name}' given twice")
            method_instances[m.name] = m
    records = evaluate_items(items, method_instances, metric_names, device=device, save_dir=save_restored,
                             progress=progress, desc="benchmark")
    if save_restored is not None:
        from .outputs import write_outputs_manifest

        write_outputs_manifest(save_restored, data_root, split, "benchmark",
                               {n: m.info() for n, m in method_instances.items()}, len(items))
    summary = summarize(records, metric_names)
    result = {
        "summary": summary,
        "paper_comparison": paper_comparison(summary["per_dataset_rate"]),
        "records": records,
        "config": {"methods": {n: m.info() for n, m in method_instances.items()}, "ckpt": ckpt,
                   "base_model": base_model, "data_root": str(data_root), "split": split,
                   "metrics": list(metric_names)},
    }
    if out is not None:
        atomic_write_json(out, result)
    return result


TABLE1_ORDERINGS = (("nifi_wo_t0", "after"), ("img2img", "after"), ("base_t0", "after"), ("none", "before"))


def table1_orderings(per_rate: dict, method: str = "nifi", others=TABLE1_ORDERINGS,
                     metrics: Sequence[str] = ("lpips", "dists")) -> list[dict]:
    """Table 1's claims as measured: for each rate of ``per_rate`` (``summary.per_dataset_rate[dataset]``),
    each ``(other, which)`` present and each metric, whether ``method`` is lower than ``other`` (lower is
    better). One row each: ``rate``, ``other``, ``metric``, ``ours``, ``theirs``, ``margin`` (theirs - ours,
    > 0 when the ordering holds) and ``holds``. ``which`` is ``"after"`` for a restoration method and
    ``"before"`` for the unrestored render."""
    rows = []
    for rate in sorted(per_rate, key=lambda r: float(r) if str(r).replace(".", "", 1).isdigit() else str(r)):
        row = per_rate[rate]
        ours = row.get(method)
        if not ours:
            continue
        for other, which in others:
            if other not in row:
                continue
            for m in metrics:
                a, b = ours.get(f"{m}_after"), row[other].get(f"{m}_{which}")
                if a is None or b is None:
                    continue
                rows.append({"rate": str(rate), "other": other, "metric": m, "ours": float(a), "theirs": float(b),
                             "margin": float(b) - float(a), "holds": bool(a < b)})
    return rows


__all__ = ["DEFAULT_METHODS", "TABLE1_ORDERINGS", "table1_orderings", "summarize", "paper_comparison", "run_benchmark"]

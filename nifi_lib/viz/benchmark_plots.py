"""Figures for notebooks 06 and 07: Table 1 side by side, per-rate bars, rate-perception, sweeps; their
numbers as text (``format_*``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..config import DEFAULT_T0
from ..evaluation import paper
from .rates import rate_labels
from .style import METHOD_COLORS


def table1_side_by_side(per_dataset_rate: dict, dataset: str = "embedded", methods=("none", "bm3d", "ffdnet",
                        "img2img", "nifi", "nifi_wo_t0"), paper_dataset: str = "mipnerf360",
                        sizes_mb: dict[str, float] | None = None) -> str:
    """Markdown: Table 1's rows for one paper dataset beside ours, one column per rate, every cell
    ``LPIPS / DISTS`` (the header says so). Rates are labelled with their file size (:func:`rate_label`):
    the paper's from Table 1's sizes, ours from ``sizes_mb`` (measured bytes) when given."""
    rates = sorted(per_dataset_rate[dataset])
    ours_title = {"none": "compressed (our codec)", "nifi_wo_t0": "+ NiFi w/o t0",
                  "base_t0": "+ frozen base at t0 (Eq. 7 without phi-)"}
    ptitle = paper.DATASET_TITLES[paper_dataset]
    plab = rate_labels(paper.RATES, paper.SIZES_MB.get(paper_dataset))
    olab = rate_labels(rates, sizes_mb)
    head = (["method"] + [f"paper {ptitle}, HAC++ {plab[r]}: LPIPS / DISTS" for r in paper.RATES]
            + [f"ours ({dataset}, our codec) {olab[r]}: LPIPS / DISTS" for r in rates])
    lines = ["Each cell: **LPIPS / DISTS** (lower is better; — where a metric was not computed). The smallest λ "
             "keeps the most and is the largest file.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        prow = paper.OUR_METHOD_TO_PAPER.get(m)
        pvals = [f"{paper.TABLE1[prow][paper_dataset][r]['lpips']:.3f} / {paper.TABLE1[prow][paper_dataset][r]['dists']:.3f}"
                 if prow else "—" for r in paper.RATES]
        ovals = []
        for r in rates:
            v = per_dataset_rate[dataset][r].get(m)
            key = "after" if m != "none" else "before"
            ovals.append(f"{v['lpips_' + key]:.3f} / {_fmt(v.get('dists_' + key))}" if v else "—")
        lines.append("| " + " | ".join([ours_title.get(m, "+ " + m), *pvals, *ovals]) + " |")
    return "\n".join(lines)


def _fmt(x, digits: int = 3) -> str:
    """A metric value, or — when it was not computed."""
    return "—" if x is None else f"{x:.{digits}f}"


def per_rate_bars(per_dataset_rate: dict, dataset: str, methods: list[str], metric: str = "lpips",
                  sizes_mb: dict[str, float] | None = None):
    """Bars of ``metric`` per rate and method; the rates say which file is largest (:func:`rate_label`)."""
    rates = sorted(per_dataset_rate[dataset])
    labels = rate_labels(rates, sizes_mb)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        key = f"{metric}_{'before' if m == 'none' else 'after'}"
        vals = [per_dataset_rate[dataset][r].get(m, {}).get(key, np.nan) for r in rates]
        ax.bar(np.arange(len(rates)) + i * w, vals, w, label=m, color=METHOD_COLORS.get(m))
    ax.set_xticks(np.arange(len(rates)) + 0.4 - w / 2, [labels[r].replace(" (", "\n(", 1) for r in rates])
    ax.set_xlabel("rate (our codec's levels, named like the paper's HAC++ λ)")
    ax.set_ylabel(f"{metric.upper()} (lower is better)")
    ax.legend(fontsize=7, ncol=3)
    return fig


def rate_perception_plot(sizes_mb: dict[str, float], per_rate: dict, uncompressed: dict | None,
                         methods=("none", "nifi"), metric: str = "lpips"):
    """LPIPS vs MB (log axis) from measured bytes, with the uncompressed scene as the reference point; methods
    without results in ``per_rate`` are left out."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rates = sorted(sizes_mb, key=lambda r: sizes_mb[r])
    methods = [m for m in methods if any(m in per_rate.get(r, {}) for r in rates)]   # those the benchmark ran
    for m in methods:
        key = f"{metric}_{'before' if m == 'none' else 'after'}"
        ys = [per_rate[r][m][key] for r in rates if m in per_rate.get(r, {})]
        xs = [sizes_mb[r] for r in rates if m in per_rate.get(r, {})]
        ax.plot(xs, ys, marker="o", label="compressed" if m == "none" else m, color=METHOD_COLORS.get(m))
        if m == methods[0]:
            labels = rate_labels(rates, sizes_mb)
            for r, x, y in zip([r for r in rates if m in per_rate.get(r, {})], xs, ys):
                ax.annotate(labels[r].split(" (")[0], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if uncompressed:
        ax.scatter([uncompressed["mb"]], [uncompressed[metric]], marker="*", s=120, color=METHOD_COLORS["uncompressed"],
                   label="uncompressed 3DGS", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("size (MB, measured bytes, log scale; λ=0.1 is the largest file)")
    ax.set_ylabel(f"{metric.upper()} (lower is better)")
    ax.legend(fontsize=8)
    return fig


def sweep_plot(xs, series: dict[str, list[float]], xlabel: str, title: str,
               ylabel: str = "LPIPS / DISTS (lower is better)"):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return fig


def alpha_sweep_plot(alpha_results: dict[float, dict], steps: int):
    """Eq. 5's alpha ablation (:func:`~nifi_lib.experiments.ablations.alpha_sweep`): LPIPS and DISTS after
    restoration against alpha, each phi- trained for ``steps`` steps."""
    series = {m.upper(): [v[f"{m}_after"] for v in alpha_results.values()]
              for m in METRIC_COLORS if all(f"{m}_after" in v for v in alpha_results.values())}
    return sweep_plot(list(alpha_results), series, "alpha", f"Eq. 5 blend, {steps} steps each")


T_ROW = "t0=T (no noise)"
METRIC_COLORS = {"lpips": "C0", "dists": "C1"}


def t0_sweep_plot(sweep: dict[str, dict], t0_values, paper_t0: int | None = DEFAULT_T0,
                  title: str = "restoration quality vs t0 (lower is better)"):
    """Sec. 4.2's t0 ablation: LPIPS and DISTS after restoration against t0, with reference lines per metric:
    the compressed input (dotted) and, when the sweep has the ``"t0=T (no noise)"`` row, NiFi w/o t0 (dashed);
    the paper's t0 as a vertical line. Both axes are labelled."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    xs = [t for t in t0_values if f"t0={t}" in sweep]
    first = next(iter(sweep.values()), {})
    for metric, color in METRIC_COLORS.items():
        if f"{metric}_after" not in first:   # a metric the sweep did not score (e.g. DISTS without its trunk)
            continue
        name = metric.upper()
        ax.plot(xs, [sweep[f"t0={t}"][f"{metric}_after"] for t in xs], marker="o", color=color,
                label=f"{name}, NiFi at t0")
        if f"{metric}_before" in first:
            ax.axhline(first[f"{metric}_before"], ls=":", color=color, alpha=0.8, label=f"{name} of the compressed input")
        if T_ROW in sweep:
            ax.axhline(sweep[T_ROW][f"{metric}_after"], ls="--", color=color, alpha=0.6,
                       label=f"{name}, t0 = T (no noise: NiFi w/o t0)")
    if paper_t0 is not None:
        ax.axvline(paper_t0, color="0.5", lw=0.8, ls="-.", label=f"paper's t0 = {paper_t0}")
    ax.set(xlabel="t0 (timestep the compressed latent is projected to, of T = 1000)",
           ylabel="LPIPS / DISTS after restoration (lower is better)", title=title)
    ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------------
# The numbers of notebooks 06 and 07 as text
# ------------------------------------------------------------------------------------------------
def format_sigma_sweeps(sweeps: dict[str, dict]) -> str:
    """The BM3D/FFDNet sigma chosen per rate on validation crops
    (:func:`~nifi_lib.experiments.embedded.benchmark_methods`), with the sweep's notes."""
    lines = []
    for name, sw in sweeps.items():
        lines.append(f"{name}: sigma per rate chosen on {sum(sw['n_items'].values())} validation crops: {sw['sigma_by_rate']}")
        lines += [f"    {note}" for note in sw["notes"]]
    return "\n".join(lines)


def format_orderings(orderings: list[dict]) -> str:
    """Table 1's orderings (:func:`~nifi_lib.evaluation.benchmark.table1_orderings`), one line each, and how many hold."""
    lines = [f"{'holds  ' if o['holds'] else 'FAILS  '} rate {o['rate']}: nifi < {o['other']:<10} ({o['metric']}): "
             f"{o['ours']:.4f} vs {o['theirs']:.4f} (margin {o['margin']:+.4f})" for o in orderings]
    from ..experiments.table1 import orderings_summary

    return "\n".join(lines + [f"{orderings_summary(orderings)['orderings_holding']} orderings hold"])


def format_rate_perception(rows: list[dict]) -> str:
    """One line per rate of :func:`~nifi_lib.experiments.table1.rate_perception_rows`."""
    return "\n".join(
        f"rate {r['rate']}: {r['kb']:.1f} KB, "
        + (f"{r['x_smaller']:.0f}x smaller than the dense PLY" if r["x_smaller"] is not None else "no dense PLY")
        + f"; NiFi LPIPS {r['lpips_nifi']:.3f} vs compressed {r['lpips_before']:.3f}"
        + (f"; the unrestored codec needs {r['equal_quality_ratio']:.1f}x the bytes for the same LPIPS"
           if r["equal_quality_ratio"] else "") for r in rows)


def format_t0_sweep(sweep: dict[str, dict]) -> str:
    """One line per row of :func:`~nifi_lib.experiments.ablations.t0_sweep`: LPIPS and DISTS before -> after."""
    return "\n".join(f"{name:>18}: " + "   ".join(f"{m.upper()} {v[m + '_before']:.4f} -> {v[m + '_after']:.4f}"
                                                  for m in METRIC_COLORS if m + "_after" in v)
                     for name, v in sweep.items())


def format_alpha_sweep(alpha_results: dict[float, dict]) -> str:
    """One line per alpha of :func:`~nifi_lib.experiments.ablations.alpha_sweep`: LPIPS and DISTS after restoration."""
    return "\n".join(f"alpha={a:.1f}: " + "  ".join(f"{m.upper()} {v[m + '_after']:.4f}"
                                                 for m in METRIC_COLORS if m + "_after" in v)
                     for a, v in alpha_results.items())


def format_high_frequency(ratios: dict[str, float]) -> str:
    """:func:`~nifi_lib.experiments.ablations.high_frequency_ratios`, one line per image kind."""
    return "\n".join(f"{k:>9}: high-frequency energy / ground truth = {v:.2f}" for k, v in ratios.items())


SHARPNESS_LABELS = {"degraded": "compressed", "base": "frozen base", "nifi": "NiFi", "nifi_wo_t0": "NiFi w/o t0",
                    "clean_vae": "ground truth via VAE", "clean": "ground truth"}


def sharpness_label(key: str) -> str:
    """The row name of an image kind of :func:`~nifi_lib.experiments.ablations.sharpness_by_rate`."""
    if key.startswith("nifi t0="):
        return "NiFi " + key[len("nifi "):]
    return SHARPNESS_LABELS.get(key, key)


def format_sharpness(table: dict) -> str:
    """:func:`~nifi_lib.experiments.ablations.sharpness_by_rate` as small tables (image kinds x rates): the
    high-frequency ratio to the ground truth and the patch-grid artefact at the patch stride; then the artefact
    per grid period over all rates (the smallest period that fires is where the grid comes from)."""
    groups = [*table["rates"], "all"]
    width = max(len(sharpness_label(k)) for k in table["hf_ratio"])
    counts = ", ".join(f"{g}: {table['count'][g]}" for g in table["rates"])
    lines = [f"images per rate: {counts}"]

    def block(title, columns, names, values):
        lines.extend(["", title, " " * (width + 2) + "".join(f"{c:>10}" for c in names)])
        for k in values:
            lines.append(f"  {sharpness_label(k):<{width}}" + "".join(f"{_fmt(values[k][c]):>10}" for c in columns))

    names = [f"rate {g}" if g != "all" else "all" for g in groups]
    block("high-frequency (Laplacian) energy / ground truth: 1 = as much fine detail, < 1 blurrier",
          groups, names, table["hf_ratio"])
    block(f"patch-grid artefact at the {table['stride']} px patch stride: ~0 = none; compare with the ground "
          "truth's own level", groups, names, table["patch_grid"])
    by_period = table.get("patch_grid_by_period")
    if by_period:
        periods = list(by_period)
        per_key = {k: {d: by_period[d][k] for d in periods} for k in table["patch_grid"]}
        block("patch-grid artefact per grid period, all rates (a grid of period d shows at every multiple of d)",
              periods, [f"{d} px" for d in periods], per_key)
    return "\n".join(lines)

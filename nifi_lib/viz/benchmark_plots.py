"""Figures for notebooks 06 and 07: Table 1 side by side, per-rate bars, rate-perception, sweeps."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..evaluation import paper
from .style import METHOD_COLORS


def table1_side_by_side(per_dataset_rate: dict, dataset: str = "embedded", methods=("none", "bm3d", "ffdnet",
                        "img2img", "nifi", "nifi_wo_t0"), paper_dataset: str = "mipnerf360") -> str:
    """Markdown: Table 1's rows for one paper dataset beside ours (LPIPS / DISTS at each rate)."""
    rates = sorted(per_dataset_rate[dataset])
    ours_title = {"none": "compressed (our codec)", "nifi_wo_t0": "+ NiFi w/o t0",
                  "base_t0": "+ frozen base at t0 (Eq. 7 without phi-)"}
    lines = [f"| method | paper {paper.DATASET_TITLES[paper_dataset]} (HAC++ λ {', '.join(paper.RATES)}) | "
             f"ours, {dataset} (our codec, rates {', '.join(rates)}) |", "|---|---|---|"]
    for m in methods:
        prow = paper.OUR_METHOD_TO_PAPER.get(m)
        pvals = ", ".join(f"{paper.TABLE1[prow][paper_dataset][r]['lpips']:.3f}/{paper.TABLE1[prow][paper_dataset][r]['dists']:.3f}"
                          for r in paper.RATES) if prow else "—"
        ovals = []
        for r in rates:
            v = per_dataset_rate[dataset][r].get(m)
            key = "after" if m != "none" else "before"
            ovals.append(f"{v['lpips_' + key]:.3f}/{v['dists_' + key]:.3f}" if v else "—")
        lines.append(f"| {ours_title.get(m, '+ ' + m)} | {pvals} | {', '.join(ovals)} |")
    return "\n".join(lines)


def per_rate_bars(per_dataset_rate: dict, dataset: str, methods: list[str], metric: str = "lpips"):
    rates = sorted(per_dataset_rate[dataset])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        key = f"{metric}_{'before' if m == 'none' else 'after'}"
        vals = [per_dataset_rate[dataset][r].get(m, {}).get(key, np.nan) for r in rates]
        ax.bar(np.arange(len(rates)) + i * w, vals, w, label=m, color=METHOD_COLORS.get(m))
    ax.set_xticks(np.arange(len(rates)) + 0.4 - w / 2, [f"rate {r}" for r in rates])
    ax.set_ylabel(f"{metric.upper()} (lower is better)")
    ax.legend(fontsize=7, ncol=3)
    return fig


def rate_perception_plot(sizes_mb: dict[str, float], per_rate: dict, uncompressed: dict | None,
                         methods=("none", "nifi"), metric: str = "lpips"):
    """LPIPS vs MB (log axis) from measured bytes, with the uncompressed scene as the reference point."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rates = sorted(sizes_mb, key=lambda r: sizes_mb[r])
    for m in methods:
        key = f"{metric}_{'before' if m == 'none' else 'after'}"
        ys = [per_rate[r][m][key] for r in rates if m in per_rate.get(r, {})]
        xs = [sizes_mb[r] for r in rates if m in per_rate.get(r, {})]
        ax.plot(xs, ys, marker="o", label="compressed" if m == "none" else m, color=METHOD_COLORS.get(m))
    if uncompressed:
        ax.scatter([uncompressed["mb"]], [uncompressed[metric]], marker="*", s=120, color=METHOD_COLORS["uncompressed"],
                   label="uncompressed 3DGS", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("size (MB, measured bytes, log scale)")
    ax.set_ylabel(f"{metric.upper()} (lower is better)")
    ax.legend(fontsize=8)
    return fig


def sweep_plot(xs, series: dict[str, list[float]], xlabel: str, title: str):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(xlabel=xlabel, title=title)
    ax.legend(fontsize=8)
    return fig

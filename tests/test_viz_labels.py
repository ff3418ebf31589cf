"""Figures and tables say what they show: Table 1 cells name LPIPS / DISTS, the t0 sweep has labelled axes and
reference lines, rate labels say that lambda 0.1 is the largest file."""
from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nifi_lib.evaluation import paper
from nifi_lib.viz.benchmark_plots import per_rate_bars, rate_perception_plot, sweep_plot, t0_sweep_plot, table1_side_by_side
from nifi_lib.viz.rates import pairs_sizes_mb, rate_label, rate_labels

PDR = {"embedded": {r: {"none": {"lpips_before": 0.4 + i, "dists_before": 0.2 + i},
                        "nifi": {"lpips_after": 0.3 + i, "dists_after": 0.1 + i}} for i, r in enumerate(["0.1", "1.0"])}}


def test_rate_labels_name_the_largest_file():
    sizes = paper.SIZES_MB["mipnerf360"]
    assert rate_label("0.1", sizes) == "λ=0.1 (largest file, 1.15 MB)"
    assert rate_label("1.0", sizes) == "λ=1.0 (smallest file, 0.22 MB)"
    assert rate_label("0.5", sizes) == "λ=0.5 (0.36 MB)"
    labels = rate_labels(["0.1", "0.5", "1.0"])      # no sizes: the order of the lambdas
    assert labels["0.1"] == "λ=0.1 (highest rate, largest file)" and labels["1.0"].endswith("smallest file)")
    assert "larger file" in rate_label("0.1")
    assert rate_label("0.5", {"0.5": 0.004}, ["0.5"]) == "λ=0.5 (4.0 kB)"


def test_pairs_sizes_from_manifests(tmp_path):
    import json

    for sc, b in (("a", 1_000_000), ("b", 3_000_000)):
        (tmp_path / "embedded" / sc).mkdir(parents=True)
        (tmp_path / "embedded" / sc / "manifest.json").write_text(json.dumps(
            {"levels": [{"label": "0.1", "bytes": b}, {"label": "1.0", "bytes": b // 10}, {"label": "0.5"}]}))
    assert pairs_sizes_mb(tmp_path) == pytest.approx({"0.1": 2.0, "1.0": 0.2})
    assert pairs_sizes_mb(tmp_path / "nothing") == {}


def test_table1_cells_say_lpips_and_dists():
    md = table1_side_by_side(PDR, "embedded", methods=["none", "nifi"], sizes_mb={"0.1": 0.05, "1.0": 0.01})
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert len(cols) == 1 + 3 + 2 and all(c.endswith("LPIPS / DISTS") for c in cols[1:])
    assert "λ=0.1 (largest file, 1.15 MB)" in cols[1] and "λ=0.1 (largest file, 0.05 MB)" in cols[4]
    nifi = next(line for line in lines if line.startswith("| + nifi"))
    assert "0.300 / 0.100" in nifi and "1.300 / 1.100" in nifi
    assert "LPIPS / DISTS" in lines[0]


def test_t0_sweep_plot_labels_and_reference_lines():
    sweep = {f"t0={t}": {"lpips_before": 0.5, "dists_before": 0.3, "lpips_after": 0.2 + t / 1e4,
                         "dists_after": 0.1 + t / 1e4} for t in (50, 199, 500)}
    sweep["t0=T (no noise)"] = {"lpips_before": 0.5, "dists_before": 0.3, "lpips_after": 0.35, "dists_after": 0.2}
    fig = t0_sweep_plot(sweep, [50, 199, 500])
    ax = fig.axes[0]
    assert "t0" in ax.get_xlabel() and "LPIPS" in ax.get_ylabel() and "DISTS" in ax.get_ylabel()
    labels = [l.get_label() for l in ax.get_lines()]
    assert "DISTS of the compressed input" in labels and "LPIPS of the compressed input" in labels
    assert any(l.startswith("DISTS, t0 = T") for l in labels) and any(l.startswith("LPIPS, t0 = T") for l in labels)
    hlines = {l.get_label(): l.get_ydata()[0] for l in ax.get_lines() if "compressed input" in l.get_label()}
    assert hlines["DISTS of the compressed input"] == 0.3
    plt.close(fig)
    del sweep["t0=T (no noise)"]       # the sweep may omit the t0 = T row: still a labelled plot
    fig = t0_sweep_plot(sweep, [50, 199, 500, 800])
    assert fig.axes[0].get_ylabel() and len(fig.axes[0].get_lines()[0].get_xdata()) == 3
    plt.close(fig)
    fig = sweep_plot([0.0, 1.0], {"LPIPS": [0.1, 0.2]}, "alpha", "t")
    assert fig.axes[0].get_xlabel() == "alpha" and "lower is better" in fig.axes[0].get_ylabel()
    plt.close(fig)


def test_rate_axes_say_which_file_is_largest():
    fig = per_rate_bars(PDR, "embedded", ["none", "nifi"], "dists", sizes_mb={"0.1": 0.05, "1.0": 0.01})
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[0] == "λ=0.1\n(largest file, 0.05 MB)" and "smallest file" in ticks[1]
    assert fig.axes[0].get_xlabel() and "DISTS" in fig.axes[0].get_ylabel()
    plt.close(fig)
    fig = rate_perception_plot({"0.1": 0.05, "1.0": 0.01}, PDR["embedded"], None, methods=("none", "nifi"))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(texts) == ["λ=0.1", "λ=1.0"] and "largest file" in fig.axes[0].get_xlabel()
    plt.close(fig)

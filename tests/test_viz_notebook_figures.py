"""Plots moved out of notebooks 04, 06, 07 and 08: what each figure draws (lines, images, crops) and which
files the notebook-08 helpers write."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from nifi_lib.paths import REPO_ROOT
from nifi_lib.viz.benchmark_plots import alpha_sweep_plot, rate_perception_plot
from nifi_lib.viz.restoration_plots import to_display
from nifi_lib.viz.style import FigureLog
from nifi_lib.viz.toy_plots import plot_gt_rates
from nifi_lib.viz.training_plots import before_after_grid, plot_run_comparison


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_alpha_sweep_plot_draws_both_metrics_against_alpha():
    asw = {0.0: {"lpips_after": 0.3, "dists_after": 0.2}, 0.7: {"lpips_after": 0.25, "dists_after": 0.18}}
    ax = alpha_sweep_plot(asw, 60).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"LPIPS", "DISTS"} and ax.get_xlabel() == "alpha" and "60 steps" in ax.get_title()
    assert list(lines["LPIPS"].get_xdata()) == [0.0, 0.7] and list(lines["DISTS"].get_ydata()) == [0.2, 0.18]


def test_run_comparison_puts_both_runs_on_one_step_axis():
    long = {"step": np.arange(1, 601, dtype=float), "loss_total": np.linspace(2.0, 1.0, 600)}
    short = {"step": np.arange(1, 121, dtype=float), "loss_total": np.full(120, 1.5)}
    fig = plot_run_comparison({"shipped (600 steps)": (long, [{"step": 200, "lpips": 0.2}, {"step": 600, "lpips": 0.1}]),
                               "this CPU run (120 steps)": (short, [{"step": 120, "lpips": 0.3}])})
    loss_ax, val_ax = fig.axes
    lines = {ln.get_label(): ln for ln in loss_ax.get_lines()}
    assert set(lines) == {"shipped (600 steps)", "this CPU run (120 steps)"}
    assert lines["this CPU run (120 steps)"].get_xdata()[-1] == 120 and lines["shipped (600 steps)"].get_xdata()[-1] == 600
    assert np.allclose(lines["this CPU run (120 steps)"].get_ydata(), 1.5)          # a constant stays constant
    vals = {ln.get_label(): ln for ln in val_ax.get_lines()}
    assert list(vals["shipped (600 steps)"].get_ydata()) == [0.2, 0.1] and "lpips" in val_ax.get_title()
    assert vals["shipped (600 steps)"].get_color() == lines["shipped (600 steps)"].get_color()


def test_before_after_grid_centre_crop():
    g = torch.Generator().manual_seed(0)
    rows = [{k: torch.rand(3, 64, 48, generator=g) for k in ("degraded", "base", "nifi", "clean")} | {"label": "v"}]
    full = before_after_grid(rows)
    assert full.axes[0].get_images()[0].get_array().shape == (64, 48, 3)
    fig = before_after_grid(rows, crop_frac=0.5)
    assert len(fig.axes) == 4 and fig.axes[0].get_ylabel() == "v"
    for ax, key in zip(fig.axes, ("degraded", "base", "nifi", "clean")):   # the centred 24 x 24 square of each
        shown = np.asarray(ax.get_images()[0].get_array())
        assert shown.shape == (24, 24, 3) and np.allclose(shown, to_display(rows[0][key][:, 20:44, 12:36]))


def test_plot_gt_rates_defaults_to_the_closed_form_curves():
    from nifi_lib.training.verify import gt_displacement_rates

    fig = plot_gt_rates(measured={"corrected": [(0.3, 0.5), (0.6, 0.2)]}, threshold=0.5)
    ax = fig.axes[0]
    curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 200]
    grid = np.linspace(0.02, 0.99, 200)
    assert len(curves) == 3
    for ln, (form, ys) in zip(curves, gt_displacement_rates(grid).items()):
        assert np.allclose(ln.get_xdata(), grid) and np.allclose(ln.get_ydata(), ys), form
    dots = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0.3, 0.6]]
    assert len(dots) == 1 and list(dots[0].get_ydata()) == [0.5, 0.2]


def test_rate_perception_plot_leaves_out_methods_without_results():
    per_rate = {"0.1": {"none": {"lpips_before": 0.2}, "nifi": {"lpips_after": 0.15}},
                "1.0": {"none": {"lpips_before": 0.4}, "nifi": {"lpips_after": 0.3}}}
    fig = rate_perception_plot({"0.1": 0.1, "1.0": 0.01}, per_rate, {"mb": 3.0, "lpips": 0.05},
                               methods=("none", "img2img", "nifi"))
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels == ["compressed", "nifi"]                              # no img2img: no empty line, no legend entry
    assert list(ax.get_lines()[1].get_ydata()) == [0.3, 0.15]            # sorted by size: 1.0 (0.01 MB) first
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["compressed", "nifi", "uncompressed 3DGS"]


def test_figure_log_saves_with_the_prefix_and_lists_the_paths(tmp_path):
    log = FigureLog("08_nb", tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    p = log.save(fig, "zoom")
    assert p == tmp_path / "08_nb_zoom.png" and p.stat().st_size > 100 and log.paths == [p]
    assert plt.fignum_exists(fig.number)                                  # left open: the notebook shows it
    log.paths.append(REPO_ROOT / "figures" / "08_nb_split.png")
    assert log.summary().splitlines() == ["figures written:", f"   {p}", "   figures/08_nb_split.png"]


def test_save_rate_figures_one_figure_per_rate(tmp_path):
    from test_viz_outputs import make_run

    from nifi_lib.evaluation.outputs import RunIndex
    from nifi_lib.viz.figures import export_rate_figures, save_rate_figures

    make_run(tmp_path / "run")
    index = RunIndex.from_dirs(tmp_path / "run" / "pairs", tmp_path / "run" / "outputs")
    log = FigureLog("nb", tmp_path / "figs")
    before = len(plt.get_fignums())
    fig3 = save_rate_figures(log, index, "fig3", ["bm3d", "nifi"])
    contact = save_rate_figures(log, index, "contact", ["bm3d"], max_views=2, close=True)
    assert list(fig3) == list(contact) == ["0.1", "1.0"]
    assert fig3["1.0"] == tmp_path / "figs" / "nb_fig3_1.0.png" and contact["0.1"] == tmp_path / "figs" / "nb_contact_rate_0.1.png"
    assert log.paths == [*fig3.values(), *contact.values()] and all(p.stat().st_size > 1000 for p in log.paths)
    assert len(plt.get_fignums()) == before + 2                            # the fig3 figures stay open, the sheets not
    with pytest.raises(ValueError, match="unknown rate figure"):
        save_rate_figures(log, index, "zoom")
    plt.close("all")
    out = export_rate_figures(index, "ex", ["nifi"], folder=tmp_path / "ex")
    assert out == {r: {"fig3": tmp_path / "ex" / f"ex_fig3_{r}.png", "contact": tmp_path / "ex" / f"ex_contact_rate_{r}.png"}
                   for r in ("0.1", "1.0")}
    assert all(p.is_file() for d in out.values() for p in d.values()) and plt.get_fignums() == []

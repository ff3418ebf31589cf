"""Notebooks 06/07 without DISTS (a machine without its VGG16 trunk): the tables, sweeps and plots show what was
scored and mark the rest, and a metric list without LPIPS is refused."""
import pytest

from nifi_lib.evaluation.benchmark import table1_orderings
from nifi_lib.experiments.paper_inputs import EvaluationInputs, InputsError, evaluation_inputs
from nifi_lib.viz.benchmark_plots import (alpha_sweep_plot, format_alpha_sweep, format_t0_sweep, t0_sweep_plot,
                                          table1_side_by_side)

ROW = {"lpips_before": 0.40, "lpips_after": 0.25}


def test_sweeps_and_tables_without_dists():
    sweep = {"t0=199": dict(ROW), "t0=500": {"lpips_before": 0.40, "lpips_after": 0.30}}
    text = format_t0_sweep(sweep)
    assert "LPIPS 0.4000 -> 0.2500" in text and "DISTS" not in text
    full = {"t0=199": {**ROW, "dists_before": 0.3, "dists_after": 0.2}}
    assert "DISTS 0.3000 -> 0.2000" in format_t0_sweep(full)
    ax = t0_sweep_plot(sweep, [199, 500]).axes[0]
    assert [ln.get_label() for ln in ax.get_lines()][0] == "LPIPS, NiFi at t0"
    assert not any("DISTS" in ln.get_label() for ln in ax.get_lines())
    alpha = {0.7: {"lpips_after": 0.2}}
    assert format_alpha_sweep(alpha) == "alpha=0.7: LPIPS 0.2000"
    assert [ln.get_label() for ln in alpha_sweep_plot(alpha, 2).axes[0].get_lines()] == ["LPIPS"]
    pdr = {"embedded": {"0.1": {"none": dict(ROW), "nifi": dict(ROW)}}}
    md = table1_side_by_side(pdr, "embedded", methods=("none", "nifi"))
    assert "| 0.400 / — |" in md and "| 0.250 / — |" in md
    rows = table1_orderings(pdr["embedded"], metrics=("lpips",))
    assert {r["metric"] for r in rows} == {"lpips"}
    import matplotlib.pyplot as plt

    plt.close("all")   # the figures of this test (other tests check that none is left open)


def test_perceptual_metrics_of_the_inputs_and_refusals(tmp_path):
    inp = EvaluationInputs(tmp_path, None, tmp_path, "embedded", None, "ck.pt", None, "bb",
                           metrics=("lpips", "psnr", "ssim"))
    assert inp.perceptual == ("lpips",)
    assert EvaluationInputs(tmp_path, None, tmp_path, "embedded", None, "ck.pt", None, "bb").perceptual == \
        ("lpips", "dists")
    with pytest.raises(InputsError, match="LPIPS is required"):
        evaluation_inputs(str(tmp_path), metrics=["dists", "psnr"])
    with pytest.raises(InputsError, match=r"unknown \['fid'\]"):
        evaluation_inputs(str(tmp_path), metrics=["lpips", "fid"])


def test_rate_perception_rows_without_dists():
    from nifi_lib.experiments.table1 import rate_perception_numbers, rate_perception_rows

    per_rate = {"0.1": {"none": dict(ROW), "nifi": {"lpips_after": 0.2}},
                "1.0": {"none": {"lpips_before": 0.2}, "nifi": {"lpips_after": 0.1}}}
    rows = rate_perception_rows({"0.1": 0.001, "1.0": 0.004}, per_rate, None)
    assert [r["dists_before"] for r in rows] == [None, None] and rows[0]["lpips_nifi"] == 0.2
    assert rate_perception_numbers(rows, None)["rate_0.1"]["dists_nifi"] is None


def test_dense_reference_scores_dists_only_when_asked(monkeypatch):
    """The rate-perception reference (notebook 06) builds DISTS only when the metrics name it: the H200 has no VGG16
    trunk, and the 2026-12-06 rehearsal failed there because it was built regardless."""
    import torch

    from nifi_lib.evaluation import rate
    from nifi_lib.metrics import metrics as M

    preds, gts = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    monkeypatch.setattr(M, "lpips", lambda a, b, net="alex": (a - b).abs().mean(dim=(1, 2, 3)))

    def no_dists(*a, **k):
        raise AssertionError("DISTS built although the metrics leave it out")

    monkeypatch.setattr(M, "dists", no_dists)
    only = rate.dense_scores(preds, gts, metrics=("lpips",))
    assert set(only) == {"lpips"} and only["lpips"] == pytest.approx(float((preds - gts).abs().mean()))
    ref = rate.mean_reference([1.0, 3.0], [only, {"lpips": 0.5}])
    assert ref == {"mb": 2.0, "lpips": pytest.approx((only["lpips"] + 0.5) / 2), "dists": None, "scenes": 2}
    monkeypatch.setattr(M, "dists", lambda a, b: torch.full((a.shape[0],), 0.25))
    both = rate.dense_scores(preds, gts)
    assert both["dists"] == 0.25
    assert rate.mean_reference([1.0], [both])["dists"] == 0.25
    assert rate.mean_reference([], []) is None

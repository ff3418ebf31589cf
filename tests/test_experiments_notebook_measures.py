"""What notebooks 02-07 measure on top of library results (moved out of the notebooks): the VAE round trip,
the Eq. 7 trace distances, the toy checks per sigma, the rate-perception rows, the high-frequency ratios and
the embedded views; each against an independent computation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import tiny_backbone
from nifi_lib.experiments import table1, toy_checks
from nifi_lib.experiments.ablations import high_frequency_energy, high_frequency_ratios
from nifi_lib.experiments.embedded import EMBEDDED_SCENES, embedded_image_paths, embedded_views, train_summary
from nifi_lib.experiments.latent_checks import trace_distances, trace_sweep, vae_reconstruction
from nifi_lib.training import verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ 02, 03
def test_vae_reconstruction_is_the_decoded_latent_mean_and_its_psnr():
    bb = tiny_backbone(seed=0)
    clean = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rec, db = vae_reconstruction(bb, clean)
    with torch.no_grad():   # independently: diffusers' VAE, the posterior mean, no scaling round trip
        ref = ((bb.vae.decode(bb.vae.encode(clean * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    assert rec.shape == clean.shape and torch.allclose(rec, ref, atol=1e-5)
    mse = ((ref - clean) ** 2).mean(dim=(1, 2, 3))
    assert db == pytest.approx(float((-10 * torch.log10(mse)).mean()), abs=1e-3)


def test_trace_sweep_and_distances():
    from nifi_lib.restoration.restorer import Restorer

    restorer = Restorer(tiny_backbone(seed=1), t0=199, adapter=None)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    traces = trace_sweep(restorer, image, [199, 700], seed=3)
    assert [tr["t0"] for tr in traces] == [199.0, 700.0]
    assert torch.equal(traces[1]["restored"], restorer.trace(image, t0=700, seed=3)["restored"])   # same seed
    d = trace_distances(image, traces)
    assert list(d) == ["vae_reconstruction_l1", "l1_restored_vs_input_t0_199", "l1_restored_vs_input_t0_700"]
    for t0, tr in zip((199, 700), traces):
        assert d[f"l1_restored_vs_input_t0_{t0}"] == pytest.approx(float((tr["restored"] - image).abs().mean()))
    assert d["vae_reconstruction_l1"] == pytest.approx(float((traces[0]["reconstruction"] - image).abs().mean()))
    assert d["l1_restored_vs_input_t0_199"] != d["l1_restored_vs_input_t0_700"]
    # a restorer on a GPU in bf16 returns its traces in bf16 on its device: measured in float32 beside the input
    half = [{**tr, "restored": tr["restored"].bfloat16(), "reconstruction": tr["reconstruction"].bfloat16()}
            for tr in traces]
    dh = trace_distances(image, half)
    assert dh["l1_restored_vs_input_t0_700"] == pytest.approx(
        float((half[1]["restored"].float() - image).abs().mean()), rel=1e-6)


def test_embedded_views_and_train_summary(tmp_path):
    scenes = sorted(p.name for p in EMBEDDED_SCENES.iterdir() if (p / "cameras.json").is_file())
    test = embedded_image_paths("test", per_scene=2)
    assert len(test) == 2 * len(scenes) and all(p.is_file() for p in test)
    assert [p.relative_to(EMBEDDED_SCENES).parts[0] for p in test] == [s for s in scenes for _ in range(2)]
    train = embedded_image_paths("train")
    assert len(train) > len(test) and not set(train) & set(embedded_image_paths("test"))
    assert embedded_image_paths("train", scenes=[scenes[0]]) == [p for p in train if p.is_relative_to(EMBEDDED_SCENES / scenes[0])]
    views = embedded_views("test", per_scene=1, scenes=scenes[:2])
    assert views.shape[:2] == (2, 3) and 0 <= float(views.min()) and float(views.max()) <= 1
    (tmp_path / "train_summary.json").write_text(json.dumps({"steps": 7}))
    (tmp_path / "best.pt").write_bytes(b"")
    assert train_summary(tmp_path) == train_summary(tmp_path / "best.pt") == {"steps": 7}


# ------------------------------------------------------------------------------------------------ 04
def test_toy_sweeps():
    steps = toy_checks.sweep(verify.toy_kl_step)
    assert [r["sigma"] for r in steps] == list(verify.TOY_SIGMAS)
    assert all(r["dist_real"][1] < r["dist_real"][0] for r in steps)       # Eq. 4 descent moves toward p_real
    modes = toy_checks.sweep(verify.surrogate_grad_check, ("none", "dmd"), seed=1)
    assert [r["normalize"] for r in modes] == ["none", "dmd"] and all(r["has_grad_fn"] for r in modes)
    assert modes[1]["max_abs_err"] == verify.surrogate_grad_check("dmd", seed=1)["max_abs_err"]   # kwargs pass through
    gt = toy_checks.gt_steps_by_form()
    assert list(gt) == ["corrected", "printed", "tsdsr"] and all(len(v) == len(verify.TOY_SIGMAS) for v in gt.values())
    assert all(r["dist_x"][1] < r["dist_x"][0] for r in gt["corrected"])   # ours pulls x^ toward x
    assert all(r["dist_x"][1] > r["dist_x"][0] for r in gt["printed"])     # the printed sign pushes it away
    measured = toy_checks.measured_gt_rates(("corrected", "tsdsr"), sigmas=(0.3, 0.6))
    closed = verify.gt_displacement_rates
    assert [s for s, _ in measured["tsdsr"]] == [0.3, 0.6]
    for form, pts in measured.items():
        for s, rate in pts:
            assert rate == pytest.approx(float(closed(s)[form]), rel=1e-6)


def test_toy_numbers():
    kl = [{"sigma": 0.3, "exact": (0.123456, 0.0), "mc": (0.12, 0.0)}]
    gt = {"printed": [{"sigma": 0.6, "dist_x": (1.0, 1.0123456)}]}
    flow = {"mean_dist_to_real": torch.tensor([2.0, 1.0, 0.05]), "stds": torch.tensor([0.6, 0.9, 1.0])}
    trade = [{"alpha": 0.7, "mse_to_x": 0.123456, "std_ratio": 0.98765}]
    n = toy_checks.toy_numbers(kl, gt, flow, trade)
    assert n["eq4_kl_grad_mu_exact_vs_mc"] == {"0.3": [0.1235, 0.12]}
    assert n["eq5_gt_dist_after_step"] == {"printed": {"0.6": 0.01235}}
    assert n["particle_flow_mean_dist"] == [2.0, pytest.approx(0.05)] and n["particle_flow_std_final"] == 1.0
    assert n["tradeoff"] == {"alpha=0.7": {"mse_to_x": 0.1235, "std_ratio": 0.9877}}


# ------------------------------------------------------------------------------------------------ 06
def _per_rate():
    def m(before, after=None, d_before=None, d_after=None):
        return {"lpips_before": before, "lpips_after": after, "dists_before": d_before, "dists_after": d_after}

    return {"0.1": {"none": m(0.2, d_before=0.1), "nifi": m(0.2, 0.15, 0.1, 0.08)},
            "0.5": {"none": m(0.3, d_before=0.15), "nifi": m(0.3, 0.25, 0.15, 0.1)},
            "1.0": {"none": m(0.4, d_before=0.2)}}


def test_rate_perception_rows_and_numbers():
    per_rate = _per_rate()
    sizes = table1.evaluated_sizes({"0.1": 0.1, "0.5": 0.03, "1.0": 0.01, "2.0": 0.001}, per_rate)
    assert sizes == {"0.1": 0.1, "0.5": 0.03, "1.0": 0.01}                # only the rates the benchmark scored
    rows = table1.rate_perception_rows(sizes, per_rate, {"mb": 3.0, "lpips": 0.05})
    assert [r["rate"] for r in rows] == ["0.1", "0.5"]                    # rate 1.0 has no NiFi result
    r = rows[1]
    assert r["kb"] == pytest.approx(30.0) and r["x_smaller"] == pytest.approx(100.0)
    assert (r["lpips_before"], r["lpips_nifi"], r["dists_before"], r["dists_nifi"]) == (0.3, 0.25, 0.15, 0.1)
    # LPIPS 0.25 lies halfway (linearly in log-size) between the codec's 0.03 MB (0.3) and 0.1 MB (0.2) points
    assert r["equal_quality_ratio"] == pytest.approx(math.sqrt(0.03 * 0.1) / 0.03)
    assert rows[0]["equal_quality_ratio"] is None                          # better than the whole codec curve
    n = table1.rate_perception_numbers(rows, {"mb": 3.0, "lpips": 0.05})
    assert n["uncompressed_mb"] == 3.0 and n["uncompressed_lpips"] == 0.05 and set(n) == {
        "uncompressed_mb", "uncompressed_lpips", "rate_0.1", "rate_0.5"}
    assert n["rate_0.5"] == {"kb": pytest.approx(30.0), "lpips_before": 0.3, "lpips_nifi": 0.25, "dists_before": 0.15,
                             "dists_nifi": 0.1}


def test_orderings_summary():
    orderings = [{"holds": True, "rate": "1.0"}, {"holds": False, "rate": "0.1"}, {"holds": True, "rate": "0.5"}]
    assert table1.orderings_summary(orderings) == {"orderings_holding": "2/3", "orderings_failing": [orderings[1]]}
    assert table1.orderings_summary([]) == {"orderings_holding": "0/0", "orderings_failing": []}


# ------------------------------------------------------------------------------------------------ 07
def test_high_frequency_ratios():
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(3):
        clean = torch.rand(3, 12, 12, generator=g) * 0.5
        rows.append({"clean": clean, "degraded": clean * 2, "base": torch.full_like(clean, 0.3), "nifi": clean.clone(),
                     "label": "a / rate 1.0 / v"})
    hf = high_frequency_ratios(rows)
    assert list(hf) == ["degraded", "base", "nifi"]
    assert hf["degraded"] == pytest.approx(4.0) and hf["nifi"] == pytest.approx(1.0) and hf["base"] == pytest.approx(0.0)
    rows[0]["nifi"] = rows[0]["clean"] * 1.5                               # one row with 2.25x the energy
    assert high_frequency_ratios(rows, keys=("nifi",))["nifi"] == pytest.approx((2.25 + 1 + 1) / 3)
    e = high_frequency_energy(torch.stack([r["clean"] for r in rows]))
    assert e.shape == (3,) and bool((e > 0).all())

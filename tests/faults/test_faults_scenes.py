"""Bad scenes through ``nifi synthesize --ply`` and ``nifi pairs``: PLYs with missing properties, NaN/inf
attributes or zero Gaussians, camera files naming missing images, damaged level bitstreams. Each fails with a
one-line error naming the file and the problem; the artifact and pair folders of earlier runs stay
byte-identical and no staging folder is left behind."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from conftest import SYNTH_ARGS
from faultkit import assert_cli_error, copytree, leftovers, snapshot


def _vertices(scene: Path) -> np.ndarray:
    return PlyData.read(str(scene / "point_cloud.ply"))["vertex"].data


def _write_ply(path: Path, arr: np.ndarray) -> Path:
    PlyData([PlyElement.describe(arr, "vertex")], text=False, byte_order="<").write(str(path))
    return path


def ply_missing_properties(scene: Path, path: Path) -> Path:
    v = _vertices(scene)
    keep = [n for n in v.dtype.names if not n.startswith("scale_")]
    arr = np.empty(len(v), dtype=[(n, "<f4") for n in keep])
    for n in keep:
        arr[n] = v[n]
    return _write_ply(path, arr)


def ply_nan(scene: Path, path: Path) -> Path:
    v = _vertices(scene).copy()
    v["opacity"][5] = np.nan
    return _write_ply(path, v)


def ply_inf(scene: Path, path: Path) -> Path:
    v = _vertices(scene).copy()
    v["x"][3] = np.inf
    return _write_ply(path, v)


def ply_zero_gaussians(scene: Path, path: Path) -> Path:
    return _write_ply(path, np.empty(0, dtype=_vertices(scene).dtype))


PLY_DEFECTS = {
    "missing_properties": (ply_missing_properties, ["missing vertex properties", "scale_0"]),
    "nan_attribute": (ply_nan, ["NaN/inf"]),
    "inf_attribute": (ply_inf, ["NaN/inf"]),
    "zero_gaussians": (ply_zero_gaussians, ["zero vertices"]),
}


@pytest.mark.parametrize("defect", list(PLY_DEFECTS))
def test_synthesize_refuses_bad_ply(defect, toy_scene, toy_artifacts, nifi, tmp_path):
    """`nifi synthesize --ply bad.ply --overwrite` over a complete earlier synthesis: refused while validating,
    before the staging folder exists; full.ply, the level files and synth.json are unchanged."""
    make, words = PLY_DEFECTS[defect]
    bad = make(toy_scene, tmp_path / "bad.ply")
    art = copytree(toy_artifacts["art"], tmp_path / "art" / "toy")
    before = snapshot(art)
    res = nifi("synthesize", "--scene", toy_scene, "--ply", bad, "--out", art, "--overwrite", *SYNTH_ARGS)
    assert_cli_error(res, "synthesize", str(bad), *words)
    assert snapshot(art) == before and not leftovers(art)
    res = nifi("synthesize", "--scene", toy_scene, "--ply", bad, "--out", tmp_path / "fresh", *SYNTH_ARGS)
    assert_cli_error(res, "synthesize", str(bad), *words)
    assert not (tmp_path / "fresh").exists() and not leftovers(tmp_path / "fresh")


def test_synthesize_refuses_camera_naming_missing_image(toy_scene, toy_artifacts, nifi, tmp_path):
    scene = copytree(toy_scene, tmp_path / "toy")
    (scene / "images" / "view_005.png").unlink()
    art = copytree(toy_artifacts["art"], tmp_path / "art" / "toy")
    before = snapshot(art)
    res = nifi("synthesize", "--scene", scene, "--out", art, "--overwrite", *SYNTH_ARGS)
    assert_cli_error(res, "synthesize", "view_005.png", "not found")
    assert snapshot(art) == before and not leftovers(art)


def _artifacts_of(scene: Path, art_src: Path, dst: Path) -> Path:
    """A copy of the artifacts whose synth.json points at ``scene`` (a copy we may damage)."""
    art = copytree(art_src, dst)
    meta = json.loads((art / "synth.json").read_text())
    meta["source"] = str(scene)
    (art / "synth.json").write_text(json.dumps(meta, indent=2))
    return art


def test_pairs_refuses_camera_naming_missing_image(toy_scene, toy_artifacts, nifi, tmp_path):
    """`nifi pairs` re-reads the source scene: a view whose image vanished since `nifi synthesize` is named
    before any frame is rendered; the scene's pair folder of the earlier run is unchanged."""
    scene = copytree(toy_scene, tmp_path / "toy")
    art = _artifacts_of(scene, toy_artifacts["art"], tmp_path / "art" / "toy")
    (scene / "images" / "view_008.png").unlink()        # view 8 is a test view (llffhold 8)
    pairs = copytree(toy_artifacts["pairs"], tmp_path / "pairs" / "toy")
    before = snapshot(pairs)
    res = nifi("pairs", "--scene", art, "--split", "test", "--out", pairs, "--device", "cpu")
    assert_cli_error(res, "pairs", "view_008.png", "not found")
    assert snapshot(pairs) == before and not leftovers(pairs)


def _bitflip(art: Path) -> Path:
    f = art / "level_1.nifigs"
    data = bytearray(f.read_bytes())
    data[40] ^= 1
    f.write_bytes(bytes(data))
    return f


def _truncate(art: Path) -> Path:
    f = art / "level_0.nifigs"
    f.write_bytes(f.read_bytes()[:-7])
    return f


LEVEL_DEFECTS = {"bitflip": (_bitflip, ["level_1.nifigs"]),
                 "truncated": (_truncate, ["not a complete synthesis", "level_0.nifigs", "truncated"])}


@pytest.mark.parametrize("defect", list(LEVEL_DEFECTS))
def test_pairs_refuses_damaged_level(defect, toy_artifacts, nifi, tmp_path):
    """`nifi pairs --overwrite` from artifacts with a damaged bitstream: refused while decoding the levels
    (or while checking synth.json's sizes), before the first pair is written."""
    make, words = LEVEL_DEFECTS[defect]
    art = copytree(toy_artifacts["art"], tmp_path / "art" / "toy")
    make(art)
    pairs = copytree(toy_artifacts["pairs"], tmp_path / "pairs" / "toy")
    before = snapshot(pairs)
    res = nifi("pairs", "--scene", art, "--split", "test", "--out", pairs, "--device", "cpu", "--overwrite")
    assert_cli_error(res, "pairs", str(art), *words)
    assert snapshot(pairs) == before and not leftovers(pairs)
    shutil.rmtree(pairs)
    res = nifi("pairs", "--scene", art, "--split", "test", "--out", pairs, "--device", "cpu")
    assert_cli_error(res, "pairs", str(art), *words)
    assert not pairs.exists() and not leftovers(pairs)

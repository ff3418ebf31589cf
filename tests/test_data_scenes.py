"""Scene layouts (nerfstudio/DL3DV, COLMAP, Blender, embedded, images-only) through the one detector and
load_scene, and the DL3DV ingest."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nifi_lib.data.colmap import ColmapCamera, ColmapImage, rotmat_to_qvec, write_model
from nifi_lib.data.dl3dv import DL3DVError, find_source_scenes, ingest_dl3dv, read_index
from nifi_lib.data.scenes import SceneError, detect_layout, find_scenes, load_scene, load_scene_points
from nifi_lib.gs.cameras import Camera, look_at, write_scene_cameras

HASH1, HASH2, HASH3 = "a" * 64, "0123456789abcdef" * 4, "f" * 64


def ring_cameras(n: int = 10, w: int = 64, h: int = 48) -> list[Camera]:
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = (3 * math.cos(a), 3 * math.sin(a), 0.5 + 0.1 * i)
        cams.append(Camera(f"frame_{i + 1:05d}.png", w, h, 50.0 + i, 52.0 + i, w / 2 + 1.5, h / 2 - 2.0,
                           look_at(eye, (0, 0, 0)), None))
    return cams


def save_png(path: Path, w: int, h: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def write_transforms_gl(root: Path, cams: list[Camera], image_dir: str = "images") -> None:
    """nerfstudio transforms.json written here: camera-to-world with OpenGL axes (y up, z backward)."""
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = []
    for c in cams:
        c2w_cv = np.linalg.inv(c.world_to_cam.double().numpy())
        frames.append({"file_path": f"{image_dir}/{c.name}", "transform_matrix": (c2w_cv @ flip).tolist(),
                       "fl_x": c.fx, "fl_y": c.fy, "cx": c.cx, "cy": c.cy, "w": c.width, "h": c.height})
    (root / "transforms.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "transforms.json").write_text(json.dumps({"camera_model": "OPENCV", "k1": 0.0, "frames": frames[::-1]}))


def write_colmap(root: Path, cams: list[Camera], sparse: str = "sparse/0") -> None:
    ccams, imgs = {}, {}
    for i, c in enumerate(cams, 1):
        ccams[i] = ColmapCamera(i, "PINHOLE", c.width, c.height, np.array([c.fx, c.fy, c.cx, c.cy]))
        m = c.world_to_cam.double().numpy()
        imgs[i] = ColmapImage(i, rotmat_to_qvec(m[:3, :3]), m[:3, 3], i, c.name)
    write_model(root / sparse, ccams, imgs, ext=".bin")


def assert_same_cameras(got: list[Camera], want: list[Camera], scale: float = 1.0):
    assert [c.name for c in got] == [c.name for c in want]
    for g, w in zip(got, want):
        assert (g.width, g.height) == (round(w.width * scale), round(w.height * scale))
        np.testing.assert_allclose([g.fx, g.fy, g.cx, g.cy], np.array([w.fx, w.fy, w.cx, w.cy]) * scale, rtol=1e-6)
        torch.testing.assert_close(g.world_to_cam, w.world_to_cam, atol=1e-5, rtol=0)


def test_nerfstudio_dl3dv_layout_full_res_intrinsics_with_images_4(tmp_path):
    cams = ring_cameras(10, 160, 120)
    root = tmp_path / HASH1
    write_transforms_gl(root, cams)                      # intrinsics for 160x120, paths "images/..."
    for c in cams:
        save_png(root / "images_4" / c.name, 40, 30)     # only the 4x downscaled copies exist
    assert detect_layout(root) == "nerfstudio"
    got = load_scene(root, split="all")
    assert_same_cameras(got, cams, scale=0.25)
    assert got[0].image_path == root / "images_4" / "frame_00001.png"
    # the 3DGS split: test = every 8th view of the name-sorted list
    assert [c.name for c in load_scene(root, split="test")] == ["frame_00001.png", "frame_00009.png"]
    assert len(load_scene(root, split="train")) == 8
    # a point of the scene projects identically through the original and the re-read camera
    p = torch.tensor([[0.2, -0.1, 0.3]])
    uv_want, _ = cams[3].scaled(0.25).project(p)
    uv_got, _ = got[3].project(p)
    torch.testing.assert_close(uv_got, uv_want, atol=1e-4, rtol=0)
    with pytest.raises(SceneError, match=r"10 of 10 images not found.*images_2/"):
        load_scene(root, downscale=2)


def test_load_scene_dispatches_on_every_layout(tmp_path):
    cams = ring_cameras(9)
    # COLMAP
    col = tmp_path / "colmap_scene"
    write_colmap(col, cams)
    for c in cams:
        save_png(col / "images" / c.name, c.width, c.height)
    assert detect_layout(col) == "colmap"
    assert_same_cameras(load_scene(col, split="all"), cams)
    assert [c.name for c in load_scene(col, split="test", llffhold=4)] == [cams[i].name for i in (0, 4, 8)]
    assert load_scene_points(col) is None  # no points3D entries
    # embedded cameras.json
    emb = tmp_path / "embedded"
    for c in cams:
        save_png(emb / "images" / c.name, c.width, c.height)
        c.image_path = emb / "images" / c.name
    write_scene_cameras(emb / "cameras.json", cams)
    assert detect_layout(emb) == "embedded"
    assert_same_cameras(load_scene(emb, split="all"), cams)
    # Blender (own split files)
    bl = tmp_path / "blender"
    for split, sub in (("train", cams[:6]), ("test", cams[6:])):
        frames = []
        for c in sub:
            save_png(bl / split / c.name, c.width, c.height)
            c2w = np.linalg.inv(c.world_to_cam.double().numpy()) @ np.diag([1.0, -1, -1, 1])
            frames.append({"file_path": f"./{split}/{Path(c.name).stem}", "transform_matrix": c2w.tolist()})
        (bl / f"transforms_{split}.json").write_text(json.dumps(
            {"camera_angle_x": 2 * math.atan(32 / 50.0), "frames": frames}))
    assert detect_layout(bl) == "blender"
    assert len(load_scene(bl, "train")) == 6 and len(load_scene(bl, "test")) == 3 and len(load_scene(bl, "all")) == 9
    # unknown
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="unknown scene layout"):
        load_scene(tmp_path / "empty")
    assert find_scenes(tmp_path) == [bl, col, emb]


def test_one_layout_detector_and_one_scene_error(tmp_path):
    """detect_layout is the only detector: synthesis (with the images-only layout) and ``nifi fit`` use it and
    raise its SceneError, which names the folder."""
    from nifi_lib.errors import NifiError
    from nifi_lib.synthesis import scene as synthesis_scene

    layouts = ("blender", "colmap", "embedded", "images", "nerfstudio")
    d = {layout: tmp_path / f"{layout}_scene" for layout in layouts}  # (a folder named colmap/ is a COLMAP root)
    for layout, name in (("blender", "transforms_train.json"), ("embedded", "cameras.json"),
                         ("nerfstudio", "transforms.json")):
        d[layout].mkdir()
        (d[layout] / name).write_text("{}")
    write_colmap(d["colmap"], ring_cameras(3))
    save_png(d["images"] / "images" / "a.png", 8, 8)
    save_png(d["images"] / "images_2" / "a.png", 4, 4)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("not a scene")
    for layout in layouts:
        assert detect_layout(d[layout], allow_images=True) == layout
        assert synthesis_scene.open_scene(d[layout]).format == layout
    assert detect_layout(d["images"], allow_images=True, downscale=2) == "images"
    assert find_scenes(tmp_path, allow_images=True) == synthesis_scene.find_scenes(tmp_path) == list(d.values())
    assert find_scenes(tmp_path) == [d[n] for n in layouts if n != "images"]
    assert synthesis_scene.SceneError is SceneError and issubclass(SceneError, (NifiError, ValueError))
    for call in (lambda: detect_layout(odd, allow_images=True), lambda: load_scene(odd),
                 lambda: synthesis_scene.open_scene(odd)):
        with pytest.raises(SceneError, match=rf"^{re.escape(str(odd))}: unknown scene layout"):
            call()
    with pytest.raises(SceneError, match="unknown scene layout"):  # images-only only where it is asked for
        detect_layout(d["images"])
    with pytest.raises(SceneError, match="images only"):
        synthesis_scene.open_scene(d["images"], require_cameras=True)


def build_dl3dv_source(src: Path) -> list[Camera]:
    cams = ring_cameras(9, 160, 120)
    a = src / "1K" / HASH1                                # DL3DV-ALL-960P: images_4 + transforms.json
    write_transforms_gl(a, cams)
    for c in cams:
        save_png(a / "images_4" / c.name, 40, 30)
    b = src / "1K" / HASH2 / "colmap"                     # release with COLMAP below colmap/
    write_colmap(b, cams)
    for c in cams:
        save_png(b / "images_4" / c.name, 40, 30)
    write_transforms_gl(b, cams)
    c3 = src / "2K" / HASH3                               # broken: an image is missing
    write_transforms_gl(c3, cams)
    for c in cams[1:]:
        save_png(c3 / "images_4" / c.name, 40, 30)
    return cams


def test_dl3dv_ingest_symlink_index_and_rerun(tmp_path):
    cams = build_dl3dv_source(tmp_path / "subset")
    assert [(n, lay) for n, _, lay in find_source_scenes(tmp_path / "subset")] == [
        (HASH2, "colmap"), (HASH1, "nerfstudio"), (HASH3, "nerfstudio")]
    out = tmp_path / "data"
    index = ingest_dl3dv(tmp_path / "subset", out, progress=False)
    assert [s["scene"] for s in index["scenes"]] == [HASH2, HASH1]
    assert [s["scene"] for s in index["skipped"]] == [HASH3] and "1 of 9 images" in index["skipped"][0]["reason"]
    assert str(tmp_path / "subset" / "2K" / HASH3 / "transforms.json") in index["skipped"][0]["reason"]
    assert read_index(out / "dl3dv")["num_scenes"] == 2
    s1, s2 = out / "dl3dv" / HASH1, out / "dl3dv" / HASH2
    assert (s1 / "images_4").is_symlink() and (s1 / "transforms.json").is_file()
    assert (s2 / "sparse" / "0" / "images.bin").is_file() and (s2 / "images_4").is_symlink()
    assert index["scenes"][1]["num_images"] == 9 and index["scenes"][1]["width"] == 40
    assert_same_cameras(load_scene(s1, split="all"), cams, scale=0.25)
    assert_same_cameras(load_scene(s2, split="all"), cams, scale=0.25)  # COLMAP wins over transforms.json
    assert not list((out / "dl3dv").glob(".nifi-ingest-*")) and not (out / "dl3dv" / HASH3).exists()
    # re-run: complete scenes are kept as they are
    before = (s1 / ".nifi_complete.json").stat().st_mtime_ns
    ingest_dl3dv(tmp_path / "subset", out, progress=False)
    assert (s1 / ".nifi_complete.json").stat().st_mtime_ns == before
    # copy mode makes independent folders
    index = ingest_dl3dv(tmp_path / "subset", tmp_path / "copy", mode="copy", limit=1, progress=False)
    assert index["num_scenes"] == 1
    d = tmp_path / "copy" / "dl3dv" / HASH2 / "images_4"
    assert d.is_dir() and not d.is_symlink() and len(list(d.iterdir())) == 9


def test_dl3dv_cli_and_errors(tmp_path, capsys, monkeypatch):
    import nifi_lib.cli
    from nifi_lib.cli import main

    monkeypatch.setattr(nifi_lib.cli, "COMMAND_MODULES", ["nifi_lib.data.cli"])  # only this area's commands

    build_dl3dv_source(tmp_path / "subset")
    rc = main(["download", "--dataset", "dl3dv", "--out", str(tmp_path / "d"), "--dl3dv_source",
               str(tmp_path / "subset"), "--no_progress"])
    captured = capsys.readouterr()
    assert rc == 0 and "DL3DV: 2 scene(s)" in captured.out and f"skipped {HASH3}" in captured.err
    rc = main(["download", "--dataset", "dl3dv", "--out", str(tmp_path / "d")])
    assert rc == 2 and "--dl3dv_source" in capsys.readouterr().err
    with pytest.raises(DL3DVError, match="huggingface-cli download"):
        ingest_dl3dv(tmp_path / "nope", tmp_path / "d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DL3DVError, match="no DL3DV scene found"):
        ingest_dl3dv(tmp_path / "empty", tmp_path / "d")

"""Cameras: projection, NeRF-synthetic reading (OpenGL -> OpenCV), cameras.json, splits, image loading."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nifi_lib.gs.cameras import (Camera, CameraError, load_camera_images, look_at, read_blender_scene,
                                 read_scene_cameras, split_views, write_scene_cameras)
from nifi_lib.paths import REPO_ROOT

LEGO = REPO_ROOT.parent / "shared" / "scenes" / "nerf_synthetic_lego_200"


def _make_blender_scene(root: Path, n: int = 3, size=(12, 10), angle_x: float = 0.8) -> list[list[list[float]]]:
    (root / "train").mkdir(parents=True)
    frames, mats = [], []
    for i in range(n):
        # camera i at (0, 0, 3 + i) in OpenGL convention looking down -z (identity rotation)
        c2w = np.eye(4)
        c2w[2, 3] = 3.0 + i
        mats.append(c2w.tolist())
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": c2w.tolist()})
        rgba = np.zeros((size[1], size[0], 4), np.uint8)
        rgba[..., 0] = 200
        rgba[..., 3] = 0 if i == 0 else 255  # view 0 fully transparent
        rgba[0, 0, 3] = 128
        Image.fromarray(rgba, "RGBA").save(root / "train" / f"r_{i}.png")
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))
    return mats


def test_read_blender_scene_converts_opengl_to_opencv(tmp_path):
    _make_blender_scene(tmp_path)
    cams = read_blender_scene(tmp_path, "train")
    assert len(cams) == 3
    c = cams[1]
    assert (c.width, c.height) == (12, 10)
    assert c.fx == pytest.approx(0.5 * 12 / math.tan(0.4)) and c.fy == c.fx
    assert (c.cx, c.cy) == (6.0, 5.0)
    assert c.image_path == (tmp_path / "train" / "r_1.png").resolve()
    torch.testing.assert_close(c.camera_center, torch.tensor([0.0, 0.0, 4.0]))
    # OpenGL camera looks down -z with y up: the world point (0.5, 0.5, 0) is 4 in front, up and right
    uv, depth = c.project(torch.tensor([[0.5, 0.5, 0.0]]))
    assert depth.item() == pytest.approx(4.0)
    assert uv[0, 0].item() == pytest.approx(6.0 + c.fx * 0.5 / 4.0)  # right = larger u
    assert uv[0, 1].item() == pytest.approx(5.0 - c.fy * 0.5 / 4.0)  # up = smaller v (y down)
    torch.testing.assert_close(c.intrinsics_matrix(), torch.tensor([[c.fx, 0, 6.0], [0, c.fy, 5.0], [0, 0, 1.0]]))


def test_read_blender_scene_errors(tmp_path):
    with pytest.raises(CameraError, match="transforms_train.json.*not found"):
        read_blender_scene(tmp_path, "train")
    _make_blender_scene(tmp_path)
    (tmp_path / "train" / "r_2.png").unlink()
    with pytest.raises(CameraError, match=r"transforms_train\.json.*missing.*r_2\.png"):
        read_blender_scene(tmp_path, "train")
    (tmp_path / "transforms_test.json").write_text("{not json")
    with pytest.raises(CameraError, match="transforms_test.json"):
        read_blender_scene(tmp_path, "test")


def test_load_camera_images_composites_rgba_on_background(tmp_path):
    _make_blender_scene(tmp_path)
    cams = read_blender_scene(tmp_path, "train")
    imgs = load_camera_images(cams)  # white background
    assert imgs.shape == (3, 3, 10, 12) and imgs.dtype == torch.float32
    torch.testing.assert_close(imgs[0, :, 5, 5], torch.ones(3))  # transparent -> white
    torch.testing.assert_close(imgs[1, :, 5, 5], torch.tensor([200 / 255, 0.0, 0.0]))
    a = 128 / 255
    torch.testing.assert_close(imgs[0, :, 0, 0], torch.tensor([200 / 255 * a + 1 - a, 1 - a, 1 - a]))
    black = load_camera_images(cams[:1], background=(0.0, 0.0, 0.0))
    torch.testing.assert_close(black[0, :, 5, 5], torch.zeros(3))


def test_scene_cameras_json_round_trip(tmp_path):
    (tmp_path / "images").mkdir()
    cams = []
    for i in range(3):
        p = tmp_path / "images" / f"{i:03d}.png"
        Image.fromarray(np.full((8, 6, 3), 40 * i, np.uint8)).save(p)
        cams.append(Camera(f"{i:03d}", 6, 8, 7.0 + i, 7.5, 3.0, 4.0, look_at((3.0, i, 1.0), (0, 0, 0)), p))
    write_scene_cameras(tmp_path / "cameras.json", cams)
    raw = json.loads((tmp_path / "cameras.json").read_text())
    assert raw[1]["image_path"] == "images/001.png"  # relative to the json
    back = read_scene_cameras(tmp_path / "cameras.json")
    for a, b in zip(cams, back):
        assert (a.name, a.width, a.height, a.fx, a.fy, a.cx, a.cy) == (b.name, b.width, b.height, b.fx, b.fy, b.cx,
                                                                      b.cy)
        assert torch.equal(a.world_to_cam, b.world_to_cam)
        assert b.image_path.resolve() == a.image_path.resolve()
    imgs = load_camera_images(back)
    assert imgs.shape == (3, 3, 8, 6) and imgs[2].max().item() == pytest.approx(80 / 255)
    (tmp_path / "images" / "002.png").unlink()
    with pytest.raises(CameraError, match=r"cameras\.json.*002"):
        read_scene_cameras(tmp_path)


def test_look_at_points_the_camera_at_the_target():
    w2c = look_at((2.0, -3.0, 1.5), (0.2, 0.1, 0.0))
    cam = Camera("c", 20, 20, 10, 10, 10, 10, w2c)
    uv, z = cam.project(torch.tensor([[0.2, 0.1, 0.0], [0.2, 0.1, 1.0]]))
    torch.testing.assert_close(uv[0], torch.tensor([10.0, 10.0]))
    assert z[0] > 0 and uv[1, 1] < 10  # world up appears above the centre (smaller v)
    r = w2c[:3, :3]
    torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.det(r).item() == pytest.approx(1.0, abs=1e-6)


def test_split_views():
    cams = list(range(20))
    assert split_views(cams, "test") == [0, 8, 16]
    assert split_views(cams, "train") == [c for c in cams if c % 8]
    assert split_views(cams, "all") == cams
    assert split_views(cams, "test", llffhold=5) == [0, 5, 10, 15]
    with pytest.raises(ValueError):
        split_views(cams, "val")


@pytest.mark.skipif(not LEGO.is_dir(), reason=f"shared scene {LEGO} is absent")
def test_read_lego_200():
    meta = json.loads((LEGO / "transforms_train.json").read_text())
    train = read_blender_scene(LEGO, "train")
    test = read_blender_scene(LEGO, "test")
    assert len(train) == 100 and len(test) == 25
    c = train[0]
    assert (c.width, c.height) == (200, 200)
    assert c.fx == pytest.approx(0.5 * 200 / math.tan(0.5 * meta["camera_angle_x"]))
    # every camera looks roughly at the origin (the object)
    for cam in train[:10]:
        uv, z = cam.project(torch.zeros(1, 3))
        assert z.item() > 0 and (uv - 100).abs().max().item() < 30
    imgs = load_camera_images(train[:2])
    assert imgs.shape == (2, 3, 200, 200) and imgs[:, :, 0, 0].min().item() == pytest.approx(1.0)

"""COLMAP readers: a random scene written as text (colmap.py writer) and binary (an independent writer
here, from the documented struct layout), read back; cameras are checked by reprojecting the 3D points
onto the stored 2D observations."""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from nifi_lib.data import colmap as cm
from nifi_lib.data.colmap import ColmapCamera, ColmapError, ColmapImage, ColmapPoints, read_colmap_scene

MODELS = [("SIMPLE_PINHOLE", 0), ("PINHOLE", 1), ("SIMPLE_RADIAL", 2), ("RADIAL", 3), ("OPENCV", 4)]


def random_scene(seed: int = 0, n_images: int = 7, n_points: int = 60):
    """Cameras of every pinhole-like model (zero distortion), images looking at a point cloud, observations
    computed here with scipy rotations (x_cam = R x + t, u = fx x/z + cx)."""
    rng = np.random.default_rng(seed)
    cams, truth = {}, {}
    for cid, (model, _) in enumerate(MODELS, start=1):
        w, h = int(rng.integers(40, 70)), int(rng.integers(30, 50))
        fx, fy = rng.uniform(30, 60), rng.uniform(30, 60)
        cx, cy = w / 2 + rng.uniform(-3, 3), h / 2 + rng.uniform(-3, 3)
        if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
            fy = fx
        params = {"SIMPLE_PINHOLE": [fx, cx, cy], "PINHOLE": [fx, fy, cx, cy], "SIMPLE_RADIAL": [fx, cx, cy, 0.0],
                  "RADIAL": [fx, cx, cy, 0.0, 0.0], "OPENCV": [fx, fy, cx, cy, 0, 0, 0, 0]}[model]
        cams[cid] = ColmapCamera(cid, model, w, h, np.array(params, float))
        truth[cid] = (fx, fy, cx, cy)
    xyz = rng.normal(size=(n_points, 3)) * 0.5
    images, obs_tracks = {}, [[] for _ in range(n_points)]
    for k in range(n_images):
        iid = 10 + 3 * k                                   # non-contiguous ids
        rot = Rotation.random(random_state=int(rng.integers(1 << 30)))
        r = rot.as_matrix()
        center = -r.T @ np.array([0, 0, 4.0]) + rng.normal(size=3) * 0.1  # looks at the origin from ~4 units
        t = -r @ center
        cid = k % len(MODELS) + 1
        fx, fy, cx, cy = truth[cid]
        pc = xyz @ r.T + t
        assert (pc[:, 2] > 1).all()
        uv = np.stack([fx * pc[:, 0] / pc[:, 2] + cx, fy * pc[:, 1] / pc[:, 2] + cy], 1)
        sel = rng.permutation(n_points)[: n_points // 2]
        pids = np.where(rng.random(len(sel)) < 0.8, sel + 1000, -1)  # some 2D points without a 3D point
        for j, (p, pid) in enumerate(zip(sel, pids)):
            if pid >= 0:
                obs_tracks[p].append((iid, j))
        qx, qy, qz, qw = rot.as_quat()
        name = f"view_{(n_images - k):03d}.png"             # name order differs from id order
        images[iid] = ColmapImage(iid, np.array([qw, qx, qy, qz]), t, cid, name, uv[sel], pids.astype(np.int64))
    points = ColmapPoints(np.arange(n_points, dtype=np.int64) + 1000, xyz, rng.integers(0, 256, (n_points, 3)).astype(np.uint8),
                          rng.random(n_points), [np.array(tr, np.int32).reshape(-1, 2) for tr in obs_tracks])
    return cams, images, points


def write_binary_independent(folder: Path, cams, images, points) -> None:
    """cameras.bin / images.bin / points3D.bin from the COLMAP documentation, with plain struct calls."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = {name: mid for name, mid in MODELS}
    with open(folder / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for c in cams.values():
            f.write(struct.pack("<iiQQ", c.id, ids[c.model], c.width, c.height))
            f.write(struct.pack(f"<{len(c.params)}d", *c.params))
    with open(folder / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for im in images.values():
            f.write(struct.pack("<i", im.id) + struct.pack("<4d", *im.qvec) + struct.pack("<3d", *im.tvec)
                    + struct.pack("<i", im.camera_id) + im.name.encode() + b"\x00")
            f.write(struct.pack("<Q", len(im.xys)))
            for (x, y), pid in zip(im.xys, im.point3D_ids):
                f.write(struct.pack("<ddq", x, y, pid))
    with open(folder / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", len(points.ids)))
        for i in range(len(points.ids)):
            f.write(struct.pack("<Q3d3Bd", points.ids[i], *points.xyz[i], *points.rgb[i], points.error[i]))
            f.write(struct.pack("<Q", len(points.tracks[i])))
            for a, b in points.tracks[i]:
                f.write(struct.pack("<ii", a, b))


def make_images(root: Path, cams, images, folder: str = "images", factor: int = 1) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for im in images.values():
        c = cams[im.camera_id]
        w, h = round(c.width / factor), round(c.height / factor)
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / folder / im.name)


def check_reprojection(cameras, images, points, scale: float = 1.0):
    by_name = {im.name: im for im in images.values()}
    xyz_by_id = {int(i): p for i, p in zip(points.ids, points.xyz)}
    total = 0
    for cam in cameras:
        im = by_name[cam.name]
        keep = im.point3D_ids >= 0
        pts = torch.tensor(np.stack([xyz_by_id[int(p)] for p in im.point3D_ids[keep]]), dtype=torch.float64)
        cam64 = cam.world_to_cam.double()
        pc = pts @ cam64[:3, :3].T + cam64[:3, 3]
        uv = torch.stack([cam.fx * pc[:, 0] / pc[:, 2] + cam.cx, cam.fy * pc[:, 1] / pc[:, 2] + cam.cy], 1)
        expected = torch.tensor(im.xys[keep])
        # downscaled folders: observations scale with the actual image size of the file
        if scale != 1.0:
            expected = expected * torch.tensor([cam.meta["sx"], cam.meta["sy"]])
        err = (uv - expected).abs().max().item()
        # world_to_cam is stored as float32: that limits the precision, still far below 1e-3 px
        assert err < 1e-3, (cam.name, err)
        uv2, _ = cam.project(pts.float())
        assert (uv2.double() - expected).abs().max().item() < 1e-3
        total += int(keep.sum())
    assert total > 50


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_roundtrip_and_reprojection(tmp_path, fmt):
    cams, images, points = random_scene()
    root = tmp_path / "scene"
    if fmt == "txt":
        cm.write_model(root / "sparse" / "0", cams, images, points, ext=".txt")
    else:
        write_binary_independent(root / "sparse" / "0", cams, images, points)
    make_images(root, cams, images)
    cameras, xyz, rgb = read_colmap_scene(root)
    assert [c.name for c in cameras] == sorted(im.name for im in images.values())
    assert xyz.shape == (60, 3) and rgb.shape == (60, 3)
    np.testing.assert_allclose(xyz.numpy(), points.xyz, atol=1e-6)
    np.testing.assert_allclose(rgb.numpy() * 255, points.rgb, atol=1e-4)
    for c in cameras:
        c.meta["sx"] = c.meta["sy"] = 1.0
        assert c.image_path == root / "images" / c.name
    check_reprojection(cameras, images, points)
    # low-level readers give back exactly what was written
    c2, i2, p2 = cm.read_model(root / "sparse" / "0")
    assert set(c2) == set(cams) and set(i2) == set(images)
    for iid, im in images.items():
        np.testing.assert_array_equal(i2[iid].point3D_ids, im.point3D_ids)
        np.testing.assert_allclose(i2[iid].xys, im.xys, rtol=0, atol=0)
        np.testing.assert_allclose(i2[iid].qvec, im.qvec, rtol=0, atol=0)
    for a, b in zip(p2.tracks, points.tracks):
        np.testing.assert_array_equal(a, b)


def test_binary_writer_matches_documented_layout(tmp_path):
    cams, images, points = random_scene(seed=3)
    write_binary_independent(tmp_path / "ref", cams, images, points)
    cm.write_model(tmp_path / "ours", cams, images, points, ext=".bin")
    for n in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "ours" / n).read_bytes() == (tmp_path / "ref" / n).read_bytes(), n
    # text -> read -> binary is the same model
    cm.write_model(tmp_path / "txt", cams, images, points, ext=".txt")
    c, i, p = cm.read_model(tmp_path / "txt")
    cm.write_model(tmp_path / "txt2bin", c, i, p, ext=".bin")
    for n in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "txt2bin" / n).read_bytes() == (tmp_path / "ref" / n).read_bytes(), n


def test_quaternion_conversions_match_scipy():
    for seed in range(5):
        rot = Rotation.random(random_state=seed)
        qx, qy, qz, qw = rot.as_quat()
        np.testing.assert_allclose(cm.qvec_to_rotmat([qw, qx, qy, qz]), rot.as_matrix(), atol=1e-12)
        q = cm.rotmat_to_qvec(rot.as_matrix())
        np.testing.assert_allclose(cm.qvec_to_rotmat(q), rot.as_matrix(), atol=1e-10)


def test_downscaled_folder_scales_intrinsics_to_actual_size(tmp_path):
    cams, images, points = random_scene(seed=1)
    root = tmp_path / "scene"
    write_binary_independent(root / "sparse" / "0", cams, images, points)
    make_images(root, cams, images, "images_4", factor=4)  # rounded sizes, like Mip-NeRF360's images_4
    with pytest.raises(ColmapError, match=r"images.*not found.*images_4"):
        read_colmap_scene(root, downscale=1)
    cameras, _, _ = read_colmap_scene(root, downscale=4)
    for c in cameras:
        im = next(i for i in images.values() if i.name == c.name)
        full = cams[im.camera_id]
        assert (c.width, c.height) == (round(full.width / 4), round(full.height / 4))
        assert c.image_path.parent.name == "images_4"
        c.meta["sx"], c.meta["sy"] = c.width / full.width, c.height / full.height
    check_reprojection(cameras, images, points, scale=0.25)
    # downscale=None picks the finest folder that exists
    assert read_colmap_scene(root, downscale=None)[0][0].image_path.parent.name == "images_4"


def test_missing_images_and_unsupported_models(tmp_path):
    cams, images, points = random_scene(seed=2)
    root = tmp_path / "scene"
    cm.write_model(root / "sparse" / "0", cams, images, points, ext=".bin")
    make_images(root, cams, images)
    gone = sorted(im.name for im in images.values())[:2]
    for n in gone:
        (root / "images" / n).unlink()
    with pytest.raises(ColmapError, match=rf"2 of 7 images.*{gone[0]}, {gone[1]}"):
        read_colmap_scene(root)
    make_images(root, cams, images)
    # distortion is ignored with a warning; fisheye models are refused
    cams[5].params[4] = 0.1  # OPENCV k1
    cm.write_model(root / "sparse" / "0", cams, images, points, ext=".bin")
    with pytest.warns(UserWarning, match="distortion"):
        read_colmap_scene(root)
    cams[5] = ColmapCamera(5, "OPENCV_FISHEYE", cams[5].width, cams[5].height, np.zeros(8))
    cm.write_model(root / "sparse" / "0", cams, images, points, ext=".bin")
    with pytest.raises(ColmapError, match="OPENCV_FISHEYE.*image_undistorter"):
        read_colmap_scene(root)
    # a truncated binary file is a clear error
    data = (root / "sparse" / "0" / "images.bin").read_bytes()
    (root / "sparse" / "0" / "images.bin").write_bytes(data[:-7])
    with pytest.raises(ColmapError, match="images.bin.*ends early"):
        cm.read_model(root / "sparse" / "0")


def test_text_reader_accepts_empty_point_lines_and_spaces_in_names(tmp_path):
    (tmp_path / "cameras.txt").write_text("# c\n1 PINHOLE 10 8 5 5 5 4\n")
    (tmp_path / "images.txt").write_text("# header\n1 1 0 0 0 0 0 0 1 my image.png\n\n"
                                         "2 1 0 0 0 1 0 0 1 b.png\n1.5 2.5 -1 3 4 7\n")
    imgs = cm.read_images_text(tmp_path / "images.txt")
    assert imgs[1].name == "my image.png" and len(imgs[1].xys) == 0
    assert imgs[2].point3D_ids.tolist() == [-1, 7] and imgs[2].xys.tolist() == [[1.5, 2.5], [3.0, 4.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cm.pinhole_intrinsics(cm.read_cameras_text(tmp_path / "cameras.txt")[1]) == (5, 5, 5, 4)


def test_rotmat_to_qvec_all_branches():
    for angle, axis in [(0.1, [0, 0, 1]), (3.1, [1, 0, 0]), (3.1, [0, 1, 0]), (3.1, [0, 0, 1]), (np.pi, [1, 1, 0])]:
        rot = Rotation.from_rotvec(angle * np.array(axis, float) / np.linalg.norm(axis))
        q = cm.rotmat_to_qvec(rot.as_matrix())
        np.testing.assert_allclose(cm.qvec_to_rotmat(q), rot.as_matrix(), atol=1e-10)
        assert q[0] >= 0

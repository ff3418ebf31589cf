"""Camera paths: interpolation passes through its key cameras, spiral cameras look at the centre, nerfstudio
camera-path JSON round trip (and its OpenGL axes, vertical fov and dataparser frame)."""
import json
import math

import pytest
import torch

from nifi_lib.gs.camera_paths import (focus_point, interpolate_path, quat_to_rotmat, read_camera_path,
                                      rotmat_to_quat, slerp, spiral_path, subsample_keys, write_camera_path)
from nifi_lib.gs.cameras import Camera, CameraError, look_at


def _orbit(n=6, r=3.0, centre=(0.5, -0.2, 0.3), size=(32, 24)):
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = [centre[0] + r * math.cos(a), centre[1] + r * math.sin(a), centre[2] + 0.5 + 0.1 * i]
        cams.append(Camera(f"c{i}", size[0], size[1], 30.0 + i, 30.0 + i, size[0] / 2, size[1] / 2,
                           look_at(eye, centre)))
    return cams


def test_quaternions_round_trip_and_slerp_ends():
    for c in _orbit(8):
        r = c.world_to_cam[:3, :3].double()
        torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(r)), r, atol=1e-6, rtol=0)
    q0, q1 = rotmat_to_quat(_orbit()[0].world_to_cam[:3, :3]), rotmat_to_quat(_orbit()[1].world_to_cam[:3, :3])
    torch.testing.assert_close(slerp(q0, q1, 0.0), q0)
    torch.testing.assert_close(slerp(q0, q1, 1.0), q1, atol=1e-9, rtol=0)
    mid = slerp(q0, q1, 0.5)   # equal angles to both ends
    assert abs(float(mid @ q0) - float(mid @ q1)) < 1e-9 and abs(float(mid.norm()) - 1) < 1e-12


def test_interp_passes_through_the_key_cameras():
    keys = _orbit(4)
    path = interpolate_path(keys, 3 * 5 + 1)
    assert len(path) == 16 and all(c.width == 32 and c.height == 24 for c in path)
    for k, key in enumerate(keys):
        cam = path[5 * k]
        torch.testing.assert_close(cam.world_to_cam, key.world_to_cam, atol=1e-5, rtol=0)
        assert cam.fx == pytest.approx(key.fx)
    # in between: rotations stay rotations, centres on the segment between the neighbouring keys
    mid = path[2]
    r = mid.world_to_cam[:3, :3].double()
    torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    c0, c1 = keys[0].camera_center, keys[1].camera_center
    torch.testing.assert_close(mid.camera_center, c0 + 0.4 * (c1 - c0), atol=1e-4, rtol=0)
    assert subsample_keys(list(range(20)), 5) == [0, 5, 10, 14, 19] and subsample_keys([1, 2], 8) == [1, 2]


def test_spiral_cameras_look_at_the_centre():
    cams = _orbit(6)
    centre = focus_point(cams)
    torch.testing.assert_close(centre, torch.tensor([0.5, -0.2, 0.3], dtype=torch.float64), atol=1e-4, rtol=0)
    path = spiral_path(cams, 12, height_amplitude=0.2)
    assert len(path) == 12 and len({tuple(c.camera_center.tolist()) for c in path}) == 12
    for c in path:
        to_centre = centre.float() - c.camera_center
        cos = float(c.forward @ to_centre / to_centre.norm())
        assert cos > 1 - 1e-5                                             # looks straight at it
        uv, z = c.project(centre.float()[None])
        assert z[0] > 0 and torch.allclose(uv[0], torch.tensor([16.0, 12.0]), atol=1e-3)   # image centre
    radii = torch.stack([(c.camera_center.double() - centre)[:2].norm() for c in path])
    assert float(radii.std()) < 0.05 * float(radii.mean())               # circles the up axis
    with pytest.raises(CameraError):
        spiral_path(cams, 0)


def test_nerfstudio_json_round_trip(tmp_path):
    cams = interpolate_path(_orbit(3), 7)
    f = tmp_path / "path.json"
    write_camera_path(f, cams, fps=24)
    d = json.loads(f.read_text())
    assert d["render_width"] == 32 and d["render_height"] == 24 and len(d["camera_path"]) == 7
    assert len(d["camera_path"][0]["camera_to_world"]) == 16 and d["camera_path"][0]["aspect"] == pytest.approx(4 / 3)
    # OpenGL axes: the file's camera looks down its -z column
    c2w = torch.tensor(d["camera_path"][0]["camera_to_world"]).reshape(4, 4)
    torch.testing.assert_close(-c2w[:3, 2], cams[0].forward, atol=1e-5, rtol=0)
    back = read_camera_path(f)
    for a, b in zip(cams, back):
        torch.testing.assert_close(b.world_to_cam, a.world_to_cam, atol=1e-5, rtol=0)
        assert (b.width, b.height) == (32, 24) and b.fy == pytest.approx(a.fy, rel=1e-6)
    # a path in nerfstudio's normalized frame comes back to the world frame with its dataparser transform
    t = torch.eye(4, dtype=torch.float64)
    t[:3, :3] = look_at([1, 2, 3], [0, 0, 0])[:3, :3].double()
    t[:3, 3] = torch.tensor([0.3, -0.1, 0.2])
    scale = 0.25
    for e in d["camera_path"]:
        m = t @ torch.tensor(e["camera_to_world"], dtype=torch.float64).reshape(4, 4)
        m[:3, 3] *= scale
        e["camera_to_world"] = m.reshape(-1).tolist()
    (tmp_path / "norm.json").write_text(json.dumps(d))
    (tmp_path / "dp.json").write_text(json.dumps({"transform": t[:3].tolist(), "scale": scale}))
    world = read_camera_path(tmp_path / "norm.json", dataparser_transforms=tmp_path / "dp.json")
    torch.testing.assert_close(world[3].world_to_cam, cams[3].world_to_cam, atol=1e-4, rtol=0)
    with pytest.raises(CameraError, match="camera_path"):
        (tmp_path / "bad.json").write_text("{}")
        read_camera_path(tmp_path / "bad.json")

"""Camera paths for fly-through renders (``nifi render-path``): pure functions of :class:`~.cameras.Camera` lists.

- :func:`spiral_path`: a spiral around the scene's focus point (the point nearest every camera's optical axis),
  each camera looking at it;
- :func:`interpolate_path`: through key cameras, centres linearly and rotations by quaternion slerp, passing
  exactly through each key (:func:`subsample_keys` picks evenly spaced keys from the training cameras);
- :func:`read_camera_path` / :func:`write_camera_path`: nerfstudio's camera-path JSON (``camera_path`` entries
  with ``camera_to_world`` 4x4 flattened row-major, OpenGL axes, ``fov`` vertical in degrees, ``aspect``;
  top-level ``render_height``/``render_width``).

**Frame of a nerfstudio path.** The poses are read in the scene's own world frame (the frame of its
``cameras.json``/``transforms.json``/COLMAP model). A path exported from nerfstudio's viewer lives in its
dataparser-normalized frame instead; pass that run's ``dataparser_transforms.json`` (``transform`` 3x4 and
``scale``: ``p_normalized = scale * (T p_world)``) and the poses are mapped back to the world frame.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from ..io.atomic import atomic_write_json
from .cameras import GL_TO_CV, Camera, CameraError, look_at


# --- rotations ----------------------------------------------------------------------------------------------

def rotmat_to_quat(r: torch.Tensor) -> torch.Tensor:
    """(3, 3) rotation -> unit quaternion (w, x, y, z), float64, w >= 0."""
    r = r.double()
    m = r.tolist()
    tr = m[0][0] + m[1][1] + m[2][2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s]
    elif m[0][0] > m[1][1] and m[0][0] > m[2][2]:
        s = math.sqrt(1.0 + m[0][0] - m[1][1] - m[2][2]) * 2
        q = [(m[2][1] - m[1][2]) / s, 0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s]
    elif m[1][1] > m[2][2]:
        s = math.sqrt(1.0 + m[1][1] - m[0][0] - m[2][2]) * 2
        q = [(m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s]
    else:
        s = math.sqrt(1.0 + m[2][2] - m[0][0] - m[1][1]) * 2
        q = [(m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s]
    q = torch.tensor(q, dtype=torch.float64)
    q = q / q.norm()
    return -q if q[0] < 0 else q


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (w, x, y, z) -> (3, 3) rotation, float64."""
    w, x, y, z = (q.double() / q.double().norm()).tolist()
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)


def slerp(q0: torch.Tensor, q1: torch.Tensor, u: float) -> torch.Tensor:
    """Spherical linear interpolation of unit quaternions along the shorter arc (``u`` in [0, 1])."""
    q0, q1 = q0.double(), q1.double()
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:   # nearly parallel: normalised lerp
        q = q0 + u * (q1 - q0)
        return q / q.norm()
    th = math.acos(min(1.0, d))
    return (math.sin((1 - u) * th) * q0 + math.sin(u * th) * q1) / math.sin(th)


def _w2c(rot: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """World-to-camera (4, 4) float32 of a camera with world-to-camera rotation ``rot`` at ``centre``."""
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = rot.double()
    w2c[:3, 3] = -(rot.double() @ centre.double())
    return w2c.float()


def _like(ref: Camera, name: str, w2c: torch.Tensor, meta: dict | None = None) -> Camera:
    return Camera(name, ref.width, ref.height, ref.fx, ref.fy, ref.cx, ref.cy, w2c, None, dict(meta or {}))


# --- scene geometry ----------------------------------------------------------------------------------------

def focus_point(cameras: Sequence[Camera]) -> torch.Tensor:
    """The point nearest (least squares) every camera's optical axis (3,) float64; the mean centre when the
    axes are (nearly) parallel."""
    a = torch.zeros(3, 3, dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    for c in cameras:
        d = c.forward.double()
        d = d / d.norm()
        p = torch.eye(3, dtype=torch.float64) - torch.outer(d, d)
        a += p
        b += p @ c.camera_center.double()
    if float(torch.linalg.svdvals(a).min()) < 1e-6 * len(cameras):
        return torch.stack([c.camera_center.double() for c in cameras]).mean(0)
    return torch.linalg.solve(a, b)


def mean_up(cameras: Sequence[Camera]) -> torch.Tensor:
    """The cameras' mean up direction in world coordinates (OpenCV: up = -y of the camera), unit (3,)."""
    up = torch.stack([-c.world_to_cam[1, :3].double() for c in cameras]).mean(0)
    return up / up.norm()


def spiral_path(cameras: Sequence[Camera], n_frames: int, rotations: float = 1.0, radius_scale: float = 1.0,
                height_amplitude: float = 0.1, centre: Sequence[float] | None = None,
                up: Sequence[float] | None = None) -> list[Camera]:
    """``n_frames`` cameras on a spiral around ``centre`` (default :func:`focus_point`), each looking at it.

    The spiral circles the ``up`` axis (default :func:`mean_up`) ``rotations`` times at the cameras' mean
    distance from that axis (x ``radius_scale``) and their mean height, the height oscillating by
    ``height_amplitude`` x the radius (one period per rotation). Intrinsics are the first camera's."""
    if n_frames < 1:
        raise CameraError(f"spiral_path: n_frames must be >= 1, got {n_frames}")
    if not cameras:
        raise CameraError("spiral_path: no cameras")
    c = torch.as_tensor(centre, dtype=torch.float64) if centre is not None else focus_point(cameras)
    u = torch.as_tensor(up, dtype=torch.float64) if up is not None else mean_up(cameras)
    u = u / u.norm()
    rel = torch.stack([cam.camera_center.double() for cam in cameras]) - c
    heights = rel @ u
    radial = rel - heights[:, None] * u
    radius = float(radial.norm(dim=1).mean()) * radius_scale
    if radius < 1e-9:
        raise CameraError("spiral_path: the cameras are on the up axis through the centre; no radius")
    e1 = radial[0] / radial[0].norm()                    # start next to the first camera
    e2 = torch.linalg.cross(u, e1)
    h = float(heights.mean())
    out = []
    for i in range(n_frames):
        a = 2 * math.pi * rotations * i / n_frames
        eye = c + radius * (math.cos(a) * e1 + math.sin(a) * e2) + (h + height_amplitude * radius * math.sin(a)) * u
        out.append(_like(cameras[0], f"spiral_{i:05d}", look_at(eye.tolist(), c.tolist(), u.tolist()),
                         {"path": "spiral"}))
    return out


def subsample_keys(cameras: Sequence[Camera], max_keys: int = 8) -> list[Camera]:
    """At most ``max_keys`` evenly spaced cameras of ``cameras``, the first and the last included."""
    n = len(cameras)
    if n <= max_keys:
        return list(cameras)
    idx = sorted({round(i * (n - 1) / (max_keys - 1)) for i in range(max_keys)})
    return [cameras[i] for i in idx]


def interpolate_path(keys: Sequence[Camera], n_frames: int) -> list[Camera]:
    """``n_frames`` cameras through the key cameras in order: centres interpolated linearly, rotations by
    :func:`slerp`, intrinsics linearly (size of the first key). Frame ``i`` sits at key parameter
    ``i (K - 1) / (n_frames - 1)``, so key ``k`` is frame ``k (n_frames - 1) / (K - 1)`` exactly when that is
    an integer (e.g. ``n_frames = m (K - 1) + 1``); the first and last frames are the first and last keys."""
    if not keys:
        raise CameraError("interpolate_path: no key cameras")
    if n_frames < 1:
        raise CameraError(f"interpolate_path: n_frames must be >= 1, got {n_frames}")
    k = len(keys)
    quats = [rotmat_to_quat(c.world_to_cam[:3, :3]) for c in keys]
    centres = [c.camera_center.double() for c in keys]
    ref = keys[0]
    out = []
    for i in range(n_frames):
        s = 0.0 if n_frames == 1 or k == 1 else i * (k - 1) / (n_frames - 1)
        j = min(int(math.floor(s)), k - 2) if k > 1 else 0
        u = s - j if k > 1 else 0.0
        a, b = keys[j], keys[min(j + 1, k - 1)]
        rot = quat_to_rotmat(slerp(quats[j], quats[min(j + 1, k - 1)], u))
        centre = (1 - u) * centres[j] + u * centres[min(j + 1, k - 1)]
        lerp = lambda x, y: (1 - u) * x + u * y  # noqa: E731
        out.append(Camera(f"interp_{i:05d}", ref.width, ref.height, lerp(a.fx, b.fx), lerp(a.fy, b.fy),
                          lerp(a.cx, b.cx), lerp(a.cy, b.cy), _w2c(rot, centre), None,
                          {"path": "interp", "key": s}))
    return out


# --- nerfstudio camera-path JSON ------------------------------------------------------------------------------

def _dataparser(path: str | Path | None) -> tuple[torch.Tensor, float] | None:
    if path is None:
        return None
    d = json.loads(Path(path).read_text())
    t = torch.eye(4, dtype=torch.float64)
    try:
        t[:3, :4] = torch.tensor(d["transform"], dtype=torch.float64).reshape(3, 4)
        return t, float(d.get("scale", 1.0))
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CameraError(f"{path}: not a nerfstudio dataparser_transforms.json (transform 3x4, scale): {e}") from e


def read_camera_path(path: str | Path, dataparser_transforms: str | Path | None = None,
                     width: int | None = None, height: int | None = None) -> list[Camera]:
    """Cameras of a nerfstudio camera-path JSON (module docstring: OpenGL ``camera_to_world``, vertical ``fov``
    in degrees, square pixels, principal point at the centre). Size: ``width``/``height`` if given, else the
    file's ``render_width``/``render_height`` (a missing width: ``height`` x ``aspect``).
    ``dataparser_transforms``: map poses from nerfstudio's normalized frame back to the scene's world frame."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        entries = d["camera_path"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CameraError(f"{path}: not a nerfstudio camera path (a JSON object with 'camera_path'): {e}") from e
    if not entries:
        raise CameraError(f"{path}: 'camera_path' is empty")
    norm = _dataparser(dataparser_transforms)
    out = []
    for i, e in enumerate(entries):
        try:
            c2w = torch.tensor(e["camera_to_world"], dtype=torch.float64).reshape(4, 4)
            fov = float(e.get("fov", d.get("default_fov", 50.0)))
            aspect = float(e.get("aspect", d.get("aspect", 1.0)))
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise CameraError(f"{path}: camera_path[{i}]: needs camera_to_world (16 numbers), fov, aspect: {err}") from err
        h = int(height or d.get("render_height") or 0)
        if h <= 0:
            raise CameraError(f"{path}: no render_height (pass a height)")
        w = int(width or d.get("render_width") or round(h * aspect))
        if norm is not None:   # normalized frame -> world: p_w = T^-1 (p_n / scale), axes R_w = T_R^-1 R_n
            t, scale = norm
            c2w = c2w.clone()
            c2w[:3, 3] = c2w[:3, 3] / scale
            c2w = torch.linalg.inv(t) @ c2w
        c2w_cv = c2w @ GL_TO_CV.double()
        fy = 0.5 * h / math.tan(math.radians(fov) / 2)
        out.append(Camera(f"path_{i:05d}", w, h, fy, fy, w / 2, h / 2, torch.linalg.inv(c2w_cv).float(), None,
                          {"path": path.name}))
    return out


def write_camera_path(path: str | Path, cameras: Sequence[Camera], fps: float = 30.0) -> None:
    """A nerfstudio camera-path JSON of ``cameras`` (OpenGL ``camera_to_world`` row-major, vertical ``fov`` in
    degrees, ``aspect``; the first camera's size), written atomically; :func:`read_camera_path` reads it back."""
    if not cameras:
        raise CameraError("write_camera_path: no cameras")
    ref = cameras[0]
    entries = []
    for c in cameras:
        c2w_gl = torch.linalg.inv(c.world_to_cam.double()) @ GL_TO_CV.double()
        entries.append({"camera_to_world": [float(x) for x in c2w_gl.reshape(-1)],
                        "fov": math.degrees(2 * math.atan(0.5 * c.height / c.fy)), "aspect": c.width / c.height})
    atomic_write_json(path, {"camera_type": "perspective", "render_height": ref.height, "render_width": ref.width,
                             "fps": fps, "seconds": len(cameras) / fps, "camera_path": entries})


__all__ = ["focus_point", "interpolate_path", "mean_up", "quat_to_rotmat", "read_camera_path", "rotmat_to_quat",
           "slerp", "spiral_path", "subsample_keys", "write_camera_path"]

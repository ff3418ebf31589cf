"""Pinhole cameras (OpenCV convention: x right, y down, z forward) and scene camera files.

Pixel convention (same as gsplat and the 3DGS CUDA rasterizer): a point projects to continuous pixel
coordinates ``u = fx * x / z + cx``, ``v = fy * y / z + cy``; pixel ``(i, j)`` (column, row) has its
centre at ``(i + 0.5, j + 0.5)``, so ``cx = W / 2`` is the image centre.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import NifiError
from ..io.atomic import atomic_write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
# OpenGL/Blender camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward).
GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


class CameraError(NifiError, ValueError):
    """A camera file or its images cannot be used (missing file, bad field, missing image...)."""


@dataclass
class Camera:
    """A pinhole camera. ``world_to_cam`` is a (4, 4) float32 rigid transform in OpenCV convention."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_cam: torch.Tensor
    image_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.world_to_cam = torch.as_tensor(self.world_to_cam, dtype=torch.float32).reshape(4, 4)
        self.width, self.height = int(self.width), int(self.height)
        self.fx, self.fy, self.cx, self.cy = float(self.fx), float(self.fy), float(self.cx), float(self.cy)
        if self.image_path is not None:
            self.image_path = Path(self.image_path)

    @property
    def cam_to_world(self) -> torch.Tensor:
        return torch.linalg.inv(self.world_to_cam.double()).float()

    @property
    def camera_center(self) -> torch.Tensor:
        """Camera centre in world coordinates, ``-R^T t`` (3,)."""
        r, t = self.world_to_cam[:3, :3], self.world_to_cam[:3, 3]
        return -(r.T @ t)

    @property
    def forward(self) -> torch.Tensor:
        """Viewing direction (camera +z) in world coordinates (3,)."""
        return self.world_to_cam[2, :3].clone()

    @property
    def fov_x(self) -> float:
        return 2.0 * math.atan(0.5 * self.width / self.fx)

    @property
    def fov_y(self) -> float:
        return 2.0 * math.atan(0.5 * self.height / self.fy)

    def intrinsics_matrix(self) -> torch.Tensor:
        """``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (3, 3) float32."""
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=torch.float32)

    def world_to_camera_points(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) world points -> (N, 3) camera-space points."""
        w2c = self.world_to_cam.to(points)
        return points @ w2c[:3, :3].T + w2c[:3, 3]

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) world points -> (N, 2) continuous pixel coordinates and (N,) depths (camera z)."""
        pc = self.world_to_camera_points(points)
        z = pc[:, 2]
        zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
        uv = torch.stack([self.fx * pc[:, 0] / zs + self.cx, self.fy * pc[:, 1] / zs + self.cy], dim=1)
        return uv, z

    def scaled(self, factor: float) -> "Camera":
        """The same camera for an image resized by ``factor`` (e.g. 0.5 for half resolution)."""
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        sx, sy = w / self.width, h / self.height
        return Camera(self.name, w, h, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
                      self.world_to_cam.clone(), self.image_path, dict(self.meta))

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        img = None
        if self.image_path is not None:
            img = str(self.image_path)
            if relative_to is not None:
                try:
                    img = Path(self.image_path).resolve().relative_to(relative_to.resolve()).as_posix()
                except ValueError:
                    img = str(Path(self.image_path).resolve())
        return {"name": self.name, "width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
                "cx": self.cx, "cy": self.cy, "world_to_cam": self.world_to_cam.tolist(), "image_path": img}


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV world-to-camera matrix (4, 4) of a camera at ``eye`` looking at ``target`` (``up`` = world up)."""
    eye_t, tgt, up_t = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = tgt - eye_t
    z = z / z.norm()
    x = torch.linalg.cross(z, up_t)
    if float(x.norm()) < 1e-8:  # looking along `up`: pick any perpendicular
        x = torch.linalg.cross(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)  # image y points down (against `up`)
    r = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = r
    w2c[:3, 3] = -(r @ eye_t)
    return w2c.float()


# --- NeRF-synthetic / Blender ----------------------------------------------------------------------

def _resolve_image(root: Path, file_path: str) -> Path:
    p = (root / file_path).resolve() if not Path(file_path).is_absolute() else Path(file_path)
    if p.suffix and p.is_file():
        return p
    for suf in IMAGE_SUFFIXES:
        q = p.with_name(p.name + suf)
        if q.is_file():
            return q
    return p if p.suffix else p.with_name(p.name + ".png")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise CameraError(f"{path}: cannot read image ({e.__class__.__name__}: {e})") from e


def read_blender_scene(root: str | Path, split: str = "train") -> list[Camera]:
    """Cameras of a NeRF-synthetic scene from ``root/transforms_{split}.json``.

    ``transform_matrix`` is camera-to-world in OpenGL axes; it is flipped to OpenCV and inverted.
    ``fx = fy = 0.5 * W / tan(0.5 * camera_angle_x)`` (as the 3DGS reader), ``cx, cy = W/2, H/2``;
    ``fl_x/fl_y/cx/cy/w/h`` keys (instant-ngp style) take precedence when present. The image size is
    read from the first image. Every image file is checked before anything is returned.
    """
    root = Path(root)
    jpath = root / f"transforms_{split}.json"
    if not jpath.is_file():
        raise CameraError(f"{jpath}: camera file not found (is {root} a NeRF-synthetic/Blender scene?)")
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CameraError(f"{jpath}: cannot parse JSON ({e})") from e
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise CameraError(f"{jpath}: no 'frames' listed")
    if "camera_angle_x" not in meta and "fl_x" not in meta:
        raise CameraError(f"{jpath}: neither 'camera_angle_x' nor 'fl_x' is given")
    paths: list[Path] = []
    for i, fr in enumerate(frames):
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise CameraError(f"{jpath}: frame {i} lacks 'file_path' or 'transform_matrix'")
        paths.append(_resolve_image(root, fr["file_path"]))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CameraError(f"{jpath}: {len(missing)} image file(s) missing, first: {missing[0]}")
    w0, h0 = _image_size(paths[0])
    width, height = int(meta.get("w", w0)), int(meta.get("h", h0))
    if (width, height) != (w0, h0):  # image files win over json sizes (e.g. downscaled copies)
        width, height = w0, h0
    if "fl_x" in meta and "camera_angle_x" not in meta:
        fx = float(meta["fl_x"]) * width / float(meta.get("w", width))
        fy = float(meta.get("fl_y", meta["fl_x"])) * height / float(meta.get("h", height))
    else:
        fx = 0.5 * width / math.tan(0.5 * float(meta["camera_angle_x"]))
        fy = 0.5 * height / math.tan(0.5 * float(meta["camera_angle_y"])) if "camera_angle_y" in meta else fx
    cx = float(meta["cx"]) * width / float(meta.get("w", width)) if "cx" in meta else 0.5 * width
    cy = float(meta["cy"]) * height / float(meta.get("h", height)) if "cy" in meta else 0.5 * height
    cams = []
    for fr, p in zip(frames, paths):
        c2w = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
        if c2w.shape != (4, 4) or not bool(torch.isfinite(c2w).all()):
            raise CameraError(f"{jpath}: bad transform_matrix for {fr['file_path']}")
        w2c = torch.linalg.inv(c2w @ GL_TO_CV.double())
        cams.append(Camera(Path(fr["file_path"]).name, width, height, fx, fy, cx, cy, w2c.float(), p,
                           {"format": "blender", "split": split}))
    return cams


# --- the embedded scenes' own format -----------------------------------------------------------------

def write_scene_cameras(path: str | Path, cameras: Sequence[Camera]) -> None:
    """Write ``cameras.json``: a list of camera dicts, image paths relative to the json's folder."""
    path = Path(path)
    atomic_write_json(path, [c.to_dict(relative_to=path.parent) for c in cameras])


def read_scene_cameras(path: str | Path, check_images: bool = True) -> list[Camera]:
    """Read a ``cameras.json`` written by :func:`write_scene_cameras` (``path`` may be its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "cameras.json"
    if not path.is_file():
        raise CameraError(f"{path}: camera file not found")
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CameraError(f"{path}: cannot parse JSON ({e})") from e
    if not isinstance(items, list) or not items:
        raise CameraError(f"{path}: expected a non-empty list of cameras")
    cams = []
    keys = ("name", "width", "height", "fx", "fy", "cx", "cy", "world_to_cam")
    for i, d in enumerate(items):
        if not isinstance(d, dict) or any(k not in d for k in keys):
            raise CameraError(f"{path}: camera {i} lacks one of the fields {list(keys)}")
        try:
            w2c = torch.tensor(d["world_to_cam"], dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise CameraError(f"{path}: camera {i} ({d['name']}): bad world_to_cam ({e})") from e
        if w2c.shape != (4, 4) or not bool(torch.isfinite(w2c).all()):
            raise CameraError(f"{path}: camera {i} ({d['name']}): world_to_cam must be a finite 4x4 matrix")
        img = d.get("image_path")
        img_path = None if img is None else (path.parent / img if not Path(img).is_absolute() else Path(img))
        if check_images and img_path is not None and not img_path.is_file():
            raise CameraError(f"{path}: image of camera {d['name']} not found: {img_path}")
        cams.append(Camera(str(d["name"]), d["width"], d["height"], d["fx"], d["fy"], d["cx"], d["cy"], w2c, img_path,
                           {"format": "embedded"}))
    return cams


# --- splits and images -----------------------------------------------------------------------------------

def split_views(cameras: Sequence[Camera], split: str, llffhold: int = 8) -> list[Camera]:
    """The 3DGS/Mip-NeRF360 split: ``test`` = every ``llffhold``-th view (index % llffhold == 0),
    ``train`` = the others, ``all`` = every view. Order is preserved."""
    if llffhold < 1:
        raise ValueError("llffhold must be >= 1")
    if split == "all":
        return list(cameras)
    if split == "test":
        return [c for i, c in enumerate(cameras) if i % llffhold == 0]
    if split == "train":
        return [c for i, c in enumerate(cameras) if i % llffhold != 0]
    raise ValueError(f"unknown split {split!r} (train, test or all)")


def _load_rgb_on_background(path: Path, background: Sequence[float]) -> torch.Tensor:
    """8-bit RGB or RGBA file -> (3, H, W) in [0, 1]; RGBA is composited over ``background``."""
    from PIL import Image

    from ..io.images import ImageError, load_image

    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception:
        mode = None  # let load_image report the problem
    if mode not in ("RGBA", "LA"):
        return load_image(path, allow_convert=True)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    except Exception as e:
        raise ImageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from e
    rgb, a = torch.from_numpy(arr[..., :3]).permute(2, 0, 1), torch.from_numpy(arr[..., 3:]).permute(2, 0, 1)
    bg = torch.as_tensor(background, dtype=torch.float32).view(3, 1, 1)
    return rgb * a + bg * (1.0 - a)


def load_camera_images(cameras: Sequence[Camera], background: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Load every camera's image as a ``(V, 3, H, W)`` float tensor in [0, 1].

    RGB files go through :func:`nifi_lib.io.images.load_image`; RGBA files (NeRF-synthetic) are
    composited over ``background`` (default white, as the 3DGS Blender setting). Sizes must match the cameras.
    """
    out = []
    for cam in cameras:
        if cam.image_path is None:
            raise CameraError(f"camera {cam.name}: no image path")
        img = _load_rgb_on_background(Path(cam.image_path), background)
        if img.shape[1:] != (cam.height, cam.width):
            raise CameraError(f"{cam.image_path}: image is {img.shape[2]}x{img.shape[1]}, "
                              f"camera {cam.name} expects {cam.width}x{cam.height}")
        out.append(img)
    if not out:
        raise CameraError("load_camera_images: no cameras")
    return torch.stack(out)


def cameras_extent(cameras: Sequence[Camera]) -> float:
    """Scene scale as in 3DGS (``getNerfppNorm``): 1.1 x the largest distance of a camera centre to their mean."""
    centers = torch.stack([c.camera_center for c in cameras]).double()
    radius = float((centers - centers.mean(0)).norm(dim=1).max()) * 1.1
    return radius if radius > 1e-6 else 1.0

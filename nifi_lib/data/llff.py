"""LLFF scenes (``nerf_llff_data``): ``poses_bounds.npy`` + ``images/`` and ``images_<d>/``.

``poses_bounds.npy`` is an ``(N, 17)`` float array, one row per image in the order of the *sorted* image file
names: a flattened ``3 x 5`` matrix ``[R | t | hwf]`` and two depth bounds ``(near, far)``. ``[R | t]`` is
camera-to-world; the columns of ``R`` are the camera's **down**, **right** and **backwards** axes in world
coordinates (LLFF's ``imgs2poses`` reorders COLMAP's ``[right, down, forward]`` this way), ``t`` the camera
centre and ``hwf = (H, W, focal)`` the full-resolution image size and focal length (principal point at the
image centre). The project's cameras are OpenCV (x right, y down, z forward), so::

    c2w_cv[:, 0] = R[:, 1]      (right)
    c2w_cv[:, 1] = R[:, 0]      (down)
    c2w_cv[:, 2] = -R[:, 2]     (forward = -backwards)
    c2w_cv[:, 3] = t

(NeRF's ``load_llff_data`` makes the OpenGL ``[right, up, back] = [R1, -R0, R2]`` from the same columns.)
The focal length refers to ``W x H``; for ``images_<d>/`` it is scaled to the actual file size. Test views are
every 8th (``llffhold = 8``, index % 8 == 0, as NeRF and 3DGS). Sparse points for initialisation come from
``sparse/0/points3D.bin`` (or ``.txt``) when present. A folder with a complete COLMAP model is read as COLMAP
(:mod:`nifi_lib.data.scenes` checks that first), so the Mip-NeRF360 scenes, which also ship a
``poses_bounds.npy``, keep their COLMAP cameras.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io.images import list_images
from .scenes import SceneError

POSES_BOUNDS = "poses_bounds.npy"
DOWNSCALES = (1, 2, 4, 8)


class LLFFError(SceneError):
    """An LLFF scene's ``poses_bounds.npy`` or its images cannot be used."""


def llff_to_cv(pose: np.ndarray) -> np.ndarray:
    """``3 x 4`` (or ``3 x 5``) LLFF camera-to-world ``[down, right, back | t]`` -> ``4 x 4`` OpenCV camera-to-world."""
    p = np.asarray(pose, dtype=np.float64)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = p[:, 1], p[:, 0], -p[:, 2], p[:, 3]
    return c2w


def cv_to_llff(c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`llff_to_cv`: OpenCV camera-to-world -> ``3 x 4`` LLFF ``[down, right, back | t]``."""
    c = np.asarray(c2w, dtype=np.float64)
    return np.stack([c[:3, 1], c[:3, 0], -c[:3, 2], c[:3, 3]], axis=1)


def llff_images_folder(root: str | Path, downscale: int | None = None) -> Path:
    """``images/`` (downscale 1) or ``images_<d>/``; ``None`` = ``images/`` if present, else the finest there is."""
    root = Path(root)
    if downscale is None:
        for d in DOWNSCALES:
            f = root / ("images" if d == 1 else f"images_{d}")
            if f.is_dir() and list_images(f):
                return f
        raise LLFFError(f"{root}: LLFF scene without images (no images/ or images_2/4/8/ folder with image files)")
    if downscale not in DOWNSCALES:
        raise LLFFError(f"downscale must be 1, 2, 4 or 8, got {downscale}")
    f = root / ("images" if downscale == 1 else f"images_{downscale}")
    if not f.is_dir():
        have = sorted(p.name for p in root.glob("images*") if p.is_dir())
        raise LLFFError(f"{f}: image folder not found (downscale={downscale}); the scene has "
                        f"{', '.join(have) or 'no image folders'}")
    return f


def read_poses_bounds(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(poses (N, 3, 5), bounds (N, 2))`` of a ``poses_bounds.npy``; :class:`LLFFError` naming it otherwise."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise LLFFError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from e
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise LLFFError(f"{path}: expected an (N, 17) array of 3x5 poses and 2 bounds, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise LLFFError(f"{path}: non-finite values")
    return arr[:, :15].reshape(-1, 3, 5), arr[:, 15:]


def read_llff_scene(root: str | Path, downscale: int | None = None) -> list:
    """All cameras of an LLFF scene (sorted by image name, i.e. in ``poses_bounds.npy`` order), OpenCV convention.

    ``downscale`` picks ``images_<d>/`` (``None``: ``images/`` if present, else the finest downscaled folder);
    the focal length and principal point are scaled from ``hwf`` to the actual size of each image file.
    """
    from PIL import Image

    from ..gs.cameras import Camera

    root = Path(root)
    pb = root / POSES_BOUNDS
    poses, bounds = read_poses_bounds(pb)
    folder = llff_images_folder(root, downscale)
    files = list_images(folder)
    if len(files) != len(poses):
        raise LLFFError(f"{pb}: {len(poses)} poses but {len(files)} images in {folder} (LLFF pairs the i-th pose with "
                        "the i-th image in name order)")
    cams = []
    for i, (p, f) in enumerate(zip(poses, files)):
        h0, w0, focal = p[:, 4]
        if not (h0 > 0 and w0 > 0 and focal > 0):
            raise LLFFError(f"{pb}: pose {i} ({f.name}) has a bad hwf column {p[:, 4].tolist()}")
        try:
            with Image.open(f) as im:
                w, h = im.size
        except Exception as e:
            raise LLFFError(f"{f}: cannot read image ({e.__class__.__name__}: {e})") from e
        sx, sy = w / w0, h / h0
        w2c = np.linalg.inv(llff_to_cv(p[:, :4]))
        cams.append(Camera(f.name, w, h, focal * sx, focal * sy, 0.5 * w, 0.5 * h, torch.from_numpy(w2c).float(), f,
                           {"format": "llff", "near": float(bounds[i, 0]), "far": float(bounds[i, 1])}))
    return cams


def read_llff_points(root: str | Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(xyz, rgb in [0, 1])`` from ``sparse/0/points3D.bin`` (or ``.txt``), or None when there is none."""
    from .colmap import read_points3D_binary, read_points3D_text

    sparse = Path(root) / "sparse" / "0"
    if (sparse / "points3D.bin").is_file():
        pts = read_points3D_binary(sparse / "points3D.bin")
    elif (sparse / "points3D.txt").is_file():
        pts = read_points3D_text(sparse / "points3D.txt")
    else:
        return None
    if not len(pts.xyz):
        return None
    return (torch.from_numpy(pts.xyz.astype(np.float32)).reshape(-1, 3),
            torch.from_numpy(pts.rgb.astype(np.float32) / 255.0).reshape(-1, 3))


def write_llff_scene(root: str | Path, cameras: Sequence, images: torch.Tensor | Sequence[torch.Tensor],
                     downscales: Sequence[int] = (), bounds: Sequence[float] = (0.1, 100.0),
                     points: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Path]:
    """Write an LLFF scene folder: ``poses_bounds.npy``, ``images/<camera name>.png`` and, for each ``d`` in
    ``downscales``, ``images_<d>/`` (area-resized copies); ``points`` ``(xyz, rgb)`` go to ``sparse/0/points3D.bin``.

    The cameras must be LLFF-representable: ``fx == fy`` and the principal point at the image centre (else
    :class:`LLFFError`); they are written in camera-name order (LLFF pairs poses with sorted file names).
    Returns the written full-resolution image paths in pose order.
    """
    from PIL import Image

    from ..io.images import save_image

    root = Path(root)
    order = sorted(range(len(cameras)), key=lambda i: cameras[i].name)
    rows, written = [], []
    for i in order:
        c = cameras[i]
        if abs(c.fx - c.fy) > 1e-6 * c.fx or abs(c.cx - c.width / 2) > 1e-6 or abs(c.cy - c.height / 2) > 1e-6:
            raise LLFFError(f"camera {c.name}: LLFF stores one focal length and a centred principal point "
                            f"(got fx={c.fx}, fy={c.fy}, cx={c.cx}, cy={c.cy} for {c.width}x{c.height})")
        c2w = np.linalg.inv(c.world_to_cam.double().numpy())
        hwf = np.array([[c.height], [c.width], [c.fx]], dtype=np.float64)
        rows.append(np.concatenate([np.concatenate([cv_to_llff(c2w), hwf], axis=1).reshape(-1),
                                    np.asarray(bounds, dtype=np.float64)]))
        name = Path(c.name).stem + ".png"
        path = root / "images" / name
        save_image(path, images[i])
        written.append(path)
        for d in downscales:
            if d == 1:
                continue
            small = root / f"images_{d}" / name
            small.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                im.convert("RGB").resize((max(1, c.width // d), max(1, c.height // d)), Image.BOX).save(small)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / POSES_BOUNDS, np.stack(rows))
    if points is not None:
        from .colmap import ColmapPoints, write_points3D_binary

        xyz, rgb = (torch.as_tensor(t).double().numpy().reshape(-1, 3) for t in points)
        n = len(xyz)
        pts = ColmapPoints(np.arange(1, n + 1, dtype=np.int64), xyz,
                           np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8), np.zeros(n))
        (root / "sparse" / "0").mkdir(parents=True, exist_ok=True)
        write_points3D_binary(root / "sparse" / "0" / "points3D.bin", pts)
    return written


__all__ = ["POSES_BOUNDS", "LLFFError", "llff_to_cv", "cv_to_llff", "read_poses_bounds", "read_llff_scene",
           "read_llff_points", "write_llff_scene", "llff_images_folder"]

"""One entry point for every scene layout the project reads: :func:`load_scene`.

Layouts (detected in this order, or forced with ``layout=``):

* ``blender``: NeRF-synthetic, ``transforms_{train,val,test}.json`` (the files define the split);
* ``inria``: an INRIA 3DGS output folder (``cfg_args``, ``point_cloud/iteration_<k>/``, its ``cameras.json``
  of ``img_name``/``rotation``/``position`` entries; images from ``cfg_args``' ``source_path``;
  :mod:`nifi_lib.data.inria`);
* ``embedded``: the project's own ``cameras.json`` (:func:`nifi_lib.gs.cameras.read_scene_cameras`);
* ``colmap``: ``sparse/0/`` (or ``sparse/``, ``colmap/sparse/0/``) + ``images[_2|_4|_8]/`` (Mip-NeRF360,
  Tanks & Temples, DeepBlending, DL3DV with COLMAP);
* ``llff``: ``poses_bounds.npy`` + ``images[_2|_4|_8]/`` without a complete COLMAP model (``nerf_llff_data``;
  points from ``sparse/0/points3D.bin`` when present; :mod:`nifi_lib.data.llff`);
* ``nerfstudio``: ``transforms.json`` with ``fl_x, fl_y, cx, cy, w, h`` and ``frames[].transform_matrix``
  (camera-to-world, OpenGL axes), e.g. DL3DV-10K;
* ``images`` (only with ``detect_layout(..., allow_images=True)``): an ``images/`` folder and no cameras
  (artifact synthesis' proxy and precomputed modes, :mod:`nifi_lib.synthesis.scene`).

For every layout but ``blender`` the cameras are sorted by image name and split with the
3DGS rule (test = every ``llffhold``-th view, :func:`nifi_lib.gs.cameras.split_views`).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import NifiError
from ..gs.cameras import GL_TO_CV, Camera, read_blender_scene, read_scene_cameras, split_views
from ..io.images import list_images
from .colmap import IMAGE_EXTS, ColmapError, find_sparse_dir, read_colmap_scene

LAYOUTS = ("blender", "inria", "embedded", "colmap", "llff", "nerfstudio")


class SceneError(NifiError, ValueError):
    """A scene folder has no known layout or its files are unusable."""


def detect_layout(root: str | Path, allow_images: bool = False, downscale: int | None = None) -> str:
    """The layout of a scene folder: ``blender``, ``embedded``, ``colmap`` or ``nerfstudio`` (module docstring);
    with ``allow_images`` also ``images`` (no cameras: :func:`image_files`, for callers that need images only).
    Raises :class:`SceneError` naming ``root`` otherwise (the project's one layout detector)."""
    root = Path(root)
    if not root.is_dir():
        raise SceneError(f"{root}: scene folder not found")
    if (root / "transforms_train.json").is_file():
        return "blender"
    if (root / "cameras.json").is_file():
        from .inria import is_inria_cameras, is_inria_output

        return "inria" if is_inria_output(root) or is_inria_cameras(root / "cameras.json") else "embedded"
    if find_sparse_dir(root) is not None:
        return "colmap"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    if (root / "transforms.json").is_file():
        return "nerfstudio"
    if allow_images and image_files(root, downscale):
        return "images"
    raise SceneError(f"{root}: unknown scene layout, cannot tell the scene format: expected transforms_train.json "
                     "(Blender), cameras.json (embedded or an INRIA 3DGS output), sparse/0/ (COLMAP), "
                     "poses_bounds.npy (LLFF), transforms.json (nerfstudio/DL3DV)"
                     + (" or images/" if allow_images else ""))


def image_files(root: str | Path, downscale: int | None = None) -> list[Path]:
    """Image files of ``root/images/`` (``images_<d>/`` for ``downscale = d`` > 1), sorted; [] if none."""
    folder = Path(root) / ("images" if downscale in (None, 1) else f"images_{downscale}")
    return list_images(folder) if folder.is_dir() else []


def is_scene_dir(path: str | Path, **layout_kw) -> bool:
    """Whether :func:`detect_layout` (same keywords) recognises ``path``."""
    try:
        detect_layout(path, **layout_kw)
        return True
    except SceneError:
        return False


def find_scenes(data_root: str | Path, max_depth: int = 3, **layout_kw) -> list[Path]:
    """Scene folders below ``data_root`` (itself included), sorted; does not descend into a scene.
    ``layout_kw`` (``allow_images``, ``downscale``) go to :func:`detect_layout`."""
    data_root = Path(data_root)
    found: list[Path] = []

    def walk(p: Path, depth: int) -> None:
        if is_scene_dir(p, **layout_kw):
            found.append(p)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith((".", "_")))
        except OSError:
            return
        for c in children:
            walk(c, depth + 1)

    if data_root.is_dir():
        walk(data_root, 0)
    return found


def load_scene(root: str | Path, split: str = "train", llffhold: int = 8, downscale: int | None = None,
               layout: str | None = None) -> list[Camera]:
    """Cameras (with image paths) of the ``split`` (``train``, ``test`` or ``all``) of a scene folder.

    ``downscale`` picks ``images_{2,4,8}`` for COLMAP, LLFF, INRIA (its source scene) and nerfstudio scenes
    (intrinsics follow the actual image size); ``None`` uses ``images/`` when present, else the finest downscaled folder there is.
    Blender scenes use their own ``transforms_{split}.json`` split and ignore ``llffhold``/``downscale``.
    """
    root = Path(root)
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise SceneError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if split not in ("train", "test", "all"):
        raise SceneError(f"unknown split {split!r} (train, test or all)")
    if layout == "blender":
        if split == "all":
            cams = []
            for s in ("train", "val", "test"):
                if (root / f"transforms_{s}.json").is_file():
                    cams += read_blender_scene(root, s)
            return cams
        return read_blender_scene(root, split)
    if layout == "embedded":
        cams = sorted(read_scene_cameras(root / "cameras.json"), key=lambda c: c.name)
    elif layout == "colmap":
        cams = read_colmap_scene(root, downscale=downscale)[0]
    elif layout == "llff":
        from .llff import read_llff_scene

        cams = read_llff_scene(root, downscale=downscale)
    elif layout == "inria":
        from .inria import inria_source, read_inria_scene

        source = inria_source(root)
        if (source / "transforms_train.json").is_file():  # trained on a Blender scene: its own split files
            return load_scene(source, split, llffhold, downscale, "blender")
        cams = read_inria_scene(root, downscale=downscale)
    else:
        cams = read_nerfstudio_scene(root, downscale=downscale)
    return split_views(cams, split, llffhold)


def load_scene_points(root: str | Path, layout: str | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Sparse points ``(xyz (P, 3), rgb (P, 3) in [0, 1])`` of a scene, or None when it has none.

    COLMAP: ``points3D``; LLFF: ``sparse/0/points3D.bin`` if present; nerfstudio: the ``ply_file_path`` point
    cloud, in the frame of transforms.json.
    """
    root = Path(root)
    layout = layout or detect_layout(root)
    if layout == "colmap":
        _, xyz, rgb = read_colmap_scene(root, check_images=False)
        return (xyz, rgb) if len(xyz) else None
    if layout == "llff":
        from .llff import read_llff_points

        return read_llff_points(root)
    if layout == "nerfstudio":
        meta = _read_json(root / "transforms.json")
        ply = meta.get("ply_file_path")
        if ply and (root / ply).is_file():
            return read_ply_points(root / ply)
    return None


def scene_pretrained_model(root: str | Path, layout: str | None = None) -> Path | None:
    """The dense model a scene folder ships: the highest ``point_cloud/iteration_<k>/point_cloud.ply`` of an INRIA
    output, ``<root>/point_cloud.ply`` otherwise (the embedded scenes), or None."""
    root = Path(root)
    layout = layout or detect_layout(root, allow_images=True)
    if layout == "inria":
        from .inria import inria_ply

        return inria_ply(root)
    return root / "point_cloud.ply" if (root / "point_cloud.ply").is_file() else None


def scene_white_background(root: str | Path, layout: str | None = None) -> bool:
    """Whether the scene is rendered on white: Blender scenes, and INRIA outputs trained with ``white_background``."""
    root = Path(root)
    layout = layout or detect_layout(root, allow_images=True)
    if layout == "inria":
        from .inria import inria_config

        return bool(inria_config(root).get("white_background", False))
    return layout == "blender"


def read_ply_points(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``x, y, z`` and (if present) ``red, green, blue`` of a point-cloud PLY (plyfile)."""
    from plyfile import PlyData

    path = Path(path)
    try:
        v = PlyData.read(str(path))["vertex"]
        xyz = np.stack([np.asarray(v["x"]), np.asarray(v["y"]), np.asarray(v["z"])], axis=1).astype(np.float32)
        names = v.data.dtype.names or ()
        if all(c in names for c in ("red", "green", "blue")):
            rgb = np.stack([np.asarray(v[c]) for c in ("red", "green", "blue")], axis=1).astype(np.float32) / 255.0
        else:
            rgb = np.full_like(xyz, 0.5)
    except Exception as e:
        raise SceneError(f"{path}: cannot read the point cloud ({e.__class__.__name__}: {e})") from e
    return torch.from_numpy(xyz), torch.from_numpy(rgb)


# --------------------------------------------------------------------------- nerfstudio / DL3DV

def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SceneError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(meta, dict):
        raise SceneError(f"{path}: expected a JSON object")
    return meta


def _frame_image(root: Path, file_path: str, downscale: int | None) -> Path | None:
    """Resolve a frame's image; nerfstudio keeps downscaled copies in ``images_{d}/`` next to ``images/``."""
    rel = Path(file_path)
    candidates: list[Path] = []
    parts = rel.parts
    def variants(d: int) -> list[Path]:
        out = []
        if parts and parts[0].startswith("images"):
            out.append(root / Path(f"images_{d}" if d > 1 else "images", *parts[1:]))
        out.append(root / f"images_{d}" / rel.name if d > 1 else root / "images" / rel.name)
        return out
    if downscale is None or downscale == 1:
        candidates.append(root / rel)
    if downscale is None:
        for d in (1, 2, 4, 8):
            candidates += variants(d)
    else:
        candidates += variants(downscale)
    for c in candidates:
        if c.is_file():
            return c
        for ext in IMAGE_EXTS:
            if c.with_suffix(ext).is_file():
                return c.with_suffix(ext)
    return None


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise SceneError(f"{path}: cannot read image ({e.__class__.__name__}: {e})") from e


def read_nerfstudio_scene(root: str | Path, downscale: int | None = None, json_name: str = "transforms.json"
                          ) -> list[Camera]:
    """All cameras of a nerfstudio ``transforms.json`` (DL3DV-10K's format), sorted by image file name.

    ``transform_matrix`` is camera-to-world with OpenGL axes (x right, y up, z back): it is flipped to
    OpenCV and inverted. Intrinsics ``fl_x, fl_y, cx, cy`` refer to ``w x h`` (per frame or global) and are
    scaled to the actual image file size, so ``images_4/`` with full-resolution intrinsics works.
    Distortion (``k1, k2, k3, k4, p1, p2``) is ignored with a warning.
    """
    root = Path(root)
    jpath = root / json_name
    if not jpath.is_file():
        raise SceneError(f"{jpath}: not found (expected a nerfstudio transforms.json)")
    meta = _read_json(jpath)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise SceneError(f"{jpath}: no 'frames' listed")
    if downscale not in (None, 1, 2, 4, 8):
        raise SceneError(f"downscale must be 1, 2, 4 or 8, got {downscale}")
    dist = {k: float(meta.get(k, 0.0)) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    if any(abs(v) > 0 for v in dist.values()):
        warnings.warn(f"{jpath}: lens distortion {dist} is ignored (treated as a pinhole camera)", stacklevel=2)
    rows = []
    missing = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise SceneError(f"{jpath}: frame {i} lacks 'file_path' or 'transform_matrix'")
        p = _frame_image(root, fr["file_path"], downscale)
        if p is None:
            missing.append(fr["file_path"])
        rows.append((fr, p))
    if missing:
        where = "images/" if downscale in (None, 1) else f"images_{downscale}/"
        raise SceneError(f"{jpath}: {len(missing)} of {len(frames)} images not found (looked in {where}"
                         f"{' and images_2/4/8/' if downscale is None else ''}), e.g. {', '.join(missing[:5])}")
    rows.sort(key=lambda r: Path(r[0]["file_path"]).name)
    cams = []
    for fr, p in rows:
        get = lambda k, d=None: fr.get(k, meta.get(k, d))  # noqa: E731 - per-frame values override global ones
        W, H = _image_size(p)
        w0, h0 = float(get("w", W)), float(get("h", H))
        if get("fl_x") is not None:
            fx = float(get("fl_x"))
            fy = float(get("fl_y", fx))
        elif get("camera_angle_x") is not None:
            fx = 0.5 * w0 / math.tan(0.5 * float(get("camera_angle_x")))
            fy = 0.5 * h0 / math.tan(0.5 * float(get("camera_angle_y"))) if get("camera_angle_y") is not None else fx
        else:
            raise SceneError(f"{jpath}: no focal length (fl_x or camera_angle_x) for {fr['file_path']}")
        cx, cy = float(get("cx", w0 / 2)), float(get("cy", h0 / 2))
        sx, sy = W / w0, H / h0
        m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if m.shape == (3, 4):
            m = np.vstack([m, [0, 0, 0, 1]])
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise SceneError(f"{jpath}: bad transform_matrix for {fr['file_path']}")
        c2w = torch.from_numpy(m) @ GL_TO_CV.double()
        w2c = torch.linalg.inv(c2w)
        cams.append(Camera(Path(fr["file_path"]).name, W, H, fx * sx, fy * sy, cx * sx, cy * sy, w2c.float(), p,
                           {"format": "nerfstudio"}))
    return cams


def write_nerfstudio_transforms(path: str | Path, cameras: Sequence[Camera], root: str | Path | None = None) -> None:
    """Write cameras as a nerfstudio ``transforms.json`` (per-frame intrinsics; used by tests and exports)."""
    from ..io.atomic import atomic_write_json

    path = Path(path)
    root = Path(root) if root is not None else path.parent
    frames = []
    for c in cameras:
        c2w = torch.linalg.inv(c.world_to_cam.double()) @ GL_TO_CV.double()
        rel = Path(c.image_path).resolve().relative_to(root.resolve()).as_posix() if c.image_path else c.name
        frames.append({"file_path": rel, "transform_matrix": c2w.tolist(), "fl_x": c.fx, "fl_y": c.fy,
                       "cx": c.cx, "cy": c.cy, "w": c.width, "h": c.height})
    atomic_write_json(path, {"camera_model": "PINHOLE", "frames": frames})


__all__ = ["SceneError", "LAYOUTS", "detect_layout", "image_files", "is_scene_dir", "find_scenes", "load_scene",
           "load_scene_points", "scene_pretrained_model", "scene_white_background", "read_nerfstudio_scene",
           "write_nerfstudio_transforms", "read_ply_points", "ColmapError"]

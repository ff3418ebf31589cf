"""A source scene for artifact synthesis: views per split and their ground-truth images.

Layouts are detected and read by :mod:`nifi_lib.data.scenes` (``detect_layout``, ``load_scene``), so the
splits are the project's everywhere (Blender: the transforms files; others: sorted by name, test = every
8th view, 3DGS ``llffhold = 8``). For the proxy and precomputed modes only images are needed, so the
``images`` layout (``images/``, or ``images_<d>/`` with ``downscale = d``, no cameras) is accepted too:
its files are sorted by name and split with the same rule (test = index % 8 == 0).

Background: RGBA images (NeRF-synthetic) are composited on white for Blender scenes and INRIA outputs
trained with ``white_background`` (the 3DGS ``--white_background`` setting) and on black otherwise; renders use
the same background.
View names are image file stems, made unique within a split (Blender ``all`` has ``train/r_0`` and
``test/r_0``: clashing stems are prefixed with their folder name). Nothing is written here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..data.scenes import (SceneError, detect_layout, find_scenes as find_scene_dirs, image_files, load_scene,
                           scene_white_background)

SPLITS = ("train", "test", "all")
LLFFHOLD = 8
WHITE = (1.0, 1.0, 1.0)
BLACK = (0.0, 0.0, 0.0)


@dataclass
class View:
    """One ground-truth view: its name (file stem), image path and camera (None for image-only scenes)."""

    name: str
    image_path: Path
    camera: object | None = None


@dataclass
class SourceScene:
    name: str
    root: Path
    format: str                       # blender | inria | embedded | colmap | llff | nerfstudio | images
    background: tuple[float, float, float]
    downscale: int | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def has_cameras(self) -> bool:
        return self.format != "images"

    def views(self, split: str) -> list[View]:
        """Views of ``split`` (train / test / all) in a fixed order; names are unique within the split."""
        if split not in SPLITS:
            raise SceneError(f"unknown split {split!r} (train, test or all)")
        if split not in self._cache:
            self._cache[split] = _unique_names(self._read_views(split))
        return list(self._cache[split])

    def _read_views(self, split: str) -> list[View]:
        if self.has_cameras:
            cams = load_scene(self.root, split, llffhold=LLFFHOLD, downscale=self.downscale, layout=self.format)
            return [View(Path(c.image_path).stem if c.image_path else c.name, Path(c.image_path), c) for c in cams]
        files = image_files(self.root, self.downscale)
        if not files:
            raise SceneError(f"{self.root}: no image files found (images-only scene, downscale={self.downscale})")
        chosen = files if split == "all" else [p for i, p in enumerate(files)
                                               if (i % LLFFHOLD == 0) == (split == "test")]
        return [View(p.stem, p, None) for p in chosen]

    def load_images(self, views: Sequence[View]) -> torch.Tensor:
        """``(V, 3, H, W)`` ground truth in [0, 1]; RGBA composited on this scene's background."""
        from ..gs.cameras import _load_rgb_on_background, load_camera_images

        if not views:
            raise SceneError(f"{self.root}: no views to load")
        if all(v.camera is not None for v in views):
            return load_camera_images([v.camera for v in views], background=self.background)
        imgs = [_load_rgb_on_background(v.image_path, self.background) for v in views]
        shapes = {tuple(i.shape) for i in imgs}
        if len(shapes) != 1:
            raise SceneError(f"{self.root}: images have different sizes {sorted(shapes)[:3]}")
        return torch.stack(imgs)


def _unique_names(views: list[View]) -> list[View]:
    seen: dict[str, int] = {}
    for v in views:
        seen[v.name] = seen.get(v.name, 0) + 1
    out = [View(f"{v.image_path.parent.name}_{v.name}" if seen[v.name] > 1 else v.name, v.image_path, v.camera)
           for v in views]
    if len({v.name for v in out}) != len(out):
        raise SceneError("view names are not unique after prefixing with their folder")
    return out


def open_scene(root: str | Path, name: str | None = None, downscale: int | None = None,
               background: Sequence[float] | None = None, require_cameras: bool = False) -> SourceScene:
    """Recognise the layout of ``root`` and return a :class:`SourceScene` (reads nothing heavy yet)."""
    root = Path(root)
    fmt = detect_layout(root, allow_images=True, downscale=downscale)
    if require_cameras and fmt == "images":
        raise SceneError(f"{root}: the scene has images only (no cameras.json, transforms*.json or COLMAP model); "
                         "rendering a compressed model needs cameras")
    bg = (tuple(float(x) for x in background) if background is not None
          else (WHITE if scene_white_background(root, fmt) else BLACK))
    return SourceScene(name or root.name, root, fmt, bg, downscale)


def find_scenes(dataset_root: str | Path, downscale: int | None = None) -> list[Path]:
    """``[dataset_root]`` if it is a scene, else the scene folders directly under it (sorted), images-only
    scenes included (:func:`nifi_lib.data.scenes.find_scenes` at depth 1)."""
    root = Path(dataset_root)
    if not root.is_dir():
        raise SceneError(f"{root}: dataset folder not found")
    found = find_scene_dirs(root, max_depth=1, allow_images=True, downscale=downscale)
    if not found:
        raise SceneError(f"{root}: no scenes found (sub-folders with transforms_train.json, cameras.json, a COLMAP "
                         "model, poses_bounds.npy, transforms.json or images/)")
    return found

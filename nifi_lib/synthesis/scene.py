"""A source scene for artifact synthesis: views per split and their ground-truth images.

Layouts with cameras (``blender``, ``embedded``, ``colmap``, ``nerfstudio``) are read with
:func:`nifi_lib.data.scenes.load_scene`, so the splits are the project's everywhere (Blender: the
transforms files; others: sorted by name, test = every 8th view, 3DGS ``llffhold = 8``). For the proxy
and precomputed modes only images are needed, so one more layout is accepted there:

* ``images``: a folder ``images/`` (or ``images_<d>/`` with ``downscale = d``) of image files, sorted by
  name and split with the same rule (test = index % 8 == 0).

Background: RGBA images (NeRF-synthetic) are composited on white for Blender scenes (the 3DGS
``--white_background`` setting) and on black otherwise; renders use the same background.
View names are image file stems, made unique within a split (Blender ``all`` has ``train/r_0`` and
``test/r_0``: clashing stems are prefixed with their folder name). Nothing is written here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import NifiError
from ..io.images import IMAGE_EXTS

SPLITS = ("train", "test", "all")
LLFFHOLD = 8
WHITE = (1.0, 1.0, 1.0)
BLACK = (0.0, 0.0, 0.0)


class SceneError(NifiError, ValueError):
    """A source scene cannot be read (unknown layout, missing or unreadable images...)."""


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
    format: str                       # blender | embedded | colmap | nerfstudio | images
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
            from ..data.scenes import load_scene

            cams = load_scene(self.root, split, llffhold=LLFFHOLD, downscale=self.downscale, layout=self.format)
            return [View(Path(c.image_path).stem if c.image_path else c.name, Path(c.image_path), c) for c in cams]
        files = _image_files(self.root, self.downscale)
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


def _image_folder(root: Path, downscale: int | None) -> Path:
    name = "images" if downscale in (None, 1) else f"images_{downscale}"
    return root / name


def _image_files(root: Path, downscale: int | None) -> list[Path]:
    folder = _image_folder(root, downscale)
    if not folder.is_dir():
        raise SceneError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise SceneError(f"{folder}: no image files found")
    return files


def _unique_names(views: list[View]) -> list[View]:
    seen: dict[str, int] = {}
    for v in views:
        seen[v.name] = seen.get(v.name, 0) + 1
    out = [View(f"{v.image_path.parent.name}_{v.name}" if seen[v.name] > 1 else v.name, v.image_path, v.camera)
           for v in views]
    if len({v.name for v in out}) != len(out):
        raise SceneError("view names are not unique after prefixing with their folder")
    return out


def detect_format(root: str | Path, downscale: int | None = None) -> str | None:
    """The layout of a scene folder (module docstring), or None if it is not a scene."""
    from ..data.scenes import SceneError as DataSceneError, detect_layout

    root = Path(root)
    if not root.is_dir():
        return None
    try:
        return detect_layout(root)
    except DataSceneError:
        pass
    folder = _image_folder(root, downscale)
    if folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir()):
        return "images"
    return None


def open_scene(root: str | Path, name: str | None = None, downscale: int | None = None,
               background: Sequence[float] | None = None, require_cameras: bool = False) -> SourceScene:
    """Recognise the layout of ``root`` and return a :class:`SourceScene` (reads nothing heavy yet)."""
    root = Path(root)
    if not root.is_dir():
        raise SceneError(f"{root}: scene folder not found")
    fmt = detect_format(root, downscale)
    if fmt is None:
        raise SceneError(f"{root}: not a scene (expected transforms_train.json, cameras.json, a COLMAP model, "
                         "transforms.json, or an images/ folder)")
    if require_cameras and fmt == "images":
        raise SceneError(f"{root}: the scene has images only (no cameras.json, transforms*.json or COLMAP model); "
                         "rendering a compressed model needs cameras")
    bg = tuple(float(x) for x in background) if background is not None else (WHITE if fmt == "blender" else BLACK)
    return SourceScene(name or root.name, root, fmt, bg, downscale)


def find_scenes(dataset_root: str | Path, downscale: int | None = None) -> list[Path]:
    """Scene folders directly under ``dataset_root`` (sorted; or ``dataset_root`` itself if it is one)."""
    root = Path(dataset_root)
    if not root.is_dir():
        raise SceneError(f"{root}: dataset folder not found")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
                  and detect_format(p, downscale) is not None)
    if subs:
        return subs
    if detect_format(root, downscale) is not None:
        return [root]
    raise SceneError(f"{root}: no scenes found (sub-folders with transforms_train.json, cameras.json, a COLMAP "
                     "model, transforms.json or images/)")

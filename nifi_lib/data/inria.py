"""The output folder of the INRIA 3DGS code (``train.py -m <model_path>``).

Layout::

    <model_path>/cfg_args                               Namespace(source_path='...', images='images', resolution=-1,
                                                        white_background=False, sh_degree=3, eval=True, ...)
    <model_path>/cameras.json                           [{id, img_name, width, height, position, rotation, fx, fy}]
    <model_path>/point_cloud/iteration_<k>/point_cloud.ply

``cfg_args`` is the ``repr`` of an ``argparse.Namespace``; :func:`parse_cfg_args` reads it without ``eval``
(``ast.parse`` + ``ast.literal_eval`` of each keyword value). ``cameras.json`` (3DGS' ``camera_to_JSON``)
stores each camera's centre ``position`` and camera-to-world rotation ``rotation`` (OpenCV axes, the COLMAP
frame of the source scene) and ``fx, fy`` at the training resolution ``width x height``, principal point at
the centre; intrinsics are scaled to the actual image files. The cameras are sorted by image name and split
as 3DGS does (test = every 8th). Images come from the source scene (``source_path`` + ``images`` or
``images_<d>``); the dense model is the PLY of the highest ``iteration_<k>``. A model trained on a Blender
scene (``transforms_train.json`` in ``source_path``: image names repeat across its splits) is read through
the source's own Blender reader and split files (:func:`nifi_lib.data.scenes.load_scene`).

It is told apart from the project's own ``cameras.json`` by ``cfg_args``/``point_cloud/`` and by its entries
(``img_name``/``rotation``/``position`` instead of ``name``/``world_to_cam``).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .scenes import SceneError

CFG_ARGS = "cfg_args"
CAMERAS_JSON = "cameras.json"
_ITER = re.compile(r"^iteration_(\d+)$")


class InriaError(SceneError):
    """An INRIA 3DGS output folder cannot be used."""


def parse_cfg_args(path: str | Path) -> dict[str, Any]:
    """The keyword values of a ``Namespace(k=v, ...)`` text, as Python literals (never evaluated as code)."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise InriaError(f"{path}: cannot read ({e})") from e
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise InriaError(f"{path}: not a Namespace(...) text ({e.msg})") from e
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace"
            and not call.args):
        raise InriaError(f"{path}: expected 'Namespace(key=value, ...)', got {text[:60]!r}")
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise InriaError(f"{path}: '**' in Namespace(...) is not supported")
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError as e:
            raise InriaError(f"{path}: the value of {kw.arg!r} is not a literal ({ast.unparse(kw.value)[:40]})") from e
    return out


def is_inria_cameras(path: str | Path) -> bool:
    """Whether a ``cameras.json`` holds INRIA 3DGS entries (``img_name``, ``rotation``, ``position``)."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (isinstance(items, list) and bool(items) and isinstance(items[0], dict)
            and all(k in items[0] for k in ("img_name", "rotation", "position")))


def is_inria_output(root: str | Path) -> bool:
    """An INRIA output folder: ``cfg_args`` or ``point_cloud/iteration_*``, with an INRIA ``cameras.json``."""
    root = Path(root)
    marker = (root / CFG_ARGS).is_file() or any(_ITER.match(p.name) for p in (root / "point_cloud").glob("iteration_*"))
    return marker and (root / CAMERAS_JSON).is_file() and is_inria_cameras(root / CAMERAS_JSON)


def inria_ply(root: str | Path) -> Path:
    """``point_cloud/iteration_<k>/point_cloud.ply`` with the highest ``k``."""
    root = Path(root)
    its = sorted(((int(m.group(1)), p) for p in (root / "point_cloud").glob("iteration_*")
                  if (m := _ITER.match(p.name)) and (p / "point_cloud.ply").is_file()), key=lambda t: t[0])
    if not its:
        raise InriaError(f"{root / 'point_cloud'}: no iteration_<k>/point_cloud.ply (not a trained INRIA 3DGS output)")
    return its[-1][1] / "point_cloud.ply"


def inria_config(root: str | Path) -> dict[str, Any]:
    """``cfg_args`` as a dict ({} when the folder has none)."""
    p = Path(root) / CFG_ARGS
    return parse_cfg_args(p) if p.is_file() else {}


def inria_source(root: str | Path) -> Path:
    """The source scene folder of ``cfg_args`` (absolute, or relative to the output folder or the working dir)."""
    root = Path(root)
    cfg = inria_config(root)
    src = cfg.get("source_path")
    if not src:
        raise InriaError(f"{root / CFG_ARGS}: no source_path (the images of the scene are needed)")
    for cand in (Path(src), root / src):
        if cand.is_dir():
            return cand
    raise InriaError(f"{root / CFG_ARGS}: source_path {src!r} not found (the folder with the scene's images); "
                     "fix source_path in cfg_args, or pass the source scene as --scene and the PLY as --ply")


def read_inria_cameras(path: str | Path) -> list[dict]:
    """The entries of an INRIA ``cameras.json`` (checked)."""
    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InriaError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(items, list) or not items:
        raise InriaError(f"{path}: expected a non-empty list of cameras")
    keys = ("img_name", "width", "height", "position", "rotation", "fx", "fy")
    for i, d in enumerate(items):
        if not isinstance(d, dict) or any(k not in d for k in keys):
            raise InriaError(f"{path}: camera {i} lacks one of the fields {list(keys)}")
        r, p = np.asarray(d["rotation"], dtype=np.float64), np.asarray(d["position"], dtype=np.float64)
        if r.shape != (3, 3) or p.shape != (3,) or not (np.all(np.isfinite(r)) and np.all(np.isfinite(p))):
            raise InriaError(f"{path}: camera {i} ({d['img_name']}): rotation must be 3x3 and position 3 "
                             "finite numbers")
    return items


def _find_image(folder: Path, name: str) -> Path | None:
    from .colmap import IMAGE_EXTS

    p = folder / name
    if p.suffix in IMAGE_EXTS and p.is_file():
        return p
    for ext in IMAGE_EXTS:
        q = folder / f"{name}{ext}"
        if q.is_file():
            return q
        q = (folder / name).with_suffix(ext)
        if q.is_file():
            return q
    return None


def read_inria_scene(root: str | Path, downscale: int | None = None) -> list:
    """Cameras of an INRIA output folder, sorted by image name, with images from the source scene."""
    from PIL import Image

    from ..gs.cameras import Camera

    root = Path(root)
    cfg = inria_config(root)
    items = read_inria_cameras(root / CAMERAS_JSON)
    src = inria_source(root)
    images = str(cfg.get("images") or "images")
    if downscale not in (None, 1, 2, 4, 8):
        raise InriaError(f"downscale must be 1, 2, 4 or 8, got {downscale}")
    folder = src / (images if downscale in (None, 1) else f"{images}_{downscale}")
    if not folder.is_dir():
        raise InriaError(f"{folder}: image folder of {root / CFG_ARGS} not found (downscale={downscale})")
    cams, missing = [], []
    for d in sorted(items, key=lambda d: str(d["img_name"])):
        p = _find_image(folder, str(d["img_name"]))
        if p is None:
            missing.append(str(d["img_name"]))
            continue
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception as e:
            raise InriaError(f"{p}: cannot read image ({e.__class__.__name__}: {e})") from e
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = np.asarray(d["rotation"], np.float64), np.asarray(d["position"], np.float64)
        sx, sy = w / float(d["width"]), h / float(d["height"])
        cams.append(Camera(p.name, w, h, float(d["fx"]) * sx, float(d["fy"]) * sy, 0.5 * w, 0.5 * h,
                           torch.from_numpy(np.linalg.inv(c2w)).float(), p, {"format": "inria", "id": d.get("id")}))
    if missing:
        raise InriaError(f"{root / CAMERAS_JSON}: {len(missing)} of {len(items)} images not found in {folder}, "
                         f"e.g. {', '.join(missing[:5])}")
    return cams


def write_inria_output(root: str | Path, cameras: Sequence, model, source_path: str | Path, iteration: int = 30000,
                       images: str = "images", resolution: int = -1, white_background: bool = False) -> None:
    """Write an INRIA-style output folder (``cfg_args``, ``cameras.json``, ``point_cloud/iteration_<k>/``) from
    cameras (OpenCV, centred principal point) and a model, as 3DGS' ``train.py`` lays it out (tests, exports)."""
    from ..gs.model import save_ply
    from ..io.atomic import atomic_write_json

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = (f"Namespace(data_device='cuda', eval=True, images={images!r}, model_path={str(root)!r}, "
           f"resolution={int(resolution)}, sh_degree={model.sh_degree}, source_path={str(source_path)!r}, "
           f"white_background={bool(white_background)!r})")
    (root / CFG_ARGS).write_text(cfg)
    entries = []
    for i, c in enumerate(cameras):
        c2w = np.linalg.inv(c.world_to_cam.double().numpy())
        entries.append({"id": i, "img_name": Path(c.name).stem, "width": c.width, "height": c.height,
                        "position": c2w[:3, 3].tolist(), "rotation": c2w[:3, :3].tolist(), "fy": c.fy, "fx": c.fx})
    atomic_write_json(root / CAMERAS_JSON, entries)
    save_ply(model, root / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply")


__all__ = ["InriaError", "parse_cfg_args", "is_inria_cameras", "is_inria_output", "inria_ply", "inria_config",
           "inria_source", "read_inria_cameras", "read_inria_scene", "write_inria_output"]

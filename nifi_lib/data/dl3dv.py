"""Ingest a local DL3DV subset (the paper's training data: 1000 DL3DV scenes).

DL3DV-10K is a gated Hugging Face dataset: accept its terms, download a subset with
``huggingface-cli download`` (see docs/datasets.md), then run
``nifi download --dataset dl3dv --out data/ --dl3dv_source /path/to/subset``.

Accepted source layouts (searched up to four folders deep; one scene per 64-hex-digit hash folder):

* ``<hash>/images_4/*.png`` + ``<hash>/transforms.json`` (nerfstudio; DL3DV-ALL-960P),
* ``<hash>/colmap/sparse/0/`` or ``<hash>/sparse/0/`` + ``images*/`` (COLMAP),
* ``<hash>/colmap/{sparse/0, images*, transforms.json}`` and ``<hash>/nerfstudio/{images_4, transforms.json}``
  (DL3DV-10K sample / benchmark releases).

Each scene becomes ``<out>/dl3dv/<hash>/`` with its ``images*/`` folders (symbolic links by default,
or copies), ``transforms.json`` and ``sparse/0/`` copied, and a completion file; ``<out>/dl3dv/index.json``
lists every ingested scene. Scenes are staged in a temporary folder and renamed into place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from .colmap import detect_model_format, find_sparse_dir
from .extract import remove_tree
from .scenes import SceneError, detect_layout, load_scene

SCENE_MARKER = ".nifi_complete.json"
INDEX_NAME = "index.json"
WRAPPERS = ("colmap", "nerfstudio", "gaussian_splat", "dense", "processed")
_HASH = re.compile(r"^[0-9a-f]{64}$")


class DL3DVError(NifiError, ValueError):
    """The DL3DV source folder is missing or holds no usable scene."""


def _has_images(d: Path) -> bool:
    return any(p.is_dir() and p.name.split("_")[0] == "images" for p in d.iterdir())


def _scene_name(data_dir: Path, source: Path) -> str:
    for p in [data_dir, *data_dir.parents]:
        if p == source.parent:
            break
        if _HASH.match(p.name):
            return p.name
    if data_dir.name in WRAPPERS and data_dir != source:
        return data_dir.parent.name
    return data_dir.name


def find_source_scenes(source: str | Path, max_depth: int = 4) -> list[tuple[str, Path, str]]:
    """``(scene name, data folder, layout)`` of every usable scene below ``source``, sorted by name.

    A data folder has a COLMAP model or a ``transforms.json`` and at least one ``images*`` folder. When a
    scene has several (``colmap/`` and ``nerfstudio/``), the first in name order is used.
    """
    source = Path(source)
    found: dict[str, tuple[Path, str]] = {}

    def walk(d: Path, depth: int) -> None:
        try:
            layout = detect_layout(d)
        except SceneError:
            layout = None
        if layout in ("colmap", "nerfstudio") and _has_images(d):
            found.setdefault(_scene_name(d, source), (d, layout))
            return
        if depth >= max_depth:
            return
        try:
            subdirs = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        for c in subdirs:
            if c.name.split("_")[0] == "images" or c.name == "sparse":
                continue
            walk(c, depth + 1)

    walk(source, 0)
    return sorted(((n, d, lay) for n, (d, lay) in found.items()), key=lambda t: t[0])


def _stage_scene(data_dir: Path, staged: Path, mode: str) -> list[str]:
    """Populate ``staged`` from ``data_dir``: image folders linked/copied, camera files copied."""
    staged.mkdir(parents=True)
    images = []
    for p in sorted(data_dir.iterdir()):
        if p.is_dir() and p.name.split("_")[0] == "images" and (p.name == "images" or p.name[7:].isdigit()):
            if mode == "symlink":
                os.symlink(p.resolve(), staged / p.name, target_is_directory=True)
            else:
                shutil.copytree(p, staged / p.name)
            images.append(p.name)
    tj = data_dir / "transforms.json"
    if tj.is_file():
        shutil.copy2(tj, staged / "transforms.json")
        try:
            ply = json.loads(tj.read_text()).get("ply_file_path")
        except ValueError:
            ply = None
        if ply and (data_dir / ply).is_file() and ".." not in Path(ply).parts and not Path(ply).is_absolute():
            (staged / ply).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data_dir / ply, staged / ply)
    sparse = find_sparse_dir(data_dir)
    if sparse is not None:
        ext = detect_model_format(sparse)
        (staged / "sparse" / "0").mkdir(parents=True)
        for n in ("cameras", "images", "points3D"):
            if (sparse / f"{n}{ext}").is_file():
                shutil.copy2(sparse / f"{n}{ext}", staged / "sparse" / "0" / f"{n}{ext}")
    return images


def ingest_dl3dv(source: str | Path, out: str | Path, mode: str = "symlink", limit: int | None = None,
                 progress: bool = True) -> dict:
    """Ingest the scenes of a local DL3DV subset into ``<out>/dl3dv/``; returns the index (also written).

    ``mode``: ``symlink`` (image folders are links to ``source``; keep the source) or ``copy``.
    ``limit``: ingest at most this many scenes (in name order; the paper uses 1000). Scenes already
    ingested are skipped; unusable scenes (missing images, bad camera files) are left out and reported in
    the index's ``skipped`` list with the reason.
    """
    source, out = Path(source).expanduser(), Path(out)
    if mode not in ("symlink", "copy"):
        raise DL3DVError(f"unknown mode {mode!r} (symlink or copy)")
    if not source.is_dir():
        raise DL3DVError(f"{source}: DL3DV source folder not found. Download a DL3DV subset first (docs/datasets.md: "
                         "accept the terms of the gated Hugging Face dataset DL3DV/DL3DV-ALL-960P, then "
                         "huggingface-cli download) and pass its folder with --dl3dv_source")
    scenes = find_source_scenes(source)
    if not scenes:
        raise DL3DVError(f"{source}: no DL3DV scene found (expected <hash>/images_4/ with transforms.json or "
                         "colmap/sparse/0/, up to four folders deep)")
    if limit is not None:
        scenes = scenes[:limit]
    dest_root = out / "dl3dv"
    dest_root.mkdir(parents=True, exist_ok=True)
    skipped = []
    for name, data_dir, layout in tqdm(scenes, desc="ingest DL3DV", unit="scene", disable=not progress):
        target = dest_root / name
        if (target / SCENE_MARKER).is_file():
            continue
        if target.exists():
            skipped.append({"scene": name, "source": str(data_dir),
                            "reason": f"{target} exists without {SCENE_MARKER} (not made by nifi); move or delete it"})
            continue
        tmp = Path(tempfile.mkdtemp(prefix=".nifi-ingest-", dir=dest_root))
        try:
            staged = tmp / name
            images = _stage_scene(data_dir, staged, mode)
            try:
                cams = load_scene(staged, split="all")
            except NifiError as e:  # reported in the index (and by the CLI); the other scenes go on
                reason = str(e).replace(str(staged), str(data_dir))
                skipped.append({"scene": name, "source": str(data_dir), "reason": reason})
                continue
            atomic_write_json(staged / SCENE_MARKER, {
                "scene": name, "source": str(data_dir.resolve()), "layout": detect_layout(staged),
                "mode": mode, "images": images, "num_images": len(cams),
                "image_folder": cams[0].image_path.parent.name if cams and cams[0].image_path else None,
                "width": cams[0].width if cams else None, "height": cams[0].height if cams else None})
            staged.replace(target)
        finally:
            remove_tree(tmp)
    return write_index(dest_root, source, skipped)


def write_index(dest_root: Path, source: Path | None = None, skipped: list | None = None) -> dict:
    """(Re)write ``<dest_root>/index.json`` from the completion files of the scenes there."""

    entries = []
    for d in sorted(p for p in dest_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = d / SCENE_MARKER
        if m.is_file():
            try:
                info = json.loads(m.read_text())
            except ValueError:
                continue
            entries.append({"scene": d.name, "path": d.name, **{k: info.get(k) for k in
                            ("layout", "num_images", "image_folder", "width", "height", "source", "mode")}})
    index = {"dataset": "dl3dv", "num_scenes": len(entries), "scenes": entries, "skipped": skipped or []}
    if source is not None:
        index["source"] = str(Path(source).resolve())
    if not entries:
        raise DL3DVError(f"{dest_root}: no DL3DV scene could be ingested; reasons: "
                         + "; ".join(f"{s['scene']}: {s['reason']}" for s in (skipped or [])[:3]))
    atomic_write_json(dest_root / INDEX_NAME, index)
    return index


def read_index(dest_root: str | Path) -> dict:
    """The ingested DL3DV scenes (``<out>/dl3dv/index.json``)."""

    path = Path(dest_root) / INDEX_NAME
    if not path.is_file():
        raise DL3DVError(f"{path}: no DL3DV index; run 'nifi download --dataset dl3dv --out DIR --dl3dv_source SRC'")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DL3DVError(f"{path}: cannot parse ({e})") from e

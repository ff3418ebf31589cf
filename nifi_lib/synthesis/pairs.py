"""The pair layout and its manifest (Sec. 3: pairs (I, I~) of a real view and a low-rate render).

Layout (the seed's contract)::

    pairs/<scene>/rate_<label>/<split>/clean/<stem>.png      I  = ground-truth view
    pairs/<scene>/rate_<label>/<split>/degraded/<stem>.png   I~ = render of the decoded level at that camera
    pairs/<scene>/manifest.json

``manifest.json``::

    {"scene", "mode", "proxy", "num_gaussians_full", "splits": {split: number of views},
     "levels": [{"level", "label", "num_gaussians", "file", "bytes", "mb", "psnr", "psnr_split"}], ...}

``bytes`` is the on-disk size of ``file`` (the level's ``.nifigs``); ``psnr`` is the mean over the
test views of the PSNR (dB, 8-bit images) of degraded vs clean; ``psnr_split`` says which views were
used (``test``, or the written split when a precomputed set has no test views). Levels are listed
largest first (label 0.1, 0.5, 1.0). A scene folder is always produced whole: it is built in a hidden
staging folder next to it and renamed into place at the end (:func:`staged_directory`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import NifiError
from ..image_quality import mse, psnr_from_mse
from ..io.atomic import atomic_write_json
from ..io.images import save_image, to_uint8
from ..paths import REPO_ROOT

MANIFEST = "manifest.json"


class PairsError(NifiError, ValueError):
    """Pairs cannot be written or a manifest is malformed."""


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (peak 255); ``inf`` for identical images."""
    x, y = (torch.from_numpy(v.astype(np.float64).reshape(1, 1, -1)) for v in (a, b))
    return psnr_from_mse(float(mse(x, y)), data_range=255.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two ``(3, H, W)`` [0, 1] images after 8-bit rounding (what the PNGs on disk hold)."""
    return psnr_uint8(to_uint8(a), to_uint8(b))


def mean_psnr(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    if not finite:
        return float("inf")
    return float(np.mean([min(v, 100.0) for v in values]))  # identical views count as 100 dB


def rate_dir(scene_dir: Path, label: str, split: str) -> Path:
    return Path(scene_dir) / f"rate_{label}" / split


def write_pair(scene_dir: Path, label: str, split: str, name: str, clean: torch.Tensor,
               degraded: torch.Tensor) -> None:
    d = rate_dir(scene_dir, label, split)
    save_image(d / "clean" / f"{name}.png", clean.detach().clamp(0, 1))
    save_image(d / "degraded" / f"{name}.png", degraded.detach().clamp(0, 1))


def display_path(p: str | Path | None) -> str | None:
    """A path relative to the repo root when inside it, else absolute (for manifests)."""
    if p is None:
        return None
    p = Path(p).resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(p)


def read_manifest(scene_dir: Path) -> dict | None:
    path = Path(scene_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PairsError(f"{path}: cannot parse manifest ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
        raise PairsError(f"{path}: manifest has no 'levels' list")
    return data


def manifest_complete(scene_dir: Path, labels: list[str], splits: list[str], mode: str | None = None) -> bool:
    """True when the manifest lists every label and split and every listed pair file exists."""
    try:
        m = read_manifest(scene_dir)
    except PairsError:
        return False
    if m is None or (mode is not None and m.get("mode") != mode):
        return False
    have = {lv.get("label") for lv in m["levels"]}
    counts = m.get("splits", {})
    if not set(labels) <= have or not all(s in counts for s in splits):
        return False
    for label in labels:
        for split in splits:
            d = rate_dir(scene_dir, label, split)
            for kind in ("clean", "degraded"):
                folder = d / kind
                if not folder.is_dir() or len(list(folder.glob("*.png"))) != int(counts[split]):
                    return False
    return True


def merge_levels(old: list[dict], new: list[dict]) -> list[dict]:
    """New entries replace old ones with the same label; sorted largest level (highest rate) first."""
    by_label = {lv["label"]: lv for lv in old}
    by_label.update({lv["label"]: lv for lv in new})
    return sorted(by_label.values(), key=lambda lv: (-(lv.get("level") if lv.get("level") is not None else -1),
                                                    lv["label"]))


def write_manifest(scene_dir: Path, manifest: dict) -> Path:
    path = Path(scene_dir) / MANIFEST
    atomic_write_json(path, manifest)
    return path


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def staged_directory(final: str | Path, keep: bool = True, drop: tuple[str, ...] = ()) -> Iterator[Path]:
    """Build ``final`` in a hidden sibling folder and swap it into place on success.

    With ``keep`` the current content of ``final`` is carried over first (hard links, so nothing is
    copied; files are only ever replaced, never modified in place), except top-level or nested paths
    whose relative posix path is in ``drop``. Any exception removes the staging folder and leaves
    ``final`` exactly as it was; a successful exit leaves ``final`` complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; the final folder gets the usual permissions
    try:
        if keep and final.is_dir():
            def ignore(folder: str, names: list[str]) -> list[str]:
                rel = Path(folder).relative_to(final)
                return [n for n in names if (rel / n).as_posix() in drop]

            shutil.copytree(final, stage, dirs_exist_ok=True, ignore=ignore, copy_function=_link_or_copy,
                            symlinks=True)
        yield stage
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise

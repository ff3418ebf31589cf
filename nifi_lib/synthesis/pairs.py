"""The pair layout and its manifest (Sec. 3: pairs (I, I~) of a real view and a low-rate render): the one
writer (:func:`write_pair`, :func:`write_manifest`) and the one reader (:func:`read_pairs`, :func:`load_pair`)
that ``nifi train``, ``nifi eval``, ``nifi benchmark`` and the figures use; every defect is a :class:`PairError`.

Layout (the seed's contract)::

    pairs/<scene>/rate_<label>/<split>/clean/<stem>.png      I  = ground-truth view
    pairs/<scene>/rate_<label>/<split>/degraded/<stem>.png   I~ = render of the decoded level at that camera
    pairs/<scene>/manifest.json

A benchmark root adds one level, ``<root>/<dataset>/<scene>/rate_<label>/...``. Clean and degraded frames are
matched by file stem.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import NifiError
from ..image_quality import mse, psnr_from_mse
from ..io.atomic import atomic_write_json
from ..io.images import IMAGE_EXTS, load_image, probe_rgb, save_image, to_uint8
from ..paths import REPO_ROOT

MANIFEST = "manifest.json"
LAYOUTS = {"scene": "<scene>/", "benchmark": "<dataset>/<scene>/", "auto": "[<dataset>/]<scene>/"}


class PairError(NifiError, ValueError):
    """The pair layout is broken (a missing folder, an unmatched or differently sized frame, an empty split, a
    malformed manifest) or pairs cannot be written."""


@dataclass(frozen=True)
class PairItem:
    """One clean/degraded frame pair of ``[<dataset>/]<scene>/rate_<rate>/<split>/``."""

    scene: str
    rate: str
    split: str
    file: str   # the degraded frame's file name
    clean: Path
    degraded: Path
    dataset: str | None = None

    @property
    def name(self) -> str:
        """The view name (file stem) that matches the clean and degraded frames."""
        return Path(self.file).stem

    @property
    def key(self) -> str:
        """Relative name ``[<dataset>/]<scene>/rate_<rate>/<split>/<file>`` (used by precomputed methods)."""
        parts = ([self.dataset] if self.dataset else []) + [self.scene, f"rate_{self.rate}", self.split, self.file]
        return "/".join(parts)

    def ident(self) -> dict:
        d = {"dataset": self.dataset} if self.dataset is not None else {}
        return {**d, "scene": self.scene, "rate": self.rate, "split": self.split, "file": self.file}


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
        raise PairError(f"{path}: cannot parse manifest ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
        raise PairError(f"{path}: manifest has no 'levels' list")
    return data


def manifest_complete(scene_dir: Path, labels: list[str], splits: list[str], mode: str | None = None) -> bool:
    """True when the manifest lists every label and split and every listed pair file exists."""
    try:
        m = read_manifest(scene_dir)
    except PairError:
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


# ------------------------------------------------------------------------------------------------
# the reader
# ------------------------------------------------------------------------------------------------
def _visible_dirs(p: Path) -> list[Path]:
    """Sub-folders, without hidden ones (the ``.<scene>.partial-*`` folders of :func:`staged_directory`)."""
    return [c for c in sorted(p.iterdir()) if c.is_dir() and not c.name.startswith(".")]


def _rate_dirs(p: Path) -> list[Path]:
    return [c for c in _visible_dirs(p) if c.name.startswith("rate_")]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in out:
                raise PairError(f"{folder}: two images with the stem '{p.stem}' ({out[p.stem].name}, {p.name})")
            out[p.stem] = p
    return out


def size_mismatch(clean: Path, a: tuple[int, int], degraded: Path, b: tuple[int, int]) -> PairError:
    return PairError(f"size mismatch: {clean} is {a[0]}x{a[1]}, {degraded} is {b[0]}x{b[1]}")


def _scene_dirs(root: Path, layout: str, dataset: str | None, split: str) -> list[tuple[str | None, Path]]:
    """``(dataset, scene folder)`` of every scene under ``root`` in ``layout``."""
    if layout != "benchmark" and _rate_dirs(root):
        return [(dataset, root)]   # one scene folder as the root
    out: list[tuple[str | None, Path]] = []
    for child in _visible_dirs(root):
        if _rate_dirs(child):
            if layout == "benchmark":
                raise PairError(f"{child}: rate_* folders directly under a dataset folder; the benchmark layout is "
                                f"<data_root>/<dataset>/<scene>/rate_<label>/{split}/{{clean,degraded}} "
                                f"(use `nifi eval` for <data_root>/<scene>/rate_<label>/...)")
            out.append((dataset, child))
        elif layout != "scene":
            out += [(child.name, sc) for sc in _visible_dirs(child) if _rate_dirs(sc)]
    return out


def _split_pairs(base: Path, scene: str, rate: str, dataset: str | None, check_sizes: bool) -> list[PairItem]:
    """Pairs of ``base = <scene>/rate_<rate>/<split>/{clean,degraded}``."""
    clean_dir, deg_dir = base / "clean", base / "degraded"
    for d in (clean_dir, deg_dir):
        if not d.is_dir():
            raise PairError(f"{d}: folder missing (expected {base}/clean/ and {base}/degraded/)")
    clean, deg = _images_by_stem(clean_dir), _images_by_stem(deg_dir)
    if not clean and not deg:
        raise PairError(f"{base}: empty split: clean/ and degraded/ hold no images ({', '.join(IMAGE_EXTS)})")
    only_c, only_d = sorted(set(clean) - set(deg)), sorted(set(deg) - set(clean))
    if only_c or only_d:
        msg = []
        if only_c:
            msg.append(f"{len(only_c)} clean frame(s) without a degraded one: {', '.join(clean[s].name for s in only_c[:5])}")
        if only_d:
            msg.append(f"{len(only_d)} degraded frame(s) without a clean one: {', '.join(deg[s].name for s in only_d[:5])}")
        raise PairError(f"{base}: unmatched pairs: " + "; ".join(msg))
    for s in sorted(clean) if check_sizes else ():   # headers only: nothing is decoded
        a, b = probe_rgb(clean[s]), probe_rgb(deg[s])
        if a != b:
            raise size_mismatch(clean[s], a, deg[s], b)
    return [PairItem(scene=scene, rate=rate, split=base.name, file=deg[s].name, clean=clean[s], degraded=deg[s],
                     dataset=dataset) for s in sorted(clean)]


def read_pairs(root: str | Path, split: str = "test", layout: str = "auto", dataset: str | None = None,
               check_sizes: bool = False) -> list[PairItem]:
    """Every pair of ``split`` under ``root``, in path order; :class:`PairError` naming the folder or file for a
    missing root or side, an unmatched frame, an empty split, two frames of one stem, or no pairs at all.

    ``layout``: ``"scene"`` (``root/<scene>/rate_<label>/``, ``nifi eval``), ``"benchmark"``
    (``root/<dataset>/<scene>/rate_<label>/``, ``nifi benchmark``) or ``"auto"`` (either, per sub-folder: ``nifi
    train``, the figures); except for ``"benchmark"`` ``root`` may also be one scene folder. ``dataset`` names the
    items of scenes without a dataset level. Rate folders without ``split`` and hidden folders are skipped. With
    ``check_sizes`` every file's header is checked too (8-bit RGB, size limit, readable:
    :func:`~nifi_lib.io.images.probe_rgb`) and clean and degraded sizes compared, without decoding anything."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise PairError(f"unknown pair layout '{layout}' (use {', '.join(LAYOUTS)})")
    if not root.is_dir():
        raise PairError(f"{root}: pair root not found (make it with `nifi pairs` or `nifi prepare-benchmark`)")
    items: list[PairItem] = []
    skipped: list[str] = []
    for ds, scene_dir in _scene_dirs(root, layout, dataset, split):
        for rd in _rate_dirs(scene_dir):
            if not (rd / split).is_dir():
                skipped.append(f"{rd}: no '{split}' split")
                continue
            items += _split_pairs(rd / split, scene_dir.name, rd.name[len("rate_"):], ds, check_sizes)
    if not items:
        extra = f" ({'; '.join(skipped[:3])})" if skipped else ""
        raise PairError(f"{root}: no pairs found for split '{split}' in the layout "
                        f"<data_root>/{LAYOUTS[layout]}rate_<label>/{split}/{{clean,degraded}}/*.png{extra}")
    return items


def load_pair(item: PairItem) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean, degraded)`` as ``(3, H, W)`` in [0, 1]; a size mismatch names both files."""
    clean, deg = load_image(item.clean), load_image(item.degraded)
    if clean.shape != deg.shape:
        raise size_mismatch(item.clean, (clean.shape[2], clean.shape[1]), item.degraded, (deg.shape[2], deg.shape[1]))
    return clean, deg

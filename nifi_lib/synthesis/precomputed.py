"""Ingest renders of an external codec (HAC++ or any other) as degraded views (``--compression_method precomputed``).

Expected layout (document of the contract)::

    <compressed_root>/<scene>/rate_<label>/<split>/<stem>.png     (or .jpg, .jpeg, ...)

``<scene>`` is the scene folder name under ``--dataset_root``, ``<label>`` the rate name as given by
``--rates`` (e.g. ``rate_0.1``), ``<split>`` ``train``/``test``/``all``; every file is matched to the
clean view with the same file stem (for ``images/DSC07956.JPG`` the render is ``DSC07956.png``). Every
render must match a clean view and every clean view of the split must have a render, with the same
size; otherwise :class:`PrecomputedError` lists the unmatched files and nothing is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import NifiError
from ..io.images import IMAGE_EXTS


class PrecomputedError(NifiError, ValueError):
    """Precomputed renders are missing, unmatched or unreadable."""


def precomputed_folder(compressed_root: str | Path, scene: str, label: str, split: str) -> Path:
    return Path(compressed_root) / scene / f"rate_{label}" / split


def match_renders(compressed_root: str | Path, scene: str, label: str, split: str,
                  view_names: Sequence[str]) -> dict[str, Path]:
    """``{view name: render path}`` for every clean view; raises listing unmatched files on any mismatch."""
    folder = precomputed_folder(compressed_root, scene, label, split)
    if not folder.is_dir():
        raise PrecomputedError(f"{folder}: folder of precomputed renders not found "
                               f"(expected <compressed_root>/<scene>/rate_<label>/<split>/*.png)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    dup = [ps for ps in by_stem.values() if len(ps) > 1]
    if dup:
        raise PrecomputedError(f"{folder}: several renders share a stem: {', '.join(p.name for p in dup[0])}")
    names = set(view_names)
    extra = sorted(p.name for stem, ps in by_stem.items() if stem not in names for p in ps)
    missing = sorted(n for n in view_names if n not in by_stem)
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} render(s) match no clean view: {', '.join(extra[:10])}"
                         + (" ..." if len(extra) > 10 else ""))
        if missing:
            parts.append(f"{len(missing)} clean view(s) have no render: {', '.join(missing[:10])}"
                         + (" ..." if len(missing) > 10 else ""))
        raise PrecomputedError(f"{folder}: unmatched files ({'; '.join(parts)}); renders are matched to the "
                               f"clean views of split '{split}' by file stem")
    return {n: by_stem[n][0] for n in view_names}

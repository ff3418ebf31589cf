"""Rate labels that say which file is largest.

The paper's rates are HAC++ lambda values: the *smallest* lambda (0.1) gives the *largest* file (Table 1:
1.15 MB on Mip-NeRF360 at lambda 0.1, 0.22 MB at 1.0). Our codec's level labels follow the same convention
(``nifi_lib.synthesis.schedule``: "0.1" keeps the most primitives). A bare "rate 0.1" reads as "the
smallest", so every figure and table labels a rate with :func:`rate_label`: ``λ=0.1 (largest file, 1.15 MB)``
when the sizes are known (measured bytes), else ``λ=0.1 (highest rate, largest file)`` from the label order.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def _num(r: str) -> float:
    try:
        return float(r)
    except (TypeError, ValueError):
        return float("inf")


def format_mb(mb: float) -> str:
    """``1.15 MB`` / ``0.36 MB``; below 10 kB in kB (``3.2 kB``)."""
    return f"{mb * 1000:.1f} kB" if mb < 0.01 else f"{mb:.2f} MB"


def rate_label(rate: str, sizes_mb: Mapping[str, float] | None = None, rates: Sequence[str] | None = None,
               prefix: str = "λ=") -> str:
    """``λ=<rate>`` with where it stands among ``rates`` (default: the keys of ``sizes_mb``, else just ``rate``).

    With the measured size of ``rate`` in ``sizes_mb``: ``λ=0.1 (largest file, 1.15 MB)``, ``λ=0.5 (0.36 MB)``,
    ``λ=1.0 (smallest file, 0.22 MB)`` (largest/smallest by size). Without sizes the order comes from the lambda
    values (smaller lambda = larger file): ``λ=0.1 (highest rate, largest file)`` ... ``λ=1.0 (lowest rate,
    smallest file)``; a single rate without sizes says ``λ=0.1 (smaller λ = larger file)``.
    """
    rate = str(rate)
    sizes = {str(k): float(v) for k, v in (sizes_mb or {}).items() if v is not None and v > 0}
    pool = [str(r) for r in (rates if rates is not None else (sizes or [rate]))]
    if rate not in pool:
        pool.append(rate)
    head = f"{prefix}{rate}"
    if rate in sizes:
        known = [r for r in pool if r in sizes]
        where = ""
        if len(known) > 1:
            if sizes[rate] == max(sizes[r] for r in known):
                where = "largest file, "
            elif sizes[rate] == min(sizes[r] for r in known):
                where = "smallest file, "
        return f"{head} ({where}{format_mb(sizes[rate])})"
    if len(pool) > 1:
        lo, hi = min(pool, key=_num), max(pool, key=_num)
        if rate == lo:
            return f"{head} (highest rate, largest file)"
        if rate == hi:
            return f"{head} (lowest rate, smallest file)"
        return head
    return f"{head} (smaller λ = larger file)"


def rate_labels(rates: Sequence[str], sizes_mb: Mapping[str, float] | None = None, prefix: str = "λ=") -> dict[str, str]:
    """:func:`rate_label` of every rate, judged among ``rates``."""
    return {str(r): rate_label(r, sizes_mb, rates, prefix) for r in rates}


def pairs_sizes_mb(pairs_root, dataset: str | None = None) -> dict[str, float]:
    """Mean measured bitstream size (MB) per rate label from the ``manifest.json`` files under ``pairs_root``
    (``<root>/<dataset>/<scene>/manifest.json`` or ``<root>/<scene>/manifest.json``); ``{}`` when none has bytes."""
    import json
    from pathlib import Path

    root = Path(pairs_root)
    if dataset:
        root = root / dataset
    sizes: dict[str, list[float]] = {}
    for man in sorted(root.glob("*/manifest.json")) + sorted(root.glob("*/*/manifest.json")):
        try:
            levels = json.loads(man.read_text()).get("levels", [])
        except (OSError, ValueError, AttributeError):
            continue
        for lv in levels if isinstance(levels, list) else []:
            if isinstance(lv, dict) and lv.get("bytes") and lv.get("label") is not None:
                sizes.setdefault(str(lv["label"]), []).append(float(lv["bytes"]) / 1e6)
    return {k: sum(v) / len(v) for k, v in sizes.items()}


__all__ = ["rate_label", "rate_labels", "format_mb", "pairs_sizes_mb"]

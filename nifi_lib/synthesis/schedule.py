"""The pruning schedule of Sec. 3 (Artifact Synthesis) and the names of the rate levels.

Sec. 3: a pretrained scene G with N primitives is pruned to L = 3 levels G_0 < G_1 < G_2 whose sizes are
spaced geometrically between c_min and the top size,

    |G_0| = c_min,    |G_l| = c_min * exp(l * (log N_top - log c_min) / (L - 1)),

with c_min = 4096 in the paper. The paper writes the top size as |G_{L-1}|; this code reads N_top as the
size of the largest *pruned* level, a parameter ``n_top`` that defaults to ``N // 4`` of the full
model (clipped to N), so even the highest-rate level is a real pruning of the scene.

Rate labels: the paper reports its three rates by the HAC++ lambda used for its test renders,
lambda in {0.1, 0.5, 1.0}, where a larger lambda means a lower rate. We give the same names to our
levels, largest level first:

    label "0.1" = G_2 (largest, highest rate),  "0.5" = G_1,  "1.0" = G_0 (= c_min primitives, lowest rate).

Folders are named ``rate_<label>`` (``pairs/<scene>/rate_0.1/...``), as in the seed's layout.
"""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import NifiError

PAPER_C_MIN = 4096
PAPER_NUM_LEVELS = 3
PAPER_RATE_LABELS = ("0.1", "0.5", "1.0")  # lambda names, highest rate first (= G_2, G_1, G_0)


class ScheduleError(NifiError, ValueError):
    """The level schedule cannot be built from the given sizes."""


def default_n_top(num_gaussians: int) -> int:
    """Our reading of N_top when none is given: a quarter of the full model (at least 1, at most N)."""
    return max(1, min(int(num_gaussians), int(num_gaussians) // 4))


def level_sizes(num_gaussians: int, c_min: int = PAPER_C_MIN, num_levels: int = PAPER_NUM_LEVELS,
                n_top: int | None = None) -> list[int]:
    """Sec. 3 level sizes ``|G_l| = c_min * exp(l * (log N_top - log c_min) / (L - 1))``, l = 0..L-1.

    ``num_gaussians`` is N (the full model); ``n_top`` is N_top, read as the size of the largest pruned
    level (default ``N // 4``, clipped to N). Sizes are rounded to the nearest integer, so
    ``sizes[0] == c_min`` and ``sizes[-1] == n_top``; they are non-decreasing. With ``num_levels == 1``
    the single level is ``c_min``. Raises :class:`ScheduleError` for c_min < 1, c_min > N_top, L < 1.
    """
    n = int(num_gaussians)
    if n < 1:
        raise ScheduleError(f"the full model has {n} Gaussians; need at least 1")
    if int(num_levels) < 1:
        raise ScheduleError(f"number of levels must be >= 1, got {num_levels}")
    if int(c_min) < 1:
        raise ScheduleError(f"c_min must be >= 1, got {c_min}")
    top = default_n_top(n) if n_top is None else min(int(n_top), n)
    if n_top is not None and int(n_top) < 1:
        raise ScheduleError(f"n_top must be >= 1, got {n_top}")
    if c_min > top:
        raise ScheduleError(f"c_min = {c_min} exceeds N_top = {top} (full model: {n} Gaussians); "
                            f"lower --c_min or raise --n_top")
    L = int(num_levels)
    if L == 1:
        return [int(c_min)]
    step = (math.log(top) - math.log(c_min)) / (L - 1)
    sizes = [int(round(c_min * math.exp(l * step))) for l in range(L)]
    sizes[0], sizes[-1] = int(c_min), int(top)  # exact ends despite floating point
    return sizes


def rate_labels(num_levels: int, rates: Sequence[str | float] | None = None) -> list[str]:
    """Label of each level l = 0..L-1 (index = level).

    ``rates`` are lambda names as on the command line (``--rates 0.1 0.5 1.0``): sorted by value, the
    smallest lambda names the largest level. Without ``rates``, three levels get the paper's names
    (level 0 -> "1.0", 1 -> "0.5", 2 -> "0.1") and any other L gets ``"L<l>"``.
    """
    L = int(num_levels)
    if rates is None:
        if L == PAPER_NUM_LEVELS:
            return list(reversed(PAPER_RATE_LABELS))
        return [f"L{l}" for l in range(L)]
    names = [_rate_name(r) for r in rates]
    if len(names) != L:
        raise ScheduleError(f"{len(names)} rates given ({' '.join(names)}) for {L} levels")
    if len(set(names)) != len(names):
        raise ScheduleError(f"rates must be distinct, got {' '.join(names)}")
    # largest lambda -> level 0 (smallest model)
    return sorted(names, key=lambda s: -float(s))


def _rate_name(r: str | float) -> str:
    try:
        v = float(r)
    except (TypeError, ValueError) as e:
        raise ScheduleError(f"rate '{r}' is not a number (expected lambda names such as 0.1 0.5 1.0)") from e
    if not math.isfinite(v) or v <= 0:
        raise ScheduleError(f"rate '{r}' must be a positive number")
    s = str(r).strip() if isinstance(r, str) else repr(float(r))
    return s

"""Training pairs (:func:`~nifi_lib.synthesis.pairs.read_pairs` with header checks), ``PairSampler``, held-out views."""
from __future__ import annotations

from pathlib import Path

import torch

from ..synthesis.pairs import PairError, PairItem, load_pair, read_pairs


def find_pairs(root: str | Path, split: str) -> list[PairItem]:
    """The pairs ``nifi train`` reads: any layout, every file's header checked before training writes anything;
    scenes without a dataset level take the root's name as their dataset."""
    return read_pairs(root, split, dataset=Path(root).name, check_sizes=True)


def holdout_views(pairs: list[PairItem], every: int = 8) -> tuple[list[PairItem], list[PairItem]]:
    """Split the training pairs into ``(train, val)`` by view: the validation set for checkpoint selection
    (``best.pt``), so that the test split is never used to choose a model.

    Rule (deterministic, pure): per scene (``dataset``/``scene``), the view names of all its rates are sorted
    and the views at positions ``0, every, 2 * every, ...`` are held out, each with ALL its rates (a view's
    degraded versions never leak into the gradient steps through another rate). A scene with a single view
    keeps it for training (no validation view); a scene with ``n >= 2`` views holds out ``ceil(n / every)``
    of them, at least one, and keeps ``n - ceil(n / every) >= 1`` for training (``every >= 2``). The input
    order is kept in both lists."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 2:
        raise PairError(f"train.val_holdout_every must be an integer >= 2 (hold out every k-th view), got {every!r}")
    names: dict[tuple[str, str], set[str]] = {}
    for p in pairs:
        names.setdefault((p.dataset, p.scene), set()).add(p.name)
    held = {scene: set(sorted(v)[::every]) if len(v) >= 2 else set() for scene, v in names.items()}
    train = [p for p in pairs if p.name not in held[(p.dataset, p.scene)]]
    val = [p for p in pairs if p.name in held[(p.dataset, p.scene)]]
    return train, val


class PairSampler:
    """Draws batch elements as the paper does: a random scene, then a random view (and rate) of it."""

    def __init__(self, pairs: list[PairItem], resolution: int | None = None, cache: bool = True):
        if not pairs:
            raise PairError("no training pairs")
        self.pairs = pairs
        self.by_scene: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(pairs):
            self.by_scene.setdefault((p.dataset, p.scene), []).append(i)
        self.scenes = sorted(self.by_scene)
        self.resolution = resolution
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        item = load_pair(self.pairs[i])
        if self._cache is not None:
            self._cache[i] = item
        return item

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``n`` elements: (clean, degraded) in [0, 1] cropped to ``resolution`` (same crop for both)."""
        cleans, degs, idx = [], [], []
        for _ in range(n):
            scene = self.scenes[int(torch.randint(len(self.scenes), (1,), generator=g))]
            members = self.by_scene[scene]
            i = members[int(torch.randint(len(members), (1,), generator=g))]
            c, d = self.load(i)
            if self.resolution is not None:
                c, d = random_crop(c, d, self.resolution, g)
            cleans.append(c)
            degs.append(d)
            idx.append(i)
        return torch.stack(cleans), torch.stack(degs), idx


def random_crop(a: torch.Tensor, b: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = a.shape[-2:]
    if h < size or w < size:
        raise PairError(f"training resolution {size} is larger than an image of {h}x{w}")
    y = int(torch.randint(h - size + 1, (1,), generator=g))
    x = int(torch.randint(w - size + 1, (1,), generator=g))
    return a[:, y:y + size, x:x + size], b[:, y:y + size, x:x + size]

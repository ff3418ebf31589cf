"""Training pairs (:func:`~nifi_lib.synthesis.pairs.read_pairs` with header checks), read on demand
(``PairCrops``, a bounded cache, DataLoader workers: ``BatchLoader``), ``PairSampler``, held-out views."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..io.images import probe_rgb, read_rgb, to_tensor
from ..synthesis.pairs import PairError, PairItem, size_mismatch, read_pairs


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


class PairCrops(torch.utils.data.Dataset):
    """Training pairs read on demand: item ``(i, y, x)`` is pair ``i`` cropped at ``(y, x)`` to ``resolution``
    (``y = x = -1``: the whole frame), ``(clean, degraded)`` float ``(3, h, w)`` in [0, 1].

    Frames are decoded as uint8 and cropped BEFORE the float conversion (a 960P pair costs 2 x 2.8 MB in the
    cache instead of 2 x 11 MB as float32). ``cache_mb`` bounds an LRU cache of decoded frames (per process:
    each DataLoader worker has its own), so host memory does not grow with the number of pairs. No randomness
    here: the crops are drawn by :class:`PairSampler`, so workers change nothing in what is trained on."""

    def __init__(self, pairs: list[PairItem], resolution: int | None = None, cache_mb: float = 1024.0):
        self.pairs = pairs
        self.resolution = resolution
        self.cache_bytes = int(float(cache_mb) * 2 ** 20)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cached = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def frames(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded uint8 ``(H, W, 3)`` clean and degraded frames of pair ``i`` (LRU-cached within ``cache_mb``)."""
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        item = self.pairs[i]
        c, d = read_rgb(item.clean), read_rgb(item.degraded)
        if c.shape != d.shape:
            raise size_mismatch(item.clean, (c.shape[1], c.shape[0]), item.degraded, (d.shape[1], d.shape[0]))
        size = c.nbytes + d.nbytes
        if size <= self.cache_bytes:
            self._cache[i] = (c, d)
            self._cached += size
            while self._cached > self.cache_bytes:
                _, (oc, od) = self._cache.popitem(last=False)
                self._cached -= oc.nbytes + od.nbytes
        return c, d

    def __getitem__(self, plan: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, y, x = plan
        c, d = self.frames(i)
        if y >= 0:
            r = int(self.resolution)
            c, d = c[y:y + r, x:x + r], d[y:y + r, x:x + r]
        return to_tensor(np.ascontiguousarray(c)), to_tensor(np.ascontiguousarray(d))


class PairSampler:
    """Draws batch elements as the paper does: a random scene, then a random view (and rate) of it, then a
    random crop of ``resolution`` (same crop for both frames). The draws are plans ``(i, y, x)`` (sizes from
    the file headers); :class:`PairCrops` reads them, in this process (:meth:`sample`) or in DataLoader workers
    (:func:`batch_loader`), with the same result."""

    def __init__(self, pairs: list[PairItem], resolution: int | None = None, cache_mb: float = 1024.0):
        if not pairs:
            raise PairError("no training pairs")
        self.pairs = pairs
        self.by_scene: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(pairs):
            self.by_scene.setdefault((p.dataset, p.scene), []).append(i)
        self.scenes = sorted(self.by_scene)
        self.resolution = resolution
        self.dataset = PairCrops(pairs, resolution, cache_mb)
        self._sizes: dict[int, tuple[int, int]] = {}

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole pair ``i`` (validation)."""
        return self.dataset[(i, -1, -1)]

    def _size(self, i: int) -> tuple[int, int]:
        if i not in self._sizes:
            w, h = probe_rgb(self.pairs[i].clean)
            self._sizes[i] = (h, w)
        return self._sizes[i]

    def draw(self, n: int, g: torch.Generator) -> list[tuple[int, int, int]]:
        """``n`` plans ``(i, y, x)``: scene, member, then (with ``resolution``) the crop's corner."""
        plans = []
        for _ in range(n):
            scene = self.scenes[int(torch.randint(len(self.scenes), (1,), generator=g))]
            members = self.by_scene[scene]
            i = members[int(torch.randint(len(members), (1,), generator=g))]
            y = x = -1
            if self.resolution is not None:
                h, w = self._size(i)
                y, x = random_crop_corner(h, w, self.resolution, g)
            plans.append((i, y, x))
        return plans

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``n`` elements: (clean, degraded) in [0, 1] cropped to ``resolution`` (same crop for both)."""
        plans = self.draw(n, g)
        clean, deg = collate_pairs([self.dataset[p] for p in plans])
        return clean, deg, [p[0] for p in plans]


def collate_pairs(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([c for c, _ in items]), torch.stack([d for _, d in items])


class _PlanBatches:
    """The batch sampler of :func:`batch_loader`: endless batches of plans, recording the generator's state
    before each batch, so that a checkpoint stores the state of the first batch not yet trained on."""

    def __init__(self, sampler: PairSampler, n: int, g: torch.Generator):
        self.sampler, self.n, self.g = sampler, n, g
        self.states: list[torch.Tensor] = []
        self.plans: list[list[tuple[int, int, int]]] = []

    def __iter__(self):
        while True:
            self.states.append(self.g.get_state())
            self.plans.append(self.sampler.draw(self.n, self.g))
            yield self.plans[-1]


class BatchLoader:
    """Batches of ``n`` training crops, prefetched by ``num_workers`` DataLoader workers (pinned memory on
    CUDA); exactly the batches :meth:`PairSampler.sample` would give, in order, for the same generator.
    :meth:`generator_state` is the state after the batches consumed so far (what a checkpoint saves)."""

    def __init__(self, sampler: PairSampler, n: int, g: torch.Generator, num_workers: int = 0,
                 pin_memory: bool = False):
        self.sampler, self.n, self.g, self.consumed = sampler, n, g, 0
        self.plans = _PlanBatches(sampler, n, g) if num_workers > 0 else None
        self._it = None
        if self.plans is not None:
            self.loader = torch.utils.data.DataLoader(
                sampler.dataset, batch_sampler=self.plans, num_workers=num_workers, collate_fn=collate_pairs,
                pin_memory=pin_memory, persistent_workers=True, prefetch_factor=2)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.consumed += 1
        if self.plans is None:
            clean, deg, self._last = self.sampler.sample(self.n, self.g)
            return clean, deg
        if self._it is None:
            self._it = iter(self.loader)
        return next(self._it)

    def last_scenes(self) -> list[str]:
        """``dataset/scene`` of each element of the batch :meth:`next` returned last (its prompts)."""
        idx = self._last if self.plans is None else [p[0] for p in self.plans.plans[self.consumed - 1]]
        return [f"{self.sampler.pairs[i].dataset}/{self.sampler.pairs[i].scene}" for i in idx]

    def generator_state(self) -> torch.Tensor:
        if self.plans is not None and len(self.plans.states) > self.consumed:
            return self.plans.states[self.consumed]
        return self.g.get_state()


def random_crop_corner(h: int, w: int, size: int, g: torch.Generator) -> tuple[int, int]:
    """The top-left corner of a random ``size`` crop of an ``h`` x ``w`` frame (y drawn first)."""
    if h < size or w < size:
        raise PairError(f"training resolution {size} is larger than an image of {h}x{w}")
    y = int(torch.randint(h - size + 1, (1,), generator=g))
    x = int(torch.randint(w - size + 1, (1,), generator=g))
    return y, x

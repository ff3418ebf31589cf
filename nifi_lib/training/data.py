"""Training/evaluation pairs in the seed's layout: ``<root>/<scene>/rate_<label>/<split>/{clean,degraded}/*.png``.

A benchmark root may add one level (``<root>/<dataset>/<scene>/rate_...``); both are found.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import NifiError
from ..io.images import IMAGE_EXTS, load_image, probe_rgb


class PairError(NifiError, ValueError):
    """Pairs are missing, unmatched or of different sizes."""


class SplitNotFoundError(PairError):
    """The pair root, or any ``<scene>/rate_<label>/<split>/`` folder of the split, does not exist (an
    optional split such as the held-out one may legitimately be absent; a malformed one is a PairError)."""


@dataclass(frozen=True)
class Pair:
    dataset: str
    scene: str
    rate: str
    name: str
    clean: Path
    degraded: Path


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS and p.is_file()}


def find_pairs(root: str | Path, split: str, check_sizes: bool = True) -> list[Pair]:
    """Every (clean, degraded) pair of ``split`` under ``root``; unmatched names or sizes -> PairError.

    With ``check_sizes`` every file's header is also checked (8-bit RGB, at most ``MAX_PIXELS`` pixels,
    readable: :func:`~nifi_lib.io.images.probe_rgb`), so a bad file fails here, before training writes
    anything, instead of at the step that first samples it."""
    root = Path(root)
    if not root.is_dir():
        raise SplitNotFoundError(f"{root}: pair folder not found (make it with `nifi pairs` or `nifi prepare-benchmark`)")
    pairs: list[Pair] = []
    split_dirs = sorted(p for p in root.glob(f"**/rate_*/{split}") if p.is_dir())
    if not split_dirs:
        raise SplitNotFoundError(f"{root}: no '<scene>/rate_<label>/{split}/' folders found")
    for sd in split_dirs:
        rate_dir = sd.parent
        scene_dir = rate_dir.parent
        rel = scene_dir.relative_to(root).parts
        dataset = rel[0] if len(rel) > 1 else root.name
        scene = scene_dir.name
        clean_d, deg_d = sd / "clean", sd / "degraded"
        for d in (clean_d, deg_d):
            if not d.is_dir():
                raise PairError(f"{d}: missing folder")
        clean, deg = _images(clean_d), _images(deg_d)
        only_c, only_d = sorted(set(clean) - set(deg)), sorted(set(deg) - set(clean))
        if only_c or only_d:
            raise PairError(f"{sd}: unmatched pairs: clean without degraded {only_c[:5]}, "
                            f"degraded without clean {only_d[:5]}")
        if not clean:
            raise PairError(f"{sd}: empty split (no images)")
        for name in clean:
            if check_sizes:  # header only (mode, bit depth, size limit, sizes agree): nothing is decoded
                a, b = probe_rgb(clean[name]), probe_rgb(deg[name])
                if a != b:
                    raise PairError(f"{deg[name]}: size {b[0]}x{b[1]} differs from its clean view "
                                    f"{clean[name]} {a[0]}x{a[1]}")
            pairs.append(Pair(dataset, scene, rate_dir.name[len("rate_"):], name, clean[name], deg[name]))
    return pairs


def holdout_views(pairs: list[Pair], every: int = 8) -> tuple[list[Pair], list[Pair]]:
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

    def __init__(self, pairs: list[Pair], resolution: int | None = None, cache: bool = True):
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
        p = self.pairs[i]
        item = (load_image(p.clean), load_image(p.degraded))
        if item[0].shape != item[1].shape:
            raise PairError(f"{p.degraded}: size {tuple(item[1].shape)} differs from {p.clean} {tuple(item[0].shape)}")
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

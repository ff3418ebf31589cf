"""Pairs read on demand (issue 15): the loader gives the same batches with and without workers, the cache is
bounded, crops come from the headers' sizes, and a resumed loader continues where the checkpoint left off."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nifi_lib.io.images import save_image
from nifi_lib.synthesis.pairs import read_pairs
from nifi_lib.training.data import BatchLoader, PairCrops, PairSampler


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for scene in ("a", "b"):
        for rate in ("0.1", "1.0"):
            for k in range(3):
                for kind in ("clean", "degraded"):
                    d = root / scene / f"rate_{rate}" / "train" / kind
                    d.mkdir(parents=True, exist_ok=True)
                    save_image(d / f"{k:03d}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return read_pairs(root, "train")


def test_crop_of_the_decoded_frame_is_the_crop_of_the_full_tensor(pairs):
    ds = PairCrops(pairs, resolution=16)
    full_c, full_d = ds[(2, -1, -1)]
    c, d = ds[(2, 5, 7)]
    assert c.shape == (3, 16, 16) and c.dtype == torch.float32
    assert torch.equal(c, full_c[:, 5:21, 7:23]) and torch.equal(d, full_d[:, 5:21, 7:23])
    assert full_c.shape == (3, 40, 48) and 0 <= float(full_c.min()) and float(full_c.max()) <= 1


def test_cache_is_bounded_by_bytes(pairs):
    one = 40 * 48 * 3 * 2                      # a decoded uint8 pair
    ds = PairCrops(pairs, cache_mb=2.5 * one / 2 ** 20)
    for i in range(len(pairs)):
        ds[(i, -1, -1)]
    assert len(ds._cache) == 2 and ds._cached == 2 * one
    assert list(ds._cache) == [len(pairs) - 2, len(pairs) - 1]          # least recently used evicted
    assert len(PairCrops(pairs, cache_mb=0)._cache) == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_equal_the_samplers_and_resume_exactly(pairs, workers):
    ref_s, g_ref = PairSampler(pairs, resolution=16), torch.Generator().manual_seed(3)
    ref = [ref_s.sample(2, g_ref)[:2] for _ in range(5)]
    g = torch.Generator().manual_seed(3)
    loader = BatchLoader(PairSampler(pairs, resolution=16), 2, g, num_workers=workers)
    got = [loader.next() for _ in range(3)]
    state = loader.generator_state()          # what a checkpoint after 3 steps stores
    g2 = torch.Generator()
    g2.set_state(state)
    resumed = BatchLoader(PairSampler(pairs, resolution=16), 2, g2, num_workers=workers)
    got += [resumed.next() for _ in range(2)]
    for (rc, rd), (c, d) in zip(ref, got):
        assert torch.equal(rc, c) and torch.equal(rd, d)
    assert not torch.equal(ref[0][0], ref[1][0])

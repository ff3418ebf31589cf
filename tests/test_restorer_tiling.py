"""Frames of any size: latents beyond the transformer's position table are restored in overlapping tiles
(inside ``Restorer.restore``, so eval, benchmark and validation get it too), said once; what no tiling can
handle is a clear error naming the size."""
import logging

import pytest
import torch

from helpers import SD3_LIKE_VAE, TINY_TRANSFORMER, randomize_lora
from nifi_lib.diffusion.backbone import build_tiny_backbone
from nifi_lib.errors import NifiError
from nifi_lib.restoration.lora import RESTORER, add_restorer_adapters
from nifi_lib.restoration.restorer import FrameSizeError, Restorer, position_table_limit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_table():
    """VAE factor 8, patch 2, a 4 x 4 position table: frames up to 64 px fit."""
    bb = build_tiny_backbone(seed=0, vae_config=SD3_LIKE_VAE,
                             transformer_config={**TINY_TRANSFORMER, "sample_size": 4, "pos_embed_max_size": 4})
    bb.freeze()
    add_restorer_adapters(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=1)
    return bb


def _frame(h, w, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_limit_is_table_times_patch_times_vae_factor(small_table):
    assert position_table_limit(small_table) == 4 * 2 * 8


def test_frame_beyond_the_table_is_tiled(small_table):
    r = Restorer(small_table)
    notes = []
    r.notify = notes.append
    x = _frame(72, 96)
    with pytest.raises(Exception, match="pos_embed_max_size"):   # what restore used to do
        r._restore_batch(x, r.schedule(), torch.Generator().manual_seed(0))
    out = r.restore(x, seed=3)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() <= 1
    # the first tile is restored exactly as a direct restore of that crop (same seed, drawn first); away from
    # the seams (rows < 8 and columns < 32 are covered by that tile alone) the blend is that tile
    direct = r.restore(x[..., :64, :64], seed=3)
    assert torch.equal(out[..., :8, :32], direct[..., :8, :32])
    assert notes == ["frame 96x72 exceeds the backbone's position table (max 64 px): restoring in 4 overlapping tiles"]
    r.restore(_frame(80, 70), seed=0)
    assert len(notes) == 1, "said once per restorer"


def test_a_frame_that_fits_is_not_tiled(small_table):
    r = Restorer(small_table)
    notes = []
    r.notify = notes.append
    x = _frame(64, 48)
    ref = r._restore_batch(x, r.schedule(), torch.Generator().manual_seed(5))
    assert torch.equal(r.restore(x, seed=5), ref)
    assert notes == []


def test_notice_defaults_to_a_log_warning(small_table, caplog):
    with caplog.at_level(logging.WARNING, logger="nifi_lib.restoration"):
        Restorer(small_table).restore(_frame(40, 100), seed=0)
    assert [r.getMessage() for r in caplog.records] == [
        "frame 100x40 exceeds the backbone's position table (max 64 px): restoring in 2 overlapping tiles"]


def test_tile_size_larger_than_the_table_is_capped(small_table):
    r = Restorer(small_table, tile_size=200)
    r.notify = lambda m: None
    assert r._tile_plan(72, 96) == (64, 16)
    assert r.restore(_frame(72, 96), seed=0).shape == (1, 3, 72, 96)
    small = Restorer(small_table, tile_size=32, tile_overlap=8)   # a user tile that fits the table: as before
    assert small._tile_plan(72, 96) == (32, 8)


def test_img2img_tiles_too(small_table):
    r = Restorer(small_table, adapter=None)
    r.notify = lambda m: None
    out = r.img2img(_frame(40, 90), steps=2, seed=0)
    assert out.shape == (1, 3, 40, 90) and torch.isfinite(out).all()


@pytest.mark.parametrize("h,w", [(5, 40), (40, 7), (1, 1)])
def test_frame_smaller_than_the_vae_factor_is_a_clear_error(small_table, h, w):
    with pytest.raises(FrameSizeError, match=f"frame {w}x{h} is too small.*VAE factor \\(8 px\\)") as e:
        Restorer(small_table).restore(_frame(h, w))
    assert isinstance(e.value, NifiError)


def test_tile_size_below_the_vae_factor_is_a_clear_error(small_table):
    with pytest.raises(FrameSizeError, match="frame 40x40 cannot be tiled with tile_size 4"):
        Restorer(small_table, tile_size=4).restore(_frame(40, 40))

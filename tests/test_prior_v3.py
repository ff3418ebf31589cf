"""Prior architecture knobs: the defaults are today's shipped backbone exactly; the v3 config fits its budget."""
from __future__ import annotations

import argparse

import pytest
import torch
from safetensors import safe_open

from nifi_lib.diffusion.backbone import TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG
from nifi_lib.diffusion.prior import (PriorConfig, PriorError, build_prior_backbone, load_prior_config,
                                      parameter_counts, posterior_cache, transformer_config, vae_config)
from nifi_lib.paths import EMBEDDED_DIR, repo_path
from nifi_lib.training.cli import prior_config_from_args


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def _shapes(path):
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_default_architecture_is_the_shipped_backbone():
    cfg = PriorConfig()
    assert vae_config(cfg) == TINY_VAE_CONFIG
    assert transformer_config(cfg) == TINY_TRANSFORMER_CONFIG
    bb = build_prior_backbone(cfg)
    for part, model in (("vae", bb.vae), ("transformer", bb.transformer)):
        shipped = _shapes(EMBEDDED_DIR / "backbone" / part / "diffusion_pytorch_model.safetensors")
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shipped, part
    assert parameter_counts(bb) == {"vae": 976563, "transformer": 2288448}


def test_v3_config_sizes_and_budget():
    cfg = load_prior_config(repo_path("configs/prior_v3.yaml"))
    assert cfg.resolution == 128 and cfg.vae_storage_dtype == cfg.transformer_storage_dtype == "fp16"
    bb = build_prior_backbone(cfg)
    counts = parameter_counts(bb)
    assert counts == {"vae": 4233283, "transformer": 5091520}   # the numbers quoted in configs/prior_v3.yaml
    buffers = sum(b.numel() for b in bb.transformer.buffers()) + sum(b.numel() for b in bb.vae.buffers())
    assert 2 * (sum(counts.values()) + buffers) < 19.5e6          # fp16 weight bytes, < 20 MB with the rest
    assert bb.vae_scale_factor == 4 and bb.transformer.config.sample_size == 32
    assert bb.transformer.config.caption_projection_dim == 6 * 32


def test_config_file_is_strict_and_flags_win(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution: 128\nvae_widths: [1, 2]\n")
    with pytest.raises(PriorError, match="vae_widths"):
        load_prior_config(bad)
    (tmp_path / "amp.yaml").write_text("amp: fp8\n")
    with pytest.raises(PriorError, match="amp"):
        load_prior_config(tmp_path / "amp.yaml")
    too_small = PriorConfig(resolution=512, pos_embed_max_size=32)
    with pytest.raises(PriorError, match="pos_embed_max_size"):
        transformer_config(too_small)
    args = argparse.Namespace(config="configs/prior_v3.yaml", vae_steps=7, transformer_steps=None, seed=None,
                              resolution=None)
    cfg = prior_config_from_args(args)
    assert cfg.vae_steps == 7 and cfg.transformer_steps == 8000 and cfg.vae_block_out_channels == (48, 96, 128)
    args.config = None
    assert prior_config_from_args(args) == PriorConfig(vae_steps=7)   # no config: today's defaults


def test_posterior_cache_is_the_encoder_posterior_of_each_image_and_its_mirror():
    bb = build_prior_backbone(PriorConfig(resolution=32))
    imgs = torch.rand(3, 3, 32, 32)
    mean, std = posterior_cache(bb.vae, imgs, batch=2)
    assert mean.shape == std.shape == (2, 3, 16, 8, 8)
    with torch.no_grad():
        d = bb.vae.encode(imgs.flip(-1)[1:2] * 2 - 1).latent_dist
    torch.testing.assert_close(mean[1, 1:2], d.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std[1, 1:2], d.std, rtol=1e-4, atol=1e-5)

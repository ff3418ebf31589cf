"""Eq. 7: the Restorer equals an independent re-implementation of the authors' procedure (PAPER.md)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict

from helpers import randomize_lora, tiny_backbone
from nifi_lib.restoration.checkpoint import save_authors_checkpoint
from nifi_lib.restoration.lora import (CRITIC, RESTORER, TRANSFORMER_TARGETS, add_critic_adapter,
                                       add_restorer_adapters, adapter_parameters, vae_encoder_targets)
from nifi_lib.restoration.restorer import Restorer


@pytest.fixture(scope="module")
def authors_ckpt(tmp_path_factory):
    """A random LoRA checkpoint in the authors' format, written from a backbone with random phi-."""
    bb = tiny_backbone(seed=0)
    add_restorer_adapters(bb, rank=4, alpha=4)
    randomize_lora(bb.transformer, RESTORER, seed=1)
    randomize_lora(bb.vae, RESTORER, seed=2)
    path = tmp_path_factory.mktemp("ckpt") / "restorer.ckpt"
    save_authors_checkpoint(path, bb)
    return path


def reference_restore(ckpt_path, image, seed, t0=199):
    """The authors' inference, re-implemented from PAPER.md's description with plain peft/diffusers."""
    bb = tiny_backbone(seed=0)
    vae, transformer = bb.vae, bb.transformer
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    rank = next(v.shape[0] for k, v in ck["transformer"].items() if k.endswith("lora_A.weight"))
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=TRANSFORMER_TARGETS), adapter_name="default")
    vae.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                               target_modules=vae_encoder_targets(vae)), adapter_name="default")
    set_peft_model_state_dict(transformer, ck["transformer"], adapter_name="default")
    set_peft_model_state_dict(vae, ck["vae"], adapter_name="default")
    with torch.no_grad():
        h, w = image.shape[-2:]
        x = F.pad(image, (0, (-w) % 8, 0, (-h) % 8), mode="reflect")
        torch.manual_seed(seed)
        latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor   # no shift factor
        lh, lw = latents.shape[-2:]
        latents = F.pad(latents, (0, (-lw) % 2, 0, (-lh) % 2), mode="reflect")
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        ts = sched.timesteps.numpy()
        sig = sched.sigmas.numpy()
        sigma = float(sig[np.argmin(np.abs(ts - t0))])
        sigma_end = float(sig[np.argmin(np.abs(ts - 0))])
        noise = torch.randn_like(latents)
        x_t0 = sigma * noise + (1 - sigma) * latents
        v = transformer(hidden_states=x_t0, encoder_hidden_states=bb.prompt.prompt_embeds,
                        pooled_projections=bb.prompt.pooled_prompt_embeds,
                        timestep=torch.tensor([float(t0)]), return_dict=False)[0]
        x0 = x_t0 - (sigma - sigma_end) * v
        out = vae.decode(x0 / vae.config.scaling_factor).sample
        return out[..., :h, :w].clamp(-1, 1)


def test_restorer_matches_authors_procedure(authors_ckpt):
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 37, 45, generator=g) * 2 - 1        # odd size: both paddings exercised
    ref = reference_restore(authors_ckpt, image, seed=123)
    bb = tiny_backbone(seed=0)
    from nifi_lib.restoration.io import load_restorer_weights

    assert load_restorer_weights(authors_ckpt, bb) == "authors"
    out = Restorer(bb, t0=199).restore(image, seed=123)
    assert out.shape == image.shape
    assert (out - ref).abs().max().item() < 1e-5
    # the LoRA matters (not an identity adapter) and the seed matters
    base = Restorer(tiny_backbone(seed=0), adapter=None).restore(image, seed=123)
    assert (base - out).abs().max().item() > 1e-3
    other = Restorer(bb, t0=199).restore(image, seed=124)
    assert (other - out).abs().max().item() > 1e-4
    again = Restorer(bb, t0=199).restore(image, seed=123)
    assert torch.equal(again, out)


@pytest.mark.parametrize("t0", [199, 1000])
def test_restorer_batched_equals_single_and_tiling_runs(monkeypatch, t0):
    """Noise-free (encoder mode instead of a sample; zero Eq. 2 noise at t0 < T, none at t0 = T), a batch
    restores to the same values as its elements one by one: nothing couples the batch elements."""
    import nifi_lib.restoration.restorer as R

    bb = tiny_backbone(seed=3)
    add_restorer_adapters(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=4)
    randomize_lora(bb.vae, RESTORER, seed=5)
    r = Restorer(bb, t0=t0)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    real_encode, real_project = R.encode_latents, R.project_to_t0
    monkeypatch.setattr(R, "encode_latents", lambda vae, x, sf, generator=None, sample=True:
                        real_encode(vae, x, sf, generator=generator, sample=False))
    monkeypatch.setattr(R, "project_to_t0", lambda lat, start, generator=None, noise=None:
                        real_project(lat, start, generator, noise=torch.zeros_like(lat)))
    both = r.restore(imgs, seed=0)
    ones = torch.cat([r.restore(imgs[i:i + 1], seed=i + 10) for i in range(3)])   # seeds irrelevant: noise-free
    assert both.shape == (3, 3, 32, 32) and torch.isfinite(both).all()
    torch.testing.assert_close(both, ones, atol=2e-5, rtol=0)
    assert (both[0] - both[1]).abs().max() > 1e-3            # distinct inputs give distinct outputs
    monkeypatch.undo()
    tiled = Restorer(bb, tile_size=32, tile_overlap=8, t0=t0).restore(torch.rand(1, 3, 40, 72) * 2 - 1, seed=0)
    assert tiled.shape == (1, 3, 40, 72) and torch.isfinite(tiled).all()
    assert tiled.abs().max() <= 1.0


def test_restorer_bf16_runs_close_to_fp32(authors_ckpt):
    from nifi_lib.restoration.io import load_restorer_weights

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    bb32 = tiny_backbone(seed=0)
    load_restorer_weights(authors_ckpt, bb32)
    out32 = Restorer(bb32).restore(image, seed=1)
    bb16 = tiny_backbone(seed=0)
    load_restorer_weights(authors_ckpt, bb16)
    bb16.to(dtype=torch.bfloat16)
    out16 = Restorer(bb16).restore(image, seed=1)
    assert out16.dtype == torch.float32
    assert (out16 - out32).abs().mean().item() < 0.05


def test_training_phi_minus_leaves_phi_plus_and_base_untouched():
    bb = tiny_backbone(seed=1)
    add_restorer_adapters(bb, rank=2)
    add_critic_adapter(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=1)
    randomize_lora(bb.transformer, CRITIC, seed=2)
    from nifi_lib.restoration.lora import active_adapter

    snap = {n: p.detach().clone() for n, p in bb.transformer.named_parameters()}
    phi_minus = adapter_parameters(bb.transformer, RESTORER)
    phi_plus = adapter_parameters(bb.transformer, CRITIC)
    assert phi_minus and phi_plus and not set(map(id, phi_minus)) & set(map(id, phi_plus))
    for params, adapter in ((phi_minus, RESTORER), (phi_plus, CRITIC)):
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=0.1)
        x = torch.randn(1, 4, 8, 8)
        with active_adapter(bb.transformer, adapter):
            out = bb.transformer(hidden_states=x, encoder_hidden_states=bb.prompt.prompt_embeds,
                                 pooled_projections=bb.prompt.pooled_prompt_embeds,
                                 timestep=torch.tensor([500.0]), return_dict=False)[0]
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()
        changed = {n for n, p in bb.transformer.named_parameters() if not torch.equal(p, snap[n])}
        assert changed, "the step changed nothing"
        assert all(f".{adapter}." in n for n in changed), f"{adapter} step changed {sorted(changed)[:3]}"
        assert not any("lora_" not in n for n in changed), "frozen base weights changed"
        snap = {n: p.detach().clone() for n, p in bb.transformer.named_parameters()}


def test_adapter_safetensors_round_trip(tmp_path):
    from nifi_lib.restoration.io import RESTORER_GROUPS
    from nifi_lib.restoration.lora import adapter_state_dict, load_adapters, save_adapters

    bb = tiny_backbone(seed=2)
    add_restorer_adapters(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=7)
    randomize_lora(bb.vae, RESTORER, seed=8)
    path = tmp_path / "phi_minus.safetensors"
    save_adapters(path, bb, RESTORER_GROUPS, metadata={"rank": 2})
    bb2 = tiny_backbone(seed=2)
    add_restorer_adapters(bb2, rank=2)
    meta = load_adapters(path, bb2, RESTORER_GROUPS)
    assert meta["rank"] == "2"
    for attr in ("transformer", "vae"):
        a = adapter_state_dict(getattr(bb, attr), RESTORER)
        b = adapter_state_dict(getattr(bb2, attr), RESTORER)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(Restorer(bb).restore(img, seed=3), Restorer(bb2).restore(img, seed=3))


def test_nifi_verify_eq7_check_passes():
    from nifi_lib.restoration.reference import check_eq7

    r = check_eq7()
    assert r.passed, r.detail
    assert r.equation == "Eq. 7"


def test_size_bucket_gives_one_shape_per_bucket_and_is_exact_on_bucket_multiples(monkeypatch):
    """``size_bucket``: frames of different sizes within a bucket reach the backbone as one padded shape (so a
    compiled restorer serves them with one graph), come back at their own size, and a frame whose size is already
    a multiple of the bucket is restored exactly as without it. A bucket that is not a multiple of the VAE factor
    x the patch size is refused, naming that unit."""
    import nifi_lib.restoration.restorer as R
    from nifi_lib.restoration.fast_paths import FrameSizeError

    bb = tiny_backbone(seed=3)
    add_restorer_adapters(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=4)
    unit = bb.vae_scale_factor * bb.patch_size
    shapes = []
    real_encode = R.encode_latents
    monkeypatch.setattr(R, "encode_latents", lambda vae, x, sf, generator=None, sample=True:
                        shapes.append(tuple(x.shape[-2:])) or real_encode(vae, x, sf, generator=generator, sample=sample))
    plain, bucketed = Restorer(bb), Restorer(bb, size_bucket=4 * unit)
    g = torch.Generator().manual_seed(0)
    frames = {hw: torch.rand(1, 3, *hw, generator=g) * 2 - 1 for hw in [(20, 24), (4 * unit - 3, 3 * unit + 5),
                                                                      (4 * unit, 4 * unit)]}
    outs = {hw: bucketed.restore(x, seed=1) for hw, x in frames.items()}
    assert shapes == [(4 * unit, 4 * unit)] * 3                       # one shape for every size in the bucket
    assert all(o.shape == frames[hw].shape and torch.isfinite(o).all() for hw, o in outs.items())
    shapes.clear()
    ref = {hw: plain.restore(x, seed=1) for hw, x in frames.items()}
    up = lambda n: -(-n // bb.vae_scale_factor) * bb.vae_scale_factor   # noqa: E731 - the VAE factor's padding
    assert shapes == [tuple(map(up, hw)) for hw in frames]              # without it: that padding only
    torch.testing.assert_close(outs[(4 * unit, 4 * unit)], ref[(4 * unit, 4 * unit)], atol=0, rtol=0)
    assert (outs[(20, 24)] - ref[(20, 24)]).abs().max() > 0           # padding is context: not the same function
    for bad in (unit + unit // 2, -unit):
        with pytest.raises(FrameSizeError, match=f"multiple of {unit} pixels"):
            Restorer(bb, size_bucket=bad)
    assert Restorer(bb, size_bucket=0).size_bucket is None


def test_the_compiled_cuda_restorer_defaults_to_the_chunked_vae_attention():
    """``default_vae_attention``: chunked for ``compile`` on CUDA (its GPU photo check passed, runs 6-7), as given
    when given, and the backbone as it is otherwise (no compile, or the CPU)."""
    from types import SimpleNamespace

    from nifi_lib.restoration.restorer import default_vae_attention

    cuda, cpu = (SimpleNamespace(device=torch.device(d)) for d in ("cuda", "cpu"))
    assert default_vae_attention(cuda, True, None) == "chunked"
    assert default_vae_attention(cuda, True, "sdpa") == "sdpa"
    assert default_vae_attention(cuda, False, None) is None
    assert default_vae_attention(cpu, True, None) is None
    assert default_vae_attention(cpu, False, "chunked") == "chunked"

"""The CFG-scale probe (which guidance scale the prior supports) against an independent computation."""
import pytest
import torch

from helpers import tiny_backbone
from nifi_lib.diffusion.prompts import PromptEmbeddings
from nifi_lib.evaluation.guidance import guidance_probe


def _images(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_probe_matches_a_direct_computation():
    bb = tiny_backbone(seed=1)
    x = _images(2)
    p = guidance_probe(bb, x, scales=(0.0, 1.0, 4.0), t_min_index=100, t_max_index=100, n_sigmas=1, seed=3)
    # independent: the same seeded draws (encoder sample first, then the noise), then the CFG formula by hand
    from diffusers import FlowMatchEulerDiscreteScheduler
    s = FlowMatchEulerDiscreteScheduler.from_config(bb.scheduler.config)
    sigma, t = float(s.sigmas[100]), float(s.timesteps[100])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = bb.vae.encode(x * 2 - 1).latent_dist.sample(generator=g) * bb.scaling_factor
        eps = torch.randn(z.shape, generator=g)
        z_t = (1 - sigma) * z + sigma * eps
        def vel(prompt):
            return bb.transformer(hidden_states=z_t, encoder_hidden_states=prompt.prompt_embeds.expand(2, -1, -1),
                                  pooled_projections=prompt.pooled_prompt_embeds.expand(2, -1),
                                  timestep=torch.full((2,), t), return_dict=False)[0]
        v_c, v_u = vel(bb.prompt), vel(bb.null_prompt)
    for w in (0.0, 1.0, 4.0):
        want = ((v_u + w * (v_c - v_u)) - (eps - z)).pow(2).mean().item()
        assert p.mse[w][0] == pytest.approx(want, rel=1e-4)
        assert p.mean_denoised[w] == pytest.approx(sigma ** 2 * want, rel=1e-4)
    assert p.best == min(p.scales, key=lambda w: p.mean_denoised[w])
    assert p.n_images == 2 and len(p.table()) == 3


def test_identical_branches_make_every_scale_equal():
    """A prior whose prompt equals its null prompt has v_c == v_u: CFG can neither help nor hurt."""
    bb = tiny_backbone(seed=2)
    bb.null_prompt = PromptEmbeddings(bb.prompt.prompt_embeds.clone(), bb.prompt.pooled_prompt_embeds.clone())
    p = guidance_probe(bb, _images(2), scales=(1.0, 7.5), n_sigmas=3)
    assert p.mse[1.0] == pytest.approx(p.mse[7.5], rel=1e-5)


def test_probe_needs_images_and_null_prompt():
    bb = tiny_backbone()
    with pytest.raises(ValueError, match="at least one image"):
        guidance_probe(bb, _images(0))
    bb.null_prompt = None
    with pytest.raises(ValueError, match="null-prompt"):
        guidance_probe(bb, _images(1))

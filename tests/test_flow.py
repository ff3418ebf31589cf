"""Eq. 2, Eq. 3, the denoised estimate, CFG and the sigma lookup against hand computations."""
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from nifi_lib.diffusion import flow


def test_forward_noise_eq2_by_hand():
    x = torch.tensor([[1.0, -2.0]])
    eps = torch.tensor([[0.5, 0.25]])
    out = flow.forward_noise(x, eps, 0.2)
    assert torch.allclose(out, torch.tensor([[0.8 * 1.0 + 0.2 * 0.5, 0.8 * -2.0 + 0.2 * 0.25]]))
    # per-sample sigmas broadcast over (N, C, H, W)
    x4 = torch.ones(2, 1, 2, 2)
    e4 = torch.zeros(2, 1, 2, 2)
    out4 = flow.forward_noise(x4, e4, torch.tensor([0.0, 1.0]))
    assert torch.allclose(out4[0], torch.ones(1, 2, 2)) and torch.allclose(out4[1], torch.zeros(1, 2, 2))


def test_euler_step_eq3_matches_scheduler_step():
    s = flow.make_scheduler(1000, 3.0)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, generator=g)
    v = torch.randn(1, 4, 4, 4, generator=g)
    t, sigma, sigma_next = s.timesteps[3], s.sigmas[3], s.sigmas[4]
    ref = s.step(v, t, x, return_dict=False)[0]
    ours = flow.euler_step(x, v, float(sigma), float(sigma_next))
    assert sigma_next < sigma  # the scheduler's sigma order is descending
    assert torch.allclose(ours, ref, atol=1e-6)
    # by hand
    assert torch.allclose(ours, x - (sigma - sigma_next) * v, atol=1e-6)


def test_denoised_estimate_recovers_clean_sample_for_exact_velocity():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    for sigma in (0.1, 0.5, 0.9):
        x_t = (1 - sigma) * x + sigma * eps
        v = eps - x  # exact rectified-flow velocity
        assert torch.allclose(flow.denoised_estimate(x_t, v, sigma), x, atol=1e-6)


def test_cfg_by_hand():
    u, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    assert torch.allclose(flow.classifier_free_guidance(u, c, 7.5), torch.tensor([1 + 7.5 * 2, 2 - 7.5]))
    assert torch.allclose(flow.classifier_free_guidance(u, c, 1.0), c)


def test_sigma_lookup_sd3_shift3():
    s = flow.make_scheduler(1000, 3.0)
    # independent: the shifted table sigma = shift*s/(1+(shift-1)*s) on s = linspace(1, 1/1000, 1000)
    base = np.linspace(1.0, 1.0 / 1000, 1000)
    sig = 3.0 * base / (1 + 2.0 * base)
    ts = sig * 1000
    i199 = np.argmin(np.abs(ts - 199))
    assert flow.sigma_at(s, 199) == pytest.approx(sig[i199], abs=1e-6)
    assert flow.sigma_at(s, 199) == pytest.approx(0.198, abs=1e-3)
    assert flow.sigma_at(s, 0) == pytest.approx(0.003, abs=2e-4)
    assert flow.sigma_at(s, 0) > 0
    # lookup is independent of set_timesteps() having been called
    s.set_timesteps(4)
    assert flow.sigma_at(s, 199) == pytest.approx(sig[i199], abs=1e-6)


def test_one_step_restore_is_eq7():
    g = torch.Generator().manual_seed(2)
    x_t0, v = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    assert torch.allclose(flow.one_step_restore(x_t0, v, 0.198), x_t0 - 0.198 * v)
    assert torch.allclose(flow.one_step_restore(x_t0, v, 0.198, 0.003), x_t0 - (0.198 - 0.003) * v)


def test_eq7_start_rule():
    s = flow.make_scheduler(1000, 3.0)
    assert flow.sigma_at(s, 1000) == 1.0                      # the table's first entry: t = 1000, sigma 1
    st = flow.eq7_start(s, 1000)
    assert (st.t0, st.sigma_t0, st.add_noise) == (1000.0, 1.0, False) and st.is_terminal
    assert st.sigma_end == pytest.approx(flow.sigma_at(s, 0))
    st199 = flow.eq7_start(s, 199)
    assert st199.add_noise and st199.sigma_t0 == pytest.approx(0.198, abs=1e-3) and st199.t0 == 199.0
    with pytest.raises(ValueError, match="t0 must lie in"):
        flow.eq7_start(s, 1001)
    # t0 = T: the latent itself, nothing drawn from the generator; t0 < T: Eq. 2 with noise drawn next
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=g)
    state = g.get_state()
    assert flow.project_to_t0(x, st, g) is x and torch.equal(g.get_state(), state)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    got = flow.project_to_t0(x, st199, torch.Generator().manual_seed(5))
    assert torch.allclose(got, (1 - st199.sigma_t0) * x + st199.sigma_t0 * eps)
    # the step at t0 = T: x^ = x~ - (1 - sigma_end) v
    v = torch.randn(x.shape, generator=g)
    assert torch.allclose(flow.one_step_restore(x, v, st.sigma_t0, st.sigma_end), x - (1 - st.sigma_end) * v)

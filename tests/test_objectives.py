"""NiFi objectives (Eq. 4, 5, 6, 8): gradients, signs and graphs against independent computations.

The sign of every term is proved on an analytic toy (isotropic Gaussians under Eq. 2 with closed-form
denoisers, nifi_lib.training.toy). The measurement helpers live in nifi_lib.training.verify (so that
``run_checks`` and notebook 04 use the same logic); the assertions here recompute what they claim.
"""
import math

import pytest
import torch
from torch import nn

from nifi_lib.training import objectives as obj
from nifi_lib.training import toy, verify

SIGMAS = verify.TOY_SIGMAS


# ------------------------------------------------------------------------------------------------
# Eq. 4/5 gradient and the surrogate
# ------------------------------------------------------------------------------------------------
def test_distribution_matching_grad_by_hand():
    f, r, rx = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.5, 2.0])
    g = obj.distribution_matching_grad(f, r, rx, alpha=0.7)
    assert torch.allclose(g, 0.7 * torch.tensor([2.0, -2.0]) + 0.3 * torch.tensor([0.5, -1.0]))
    assert torch.allclose(obj.distribution_matching_grad(f, r), f - r)           # Eq. 4 alone
    assert torch.allclose(obj.distribution_matching_grad(f, r, rx, alpha=0.0), r - rx)
    assert not obj.distribution_matching_grad(f.requires_grad_(), r, rx).requires_grad
    with pytest.raises(ValueError):
        obj.distribution_matching_grad(f, r, rx, alpha=1.5)


@pytest.mark.parametrize("normalize", ["dmd", "sigma2", "none"])
def test_surrogate_autograd_gradient_is_gn_over_batch(normalize):
    g = torch.Generator().manual_seed(3)
    B = 4
    x_hat = torch.randn(B, 2, 3, 3, generator=g, requires_grad=True)
    grad = torch.randn(B, 2, 3, 3, generator=g)
    d_real = torch.randn(B, 2, 3, 3, generator=g)
    sigma = torch.tensor([0.15, 0.4, 0.7, 0.95])
    loss = obj.distribution_matching_loss(x_hat, grad, normalize, d_real_xhat=d_real, sigma=sigma)
    assert loss.grad_fn is not None
    loss.backward()
    # independent normaliser, sample by sample with python loops
    for b in range(B):
        if normalize == "dmd":
            c = 1.0 / max(float((x_hat[b].detach() - d_real[b]).abs().mean()), 1e-5)
        elif normalize == "sigma2":
            c = float(sigma[b])          # TSD-SR's sigma^2 on velocities == sigma on denoised estimates
        else:
            c = 1.0
        assert torch.allclose(x_hat.grad[b], c * grad[b] / B, atol=1e-6, rtol=1e-5)
        # the loss value is mean_b 0.5 ||g_n||^2
    r = verify.surrogate_grad_check(normalize)
    assert r["has_grad_fn"] and r["max_abs_err"] < 1e-5


def test_sigma2_weight_reproduces_tsdsr_velocity_gradient():
    """TSD-SR applies sigma^2 (v_real - v_fake); our D-form with normalize='sigma2' must apply the same vector."""
    g = torch.Generator().manual_seed(4)
    real, fake = verify.toy_real(), verify.toy_fake()
    z = torch.randn(5, 2, generator=g)
    sigma = torch.tensor([0.14, 0.3, 0.5, 0.6, 0.95])
    tsdsr = sigma[:, None] ** 2 * (real.velocity(z, sigma) - fake.velocity(z, sigma))
    x_hat = torch.randn(5, 2, generator=g, requires_grad=True)
    gD = obj.distribution_matching_grad(fake.denoise(z, sigma), real.denoise(z, sigma))
    obj.distribution_matching_loss(x_hat, gD, "sigma2", sigma=sigma).backward()
    assert torch.allclose(x_hat.grad * 5, tsdsr, atol=1e-5)


def test_surrogate_bf16_keeps_gradient():
    g = torch.Generator().manual_seed(5)
    x_hat = (10 + torch.randn(2, 4, 8, 8, generator=g)).to(torch.bfloat16).requires_grad_(True)
    grad = 1e-3 * torch.randn(2, 4, 8, 8, generator=g)
    obj.distribution_matching_loss(x_hat, grad, "none").backward()
    assert x_hat.grad.dtype == torch.bfloat16
    assert torch.allclose(x_hat.grad.float(), grad / 2, rtol=1e-2, atol=1e-9)   # only bf16 rounding of g


def test_surrogate_refuses_no_grad():
    x_hat = torch.zeros(1, 3, requires_grad=True)
    with torch.no_grad(), pytest.raises(RuntimeError):
        obj.distribution_matching_loss(x_hat, torch.ones(1, 3), "none")


def test_distillation_loss_reaches_x_hat_not_the_denoisers():
    torch.manual_seed(0)
    student = nn.Conv2d(4, 4, 1)
    real_net, fake_net = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)       # parameters require grad on purpose
    real_denoise = lambda z, s: z - s.view(-1, 1, 1, 1) * real_net(z)  # noqa: E731  (D = z - sigma v)
    fake_denoise = lambda z, s: z - s.view(-1, 1, 1, 1) * fake_net(z)  # noqa: E731
    x_deg, x_clean = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    x_hat = student(x_deg)
    sigma, noise = torch.tensor([0.3, 0.8]), torch.randn(2, 4, 6, 6)
    loss, info = obj.restoration_distribution_matching_loss(x_hat, x_clean, real_denoise, fake_denoise, sigma, noise,
                                                            alpha=0.7, normalize="dmd")
    assert loss.grad_fn is not None
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in list(real_net.parameters()) + list(fake_net.parameters()))
    for k in ("loss", "grad_norm", "grad_norm_normalized", "kl_term", "gt_term", "weight", "sigma"):
        assert isinstance(info[k], float) and math.isfinite(info[k])
    assert info["gt_term"] > 0 and info["kl_term"] > 0

    # the applied gradient on x^ equals g_n / B recomputed by hand (shared noise, D-form, DMD weight)
    xh = x_hat.detach().requires_grad_(True)
    loss2, _ = obj.restoration_distribution_matching_loss(xh, x_clean, real_denoise, fake_denoise, sigma, noise, 0.7, "dmd")
    loss2.backward()
    with torch.no_grad():
        s = sigma.view(2, 1, 1, 1)
        xh_t, x_t = (1 - s) * xh + s * noise, (1 - s) * x_clean + s * noise
        dr, df, drx = real_denoise(xh_t, sigma), fake_denoise(xh_t, sigma), real_denoise(x_t, sigma)
        g = 0.7 * (df - dr) + 0.3 * (dr - drx)
        w = (xh - dr).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(xh.grad, g / w / 2, atol=1e-6, rtol=1e-4)


def test_distillation_loss_argument_errors():
    x = torch.zeros(1, 2, requires_grad=True)
    d = lambda z, s: z  # noqa: E731
    with pytest.raises(ValueError):
        obj.restoration_distribution_matching_loss(x, None, d, d, 0.5, torch.zeros(1, 2), alpha=0.7)
    with pytest.raises(ValueError):
        obj.distribution_matching_loss(x, torch.zeros(1, 2), "bogus")


# ------------------------------------------------------------------------------------------------
# The analytic toy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", SIGMAS)
def test_toy_denoiser_matches_monte_carlo_and_regression(sigma):
    r = verify.toy_denoiser_vs_mc(sigma)
    assert r["max_abs_err"] < 0.03
    # independent: E[x | x_t] of a jointly Gaussian pair is the least-squares line of x on x_t
    g = torch.Generator().manual_seed(1)
    data = toy.IsotropicGaussian(torch.tensor([0.5], dtype=torch.float64), 1.3)
    x = data.sample(200_000, generator=g)
    x_t = (1 - sigma) * x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    slope = float(((x - x.mean()) * (x_t - x_t.mean())).mean() / x_t.var())
    k = (1 - sigma) * 1.3 ** 2 / ((1 - sigma) ** 2 * 1.3 ** 2 + sigma ** 2)
    assert slope == pytest.approx(k, abs=0.01)
    z = torch.tensor([[1.0]], dtype=torch.float64)
    assert float(data.denoise(z, sigma)) == pytest.approx(float(x.mean() + slope * (1.0 - x_t.mean())), abs=0.02)
    # velocity and score identities
    assert torch.allclose(data.velocity(z, sigma), (z - data.denoise(z, sigma)) / sigma)
    assert torch.allclose(data.score(z, sigma), -(z - (1 - sigma) * 0.5) / data.noised_var(sigma))


@pytest.mark.parametrize("sigma", SIGMAS)
def test_eq4_term_is_the_kl_gradient(sigma):
    r = verify.toy_kl_gradient(sigma)
    for ex, mc, se in zip(r["exact"], r["mc"], r["se"]):
        assert abs(ex - mc) < 5 * se + 1e-6
    # independent closed form of dKL/dmu: (1-s)^2 (mu - mu_r) / Var_real,t
    vq = (1 - sigma) ** 2 + sigma ** 2
    assert r["exact"][0] == pytest.approx((1 - sigma) ** 2 * 1.5 / vq, rel=1e-6)
    assert r["exact"][0] > 0   # so descending along +(D_fake - D_real) lowers the KL


@pytest.mark.parametrize("normalize", ["none", "dmd", "sigma2"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_eq4_step_moves_toward_real_away_from_fake(sigma, normalize):
    r = verify.toy_kl_step(sigma, normalize=normalize)
    mu_r, mu_f = torch.tensor(verify.REAL_MEAN), torch.tensor(verify.FAKE_MEAN)
    m0, m1 = r["before"].mean(0), r["after"].mean(0)
    assert (m1 - mu_r).norm() < (m0 - mu_r).norm()
    assert (m1 - mu_f).norm() > (m0 - mu_f).norm()
    cos = torch.dot(m1 - m0, mu_r - mu_f) / ((m1 - m0).norm() * (mu_r - mu_f).norm())
    assert cos > 0.95


@pytest.mark.parametrize("sigma", SIGMAS)
def test_eq5_ground_truth_term_signs(sigma):
    """Corrected term: toward x. Paper's printed sign: away. TSD-SR velocity form: toward iff sigma > s^2/(1+s^2)."""
    k = (1 - sigma) / ((1 - sigma) ** 2 + sigma ** 2)                   # toy gain, real std 1
    lr = verify.STEP_LR
    rates = {"corrected": k * (1 - sigma), "printed": -k * (1 - sigma), "tsdsr": sigma * (1 - sigma) * (1 - k)}
    for form, rate in rates.items():
        r = verify.toy_gt_step(sigma, form)
        # exact linear contraction of every pair for Gaussian data: x^ - x <- (1 - lr rate)(x^ - x)
        assert torch.allclose(r["after"] - r["x"], (1 - lr * rate) * (r["before"] - r["x"]), atol=2e-5)
        d0 = (r["before"] - r["x"]).norm(dim=1).mean()
        d1 = (r["after"] - r["x"]).norm(dim=1).mean()
        if form == "corrected":
            assert d1 < d0
        elif form == "printed":
            assert d1 > d0
        else:
            assert (d1 < d0) == (sigma > 0.5)
        assert rate == pytest.approx(float(verify.gt_displacement_rates(sigma)[form]), rel=1e-9)
    for normalize in ("dmd", "sigma2"):     # a positive per-sample weight keeps every pair's direction
        r = verify.toy_gt_step(sigma, "corrected", normalize=normalize)
        assert (((r["after"] - r["before"]) * (r["x"] - r["before"])).sum(1) > 0).all()


def test_ground_truth_term_monotone_for_non_gaussian_data():
    """D is monotone for any data (Jacobian (1-s) Cov[x|x_t]/s^2 is PSD): check <g_GT, x^ - x> >= 0 on a mixture."""
    g = torch.Generator().manual_seed(7)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    data = centers[torch.randint(0, 3, (1500,), generator=g)] + 0.3 * torch.randn(1500, 2, generator=g)

    def denoise(z, s):  # exact posterior mean of the empirical distribution
        w = torch.softmax(-((z[:, None] - (1 - s) * data[None]) ** 2).sum(-1) / (2 * s ** 2), dim=1)
        return w @ data

    for s in SIGMAS:
        x = data[:200]
        x_hat = x + torch.randn(200, 2, generator=g)
        eps = torch.randn(200, 2, generator=g)
        g_gt = obj.distribution_matching_grad(denoise((1 - s) * x_hat + s * eps, s), denoise((1 - s) * x_hat + s * eps, s),
                                              denoise((1 - s) * x + s * eps, s), alpha=0.0)
        inner = (g_gt * (x_hat - x)).sum(1)
        assert (inner >= -1e-5).all()
        printed = obj.eq5_gt_term_as_printed(denoise((1 - s) * x_hat + s * eps, s), denoise((1 - s) * x + s * eps, s))
        assert torch.allclose(printed, -g_gt, atol=1e-6)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_eq5_blend_decreases_combined_objective(sigma):
    r = verify.toy_blend_objective(sigma, alpha=0.7)
    assert r["objective"][1] < r["objective"][0]
    # both parts of the blend act: closer to the real mean and closer to x
    assert r["dist_real_mean"][1] < r["dist_real_mean"][0]
    assert r["dist_x"][1] < r["dist_x"][0]


def test_tracking_critic_flow_moves_batch_to_real():
    r = verify.toy_tracking_flow(steps=150, lr=0.1, n=1024)
    final = r["final"]
    d0 = float((r["snapshots"][0].mean(0) - torch.tensor(verify.REAL_MEAN)).norm())
    d1 = float((final.mean(0) - torch.tensor(verify.REAL_MEAN)).norm())
    assert d1 < 0.1 * d0
    assert float(((final - final.mean(0)) ** 2).mean().sqrt()) == pytest.approx(verify.REAL_STD, abs=0.15)
    assert (r["mean_dist_to_real"][1:] <= r["mean_dist_to_real"][:-1] + 1e-3).all()   # monotone approach


# ------------------------------------------------------------------------------------------------
# Eq. 8: the critic
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", SIGMAS)
def test_critic_loss_minimiser_is_restored_velocity(sigma):
    r = verify.toy_critic_minimiser(sigma)
    assert r["loss_at_exact_target"] < 1e-10
    assert max(abs(v) for v in r["grad_at_min"]) < 1e-6
    tol = 5 * float(r["se"].max()) + 1e-6
    assert (r["learned"] - r["fake_velocity"]).abs().max() < tol
    assert (r["learned"] - r["real_velocity"]).abs().max() > tol
    # independent closed form of the fake velocity (z - D_fake(z)) / sigma
    k = (1 - sigma) * 0.36 / ((1 - sigma) ** 2 * 0.36 + sigma ** 2)
    z = torch.tensor([-1.0, 0.0, 1.0, 2.5], dtype=torch.float64)
    assert torch.allclose(r["fake_velocity"], (z - (1.5 + k * (z - (1 - sigma) * 1.5))) / sigma)


def test_critic_loss_zero_at_target_and_gradients_only_to_critic():
    torch.manual_seed(0)
    base = nn.Linear(3, 3)
    base.requires_grad_(False)                      # frozen eps_theta
    critic = nn.Linear(3, 3)                         # the phi+ delta
    student = nn.Linear(3, 3)
    x_hat = student(torch.randn(8, 3))              # has a graph back to the student
    noise, sigma = torch.randn(8, 3), torch.rand(8) * 0.8 + 0.1
    x_t = obj.critic_inputs(x_hat, noise, sigma)
    assert not x_t.requires_grad
    assert torch.allclose(x_t, (1 - sigma[:, None]) * x_hat.detach() + sigma[:, None] * noise)
    # zero at the analytic (conditional) velocity target eps - x^ = (x^_t - x^) / sigma
    target_v = (x_t - x_hat.detach()) / sigma[:, None]
    assert float(obj.critic_loss(target_v, noise, x_hat.detach())) < 1e-10
    loss = obj.critic_loss(base(x_t) + critic(x_t), noise, x_hat)
    assert float(loss.detach()) == pytest.approx(float(((base(x_t) + critic(x_t) - (noise - x_hat.detach())) ** 2).mean().detach()), rel=1e-6)
    loss.backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0
    assert student.weight.grad is None               # x^ is detached for Eq. 8


# ------------------------------------------------------------------------------------------------
# Eq. 6
# ------------------------------------------------------------------------------------------------
def test_eq6_total_is_weighted_sum():
    g = torch.Generator().manual_seed(0)
    x_hat = torch.randn(3, 4, 4, 4, generator=g, requires_grad=True)
    x = torch.randn(3, 4, 4, 4, generator=g)
    ih, ic = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    per_image = torch.tensor([0.1, 0.2, 0.6])
    lp_fn = lambda a, b: per_image + 0 * (a - b).sum(dim=(1, 2, 3))  # noqa: E731
    l_kl = (x_hat ** 2).mean()
    total, terms = obj.perceptual_matching_loss(l_kl, x_hat, x, ih, ic, lp_fn, w_kl=0.5, w_l2=2.0, w_lpips=4.0)
    xd = x_hat.detach()
    mse = sum(float(((xd[i] - x[i]) ** 2).sum()) for i in range(3)) / x.numel()
    expected = 0.5 * float(l_kl.detach()) + 2.0 * mse + 4.0 * 0.3
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(terms["l2"]) == pytest.approx(mse, rel=1e-5) and float(terms["lpips"]) == pytest.approx(0.3)
    assert float(terms["kl"]) == pytest.approx(float(l_kl.detach()))
    total.backward()
    assert x_hat.grad is not None
    t0, terms0 = obj.perceptual_matching_loss(l_kl.detach(), x_hat, x, None, None, None, w_lpips=0.0)
    assert float(t0.detach()) == pytest.approx(float(l_kl.detach()) + mse, rel=1e-5) and float(terms0["lpips"]) == 0.0


# ------------------------------------------------------------------------------------------------
# verify.run_checks
# ------------------------------------------------------------------------------------------------
def test_run_checks_all_pass_and_hook(capsys):
    calls = []

    def extra():
        calls.append(1)
        return verify.CheckResult("Eq. 7", "test.extra", "registered hook runs", True, "")

    verify.register_check(extra)
    try:
        results = verify.run_checks()
    finally:
        verify._REGISTRY.remove(extra)
    failed = [r for r in results if not r.passed]
    assert not failed, failed
    assert calls == [1] and results[-1].function == "test.extra"
    eqs = {r.equation for r in results}
    for e in ("Eq. 2", "Eq. 3", "denoised estimate", "CFG", "t0 = 199", "Eq. 4", "Eq. 5", "Eq. 6", "Eq. 8"):
        assert e in eqs
    verify.print_table(results)
    assert f"{len(results)}/{len(results)} checks passed" in capsys.readouterr().out


def test_run_checks_reports_a_raising_check():
    def broken():
        raise RuntimeError("boom")

    verify.register_check(broken)
    try:
        results = verify.run_checks(include_builtin=False)
    finally:
        verify._REGISTRY.remove(broken)
    assert len(results) == 1 and not results[0].passed and "boom" in results[0].detail


def test_mean_reduction_gradient_is_g_over_numel():
    """The trainer's reduction (DMD/TSD-SR's mse 'mean'): d loss / d x^ = c * g / numel."""
    from nifi_lib.training.objectives import distribution_matching_loss

    g = torch.Generator().manual_seed(3)
    x_hat = torch.randn(3, 4, 5, 5, generator=g, requires_grad=True)
    grad = torch.randn(3, 4, 5, 5, generator=g)
    loss = distribution_matching_loss(x_hat, grad, "none", reduction="mean")
    loss.backward()
    assert torch.allclose(x_hat.grad, grad / x_hat.numel(), atol=1e-8)
    assert loss.item() == pytest.approx(0.5 * float((grad ** 2).mean()), rel=1e-5)

"""Analytic toy problem for the NiFi objectives: isotropic Gaussian data under the SD3 flow (Eq. 2).

For data ``x ~ N(mu, s^2 I)`` and the forward model of Eq. 2, ``x_t = (1 - sigma) x + sigma eps``,
``(x, x_t)`` is jointly Gaussian with

    E[x_t] = (1 - sigma) mu,   Var[x_t] = (1 - sigma)^2 s^2 + sigma^2,   Cov[x, x_t] = (1 - sigma) s^2,

so the ideal denoiser (the ``s(.)`` of Eq. 4, the posterior mean) is linear in ``x_t``:

    D(x_t) = E[x | x_t] = mu + k (x_t - (1 - sigma) mu),   k = (1 - sigma) s^2 / ((1 - sigma)^2 s^2 + sigma^2),

the posterior variance is ``s^2 sigma^2 / ((1 - sigma)^2 s^2 + sigma^2)``, the velocity the network would
predict is ``v = (x_t - D) / sigma`` (because ``D = x_t - sigma v``) and the score of the noised
marginal is ``((1 - sigma) D - x_t) / sigma^2`` (Tweedie for Eq. 2).

These closed forms play the real denoiser (``s_real``, frozen base), the fake/critic denoiser
(``s_restore``, base + phi+) and the critic's regression target (Eq. 8) in ``tests/test_objectives.py``,
:mod:`nifi_lib.training.verify` and notebook 04. The small experiments at the bottom (a particle flow
under Eq. 4 and the alpha trade-off of Eq. 5) run the real training functions of
:mod:`nifi_lib.training.objectives` on this toy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion.flow import _as_batch as _bcast  # scalar or (B,) sigma against (B, ...)
from . import objectives as obj


@dataclass
class IsotropicGaussian:
    """Data distribution ``N(mean, std^2 I)`` in ``d = len(mean)`` dimensions, with its flow quantities.

    ``mean`` (shape ``(d,)``) and ``std`` (float or 0-dim tensor) may require grad: the KL of
    :func:`gaussian_kl` is then differentiable in them (used to prove the Eq. 4 gradient).
    """

    mean: torch.Tensor
    std: torch.Tensor | float

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(-1) if not torch.is_tensor(self.mean) \
            else self.mean.reshape(-1)

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @property
    def var(self):
        return self.std ** 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype)
        return self.mean.detach() + float(self.std) * z

    # --- closed forms under Eq. 2 -------------------------------------------------------------
    def noised_var(self, sigma):
        """``Var[x_t] = (1 - sigma)^2 s^2 + sigma^2`` per dimension."""
        return (1 - sigma) ** 2 * self.var + sigma ** 2

    def gain(self, sigma):
        """``k = (1 - sigma) s^2 / ((1 - sigma)^2 s^2 + sigma^2)`` = dD/dx_t (the denoiser's Jacobian / I)."""
        return (1 - sigma) * self.var / self.noised_var(sigma)

    def posterior_var(self, sigma):
        """``Var[x | x_t] = s^2 sigma^2 / ((1 - sigma)^2 s^2 + sigma^2)``."""
        return self.var * sigma ** 2 / self.noised_var(sigma)

    def denoise(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """Ideal denoised estimate ``E[x | x_t = z] = mu + k (z - (1 - sigma) mu)`` (the s(.) of Eq. 4)."""
        s = _bcast(sigma, z)
        return self.mean + self.gain(s) * (z - (1 - s) * self.mean)

    def velocity(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """Ideal velocity ``E[eps - x | x_t = z] = (z - D(z)) / sigma`` (what SD3's network predicts)."""
        s = _bcast(sigma, z)
        return (z - self.denoise(z, sigma)) / s

    def score(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """``grad_z log p_t(z) = ((1 - sigma) D(z) - z) / sigma^2`` (Tweedie for Eq. 2)."""
        s = _bcast(sigma, z)
        return ((1 - s) * self.denoise(z, sigma) - z) / s ** 2

    def log_density_noised(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """``log p_t(z)`` of the noised marginal ``N((1 - sigma) mu, noised_var I)``, per row."""
        s = _bcast(sigma, z)
        v = self.noised_var(s)
        d = z.shape[-1]
        return (-0.5 * ((z - (1 - s) * self.mean) ** 2).sum(-1) / v.reshape(-1)
                - 0.5 * d * torch.log(2 * math.pi * v.reshape(-1)))

    # --- a critic that "tracks" the current distribution (Eq. 8 done analytically) -------------
    @classmethod
    def fit(cls, samples: torch.Tensor) -> "IsotropicGaussian":
        """Maximum-likelihood isotropic Gaussian of ``samples`` ``(n, d)`` (detached)."""
        x = samples.detach()
        mean = x.mean(0)
        std = float(((x - mean) ** 2).mean().sqrt())
        return cls(mean=mean, std=std)


def gaussian_kl(p: IsotropicGaussian, q: IsotropicGaussian, sigma: float = 0.0) -> torch.Tensor:
    """``KL(p_t || q_t)`` between the two isotropic Gaussians noised with Eq. 2 at ``sigma`` (closed form).

    Differentiable in ``p.mean`` / ``p.std``: the autograd gradient is the independent reference for the
    Monte-Carlo Eq. 4 gradient in :func:`nifi_lib.training.verify.toy_kl_gradient`.
    """
    vp, vq = p.noised_var(sigma), q.noised_var(sigma)
    d = p.dim
    dm2 = (((1 - sigma) * (p.mean - q.mean)) ** 2).sum()
    vp_t = torch.as_tensor(vp, dtype=torch.float64)
    vq_t = torch.as_tensor(vq, dtype=torch.float64)
    return 0.5 * (d * torch.log(vq_t / vp_t) + d * vp_t / vq_t + dm2 / vq_t - d)


def mc_denoiser(data: IsotropicGaussian, z: torch.Tensor, sigma: float, n: int = 200_000,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte-Carlo ``E[x | x_t = z]`` by self-normalised importance sampling (independent of the closed form).

    Draws ``x_i ~ p`` and weights each by the Eq. 2 likelihood ``N(z; (1 - sigma) x_i, sigma^2 I)``.
    """
    xs = data.sample(n, generator=generator).double()                       # (n, d)
    zz = z.double()                                                          # (m, d)
    d2 = ((zz[:, None, :] - (1 - sigma) * xs[None]) ** 2).sum(-1)            # (m, n)
    w = torch.softmax(-0.5 * d2 / sigma ** 2, dim=1)
    return (w @ xs).to(z.dtype)


# ------------------------------------------------------------------------------------------------
# Toy experiments used by notebook 04 (they call the real objectives, not re-implementations).
# ------------------------------------------------------------------------------------------------
def sample_sigmas(n: int, low: float, high: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample sigma uniform in ``[low, high]`` (TSD-SR draws table indices 50..950: about [0.139, 0.983])."""
    return low + (high - low) * torch.rand(n, generator=generator)


def particle_flow(real: IsotropicGaussian, x0: torch.Tensor, steps: int, lr: float,
                  sigma_range: tuple[float, float] = (0.139, 0.983), normalize: str = "none",
                  seed: int = 0, snapshot_every: int = 10) -> dict:
    """Move free particles ``x^`` by gradient descent on the Eq. 4 surrogate with a tracking critic.

    Each step the fake distribution is re-fitted to the current particles (:meth:`IsotropicGaussian.fit`),
    which is what the critic phi+ learns by Eq. 8; the real denoiser is the closed form of ``real``.
    The particles are leaves of autograd: the update uses ``loss.backward()`` through
    :func:`objectives.restoration_distribution_matching_loss` with ``alpha = 1``. Since the surrogate's
    gradient is ``g_n / B``, the step is ``x^ <- x^ - lr * B * grad`` (= ``x^ - lr g_n`` per particle).
    Returns the mean / std trajectories, snapshots and the distances of the batch mean to ``real.mean``.
    """
    g = torch.Generator().manual_seed(seed)
    x = x0.detach().clone().float().requires_grad_(True)
    B = x.shape[0]
    means, stds, snaps, snap_steps = [], [], [x.detach().clone()], [0]
    for step in range(steps):
        fake = IsotropicGaussian.fit(x)
        means.append(fake.mean.clone())
        stds.append(float(fake.std))
        sigma = sample_sigmas(B, *sigma_range, generator=g)
        noise = torch.randn(x.shape, generator=g)
        loss, _ = obj.restoration_distribution_matching_loss(x, None, real.denoise, fake.denoise, sigma, noise,
                                                             alpha=1.0, normalize=normalize)
        x.grad = None
        loss.backward()
        with torch.no_grad():
            x -= lr * B * x.grad
        if (step + 1) % snapshot_every == 0 or step + 1 == steps:
            snaps.append(x.detach().clone())
            snap_steps.append(step + 1)
    fin = IsotropicGaussian.fit(x)
    means.append(fin.mean.clone())
    stds.append(float(fin.std))
    means_t = torch.stack(means)
    return {"means": means_t, "stds": torch.tensor(stds), "snapshots": snaps, "snapshot_steps": snap_steps,
            "mean_dist_to_real": (means_t - real.mean).norm(dim=1),
            "final": x.detach()}


def restorer_tradeoff(real: IsotropicGaussian, bias: float, degradation_std: float, alphas, steps: int = 300,
                      lr: float = 0.05, n: int = 2048, sigma_range: tuple[float, float] = (0.139, 0.983),
                      normalize: str = "dmd", seed: int = 0) -> list[dict]:
    """Eq. 5's alpha trade-off on a linear toy "restorer" trained with the NiFi distillation term.

    Clean ``x ~ real``; degraded ``x~ = x + bias + n``, ``n ~ N(0, degradation_std^2 I)`` (information is
    lost, so ``x`` cannot be recovered exactly). Restorer ``x^ = a x~ + b`` (scalar ``a``, vector ``b``:
    the output stays an isotropic Gaussian). Each alpha trains ``(a, b)`` with Adam on
    :func:`objectives.restoration_distribution_matching_loss` (a critic re-fitted to the current outputs
    every step, Eq. 8 done analytically; Adam with the learning rate decayed linearly to 0, without
    which the end point is a sample of Adam's jitter rather than the fixed point). Closed-form landmarks (1-D per dimension, s = real.std,
    t = degradation_std): least squares ``a = s^2/(s^2+t^2)`` (Wiener: smallest MSE, output too narrow),
    distribution match ``a = s/sqrt(s^2+t^2)`` (output std = s, larger MSE).
    """
    out = []
    s, t = float(real.std), float(degradation_std)
    for alpha in alphas:
        g = torch.Generator().manual_seed(seed)
        a = torch.ones((), requires_grad=True)
        b = torch.zeros(real.dim, requires_grad=True)
        opt = torch.optim.Adam([a, b], lr=lr)
        # linear decay to 0 so the end point is the fixed point, not a sample of Adam's stationary jitter
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
        for _ in range(steps):
            x = real.sample(n, generator=g)
            x_deg = x + bias + t * torch.randn(x.shape, generator=g)
            x_hat = a * x_deg + b
            fake = IsotropicGaussian.fit(x_hat)
            sigma = sample_sigmas(n, *sigma_range, generator=g)
            noise = torch.randn(x.shape, generator=g)
            loss, _ = obj.restoration_distribution_matching_loss(x_hat, x, real.denoise, fake.denoise, sigma, noise,
                                                                 alpha=float(alpha), normalize=normalize)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            ge = torch.Generator().manual_seed(seed + 12345)
            x = real.sample(8 * n, generator=ge)
            x_hat = a * (x + bias + t * torch.randn(x.shape, generator=ge)) + b
            fit = IsotropicGaussian.fit(x_hat)
            out.append({
                "alpha": float(alpha), "a": float(a), "b_mean": float(b.mean()),
                "mse_to_x": float(((x_hat - x) ** 2).mean()),
                "std_ratio": float(fit.std) / s,
                "mean_error": float((fit.mean - real.mean).norm()),
                "kl_to_real": float(gaussian_kl(fit, real)),
            })
    return out


def tradeoff_landmarks(real_std: float, degradation_std: float) -> dict:
    """Closed-form end points of :func:`restorer_tradeoff` (per dimension, bias removed exactly)."""
    s2, t2 = real_std ** 2, degradation_std ** 2
    a_w = s2 / (s2 + t2)
    a_d = math.sqrt(s2 / (s2 + t2))
    mse = lambda a: (a - 1) ** 2 * s2 + a ** 2 * t2  # noqa: E731
    return {"wiener": {"a": a_w, "mse_to_x": mse(a_w), "std_ratio": a_w * math.sqrt(s2 + t2) / math.sqrt(s2)},
            "matched": {"a": a_d, "mse_to_x": mse(a_d), "std_ratio": 1.0}}

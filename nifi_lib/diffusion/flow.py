"""Rectified-flow maths of the SD3 backbone (paper Sec. 3, Eq. 2, Eq. 3) as pure functions.

Conventions (SD3 / diffusers ``FlowMatchEulerDiscreteScheduler``):
    x_t = (1 - sigma_t) x + sigma_t eps               (Eq. 2)
and the network predicts the velocity ``v = eps - x``. The paper writes that prediction as
``eps_theta``; the denoised estimate used by Eq. 4 and Eq. 7 is ``x_t - sigma_t v``.
Sigmas in the scheduler *decrease* along its timestep list (t = 1000 -> sigma = 1).

Eq. 7's start for a given t0 is decided in ONE place, :func:`eq7_start` (+ :func:`project_to_t0`), used by
both the trainer and the restorer: Eq. 2 noise at sigma(t0) for t0 < T; at t0 = T (1000) the "NiFi w/o t0"
ablation, the degraded latent fed un-noised at timestep T with sigma 1 (TSD-SR's input).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def forward_noise(x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Eq. 2: ``x_t = (1 - sigma) x + sigma eps``. ``sigma`` is a scalar or broadcastable per-sample tensor."""
    sigma = _as_batch(sigma, x)
    return (1.0 - sigma) * x + sigma * eps


def euler_step(x_t: torch.Tensor, v: torch.Tensor, sigma_t, sigma_next) -> torch.Tensor:
    """Eq. 3: one Euler step of the flow ODE, ``x_next = x_t - (sigma_t - sigma_next) v``.

    Written in the scheduler's order (``sigma_next < sigma_t`` when denoising). It is exactly
    ``FlowMatchEulerDiscreteScheduler.step``: ``x + (sigma_next - sigma_t) * v``; the paper prints the
    same update as ``x_{t-1} = x_t - (sigma_{t-1} - sigma_t) eps`` with its own index order.
    """
    sigma_t = _as_batch(sigma_t, x_t)
    sigma_next = _as_batch(sigma_next, x_t)
    return x_t - (sigma_t - sigma_next) * v


def denoised_estimate(x_t: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """The score-model's clean estimate ``x_t - sigma_t v`` (the s(.) of Eq. 4 and the one step of Eq. 7)."""
    return x_t - _as_batch(sigma, x_t) * v


def classifier_free_guidance(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG: ``v_uncond + scale (v_cond - v_uncond)`` (scale 7.5 for s_real and s_restore, Sec. 4.1)."""
    return v_uncond + scale * (v_cond - v_uncond)


def one_step_restore(x_t0: torch.Tensor, v: torch.Tensor, sigma_t0, sigma_end=0.0) -> torch.Tensor:
    """Eq. 7: ``x^ = x~_t0 - sigma_t0 eps_{theta,phi-}(x~_t0, t0)``.

    With ``sigma_end = 0`` this is the paper's formula. The authors' inference code runs the scheduler's
    Euler step from t0 to the timestep nearest 0 instead, whose sigma is about 0.003 (not 0), i.e.
    ``x^ = x~_t0 - (sigma_t0 - sigma_end) v``; :class:`~nifi_lib.restoration.restorer.Restorer` passes
    that ``sigma_end`` to match their outputs.
    """
    return euler_step(x_t0, v, sigma_t0, sigma_end)


@dataclass(frozen=True)
class Eq7Start:
    """Where Eq. 7 starts and ends on the scheduler's table, for one t0 (see :func:`eq7_start`).

    ``t0``: the timestep value passed to the transformer; ``sigma_t0``: the sigma of ``x~_t0``;
    ``sigma_end``: the sigma nearest timestep 0 (the authors' end point, about 0.003); ``add_noise``:
    whether ``x~_t0`` is the Eq. 2 projection of the latent (False only at t0 = T, the "w/o t0" ablation).
    """

    t0: float
    sigma_t0: float
    sigma_end: float
    add_noise: bool = True

    @property
    def is_terminal(self) -> bool:
        """t0 = T: the "NiFi w/o t0" ablation (TSD-SR's input: the un-noised latent at t = T)."""
        return not self.add_noise


def eq7_start(scheduler: FlowMatchEulerDiscreteScheduler, t0: float) -> Eq7Start:
    """The one rule for the start of Eq. 7, shared by training and inference.

    - ``0 <= t0 < T`` (NiFi: t0 = 199): ``x~_t0 = (1 - sigma_t0) x~ + sigma_t0 eps`` (Eq. 2) with
      ``sigma_t0 = sigma_at(scheduler, t0)`` (about 0.198 for SD3, shift 3);
    - ``t0 = T = num_train_timesteps`` ("NiFi w/o t0", Sec. 4.2, as in TSD-SR): the degraded latent is fed
      *un-noised* at timestep T with ``sigma_t0 = 1`` (= ``sigma_at(scheduler, T)``, the table's first entry),
      so the step is ``x^ = x~ - (1 - sigma_end) v``.

    Both end at ``sigma_end = sigma_at(scheduler, 0)`` (Eq. 7 with the authors' end point).
    """
    big_t = int(scheduler.config.num_train_timesteps)
    t0 = float(t0)
    if not 0 <= t0 <= big_t:
        raise ValueError(f"t0 must lie in [0, {big_t}] (T = {big_t}: the un-noised 'w/o t0' ablation), got {t0:g}")
    sigma_end = sigma_at(scheduler, 0)
    if t0 == big_t:
        return Eq7Start(t0=float(big_t), sigma_t0=1.0, sigma_end=sigma_end, add_noise=False)
    return Eq7Start(t0=t0, sigma_t0=sigma_at(scheduler, t0), sigma_end=sigma_end, add_noise=True)


def project_to_t0(latents: torch.Tensor, start: Eq7Start, generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """``x~_t0`` of Eq. 7 from the degraded latent ``x~``: Eq. 2 at ``start.sigma_t0``, or ``x~`` itself at t0 = T.

    ``noise`` (else drawn from ``generator``, after the latent sample, in the latents' dtype and device, as
    the authors' code) is used only when ``start.add_noise``; at t0 = T nothing is drawn. ``generator`` may be a
    list, one per frame of the batch (as diffusers' ``randn_tensor``): frame i's noise is then what a batch of
    one with ``generator[i]`` draws.
    """
    if not start.add_noise:
        return latents
    if noise is None and isinstance(generator, (list, tuple)):   # one generator per frame (batched = one by one)
        noise = torch.cat([torch.randn((1,) + tuple(latents.shape[1:]), generator=g, device=latents.device,
                                       dtype=latents.dtype) for g in generator])
    elif noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return forward_noise(latents, noise.to(device=latents.device, dtype=latents.dtype), start.sigma_t0)


def make_scheduler(num_train_timesteps: int = 1000, shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    """The SD3 flow-matching scheduler (shift 3.0 for SD3-medium)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)


def nearest_schedule_index(scheduler: FlowMatchEulerDiscreteScheduler, timestep: float) -> int:
    """Index of the scheduler's *initial* 1000-step table entry whose timestep is nearest ``timestep``."""
    ts = _initial_timesteps(scheduler)
    return int(np.argmin(np.abs(ts - float(timestep))))


def sigma_at(scheduler: FlowMatchEulerDiscreteScheduler, timestep: float) -> float:
    """Sigma looked up as the authors do: the sigma whose timestep is nearest ``timestep``.

    For SD3 (shift 3.0) ``sigma_at(s, 199) ~= 0.198`` and ``sigma_at(s, 0) ~= 0.003``.
    """
    sig = _initial_sigmas(scheduler)
    return float(sig[nearest_schedule_index(scheduler, timestep)])


def sigma_of_index(scheduler: FlowMatchEulerDiscreteScheduler, index: int) -> float:
    return float(_initial_sigmas(scheduler)[index])


def schedule_tables(scheduler: FlowMatchEulerDiscreteScheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas) of the initial schedule as float32 tensors, sigmas descending."""
    return (torch.tensor(_initial_timesteps(scheduler), dtype=torch.float32),
            torch.tensor(_initial_sigmas(scheduler), dtype=torch.float32))


def _initial_timesteps(scheduler) -> np.ndarray:
    # ``scheduler.timesteps`` is overwritten by set_timesteps(); rebuild the initial table from the config.
    fresh = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    return fresh.timesteps.detach().cpu().numpy().astype(np.float64)


def _initial_sigmas(scheduler) -> np.ndarray:
    fresh = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    return fresh.sigmas[: len(fresh.timesteps)].detach().cpu().numpy().astype(np.float64)


def _as_batch(sigma, like: torch.Tensor) -> torch.Tensor:
    """Scalar or per-sample ``(B,)`` sigma, broadcast against ``like`` of shape ``(B, ...)``."""
    if not torch.is_tensor(sigma):
        return torch.tensor(float(sigma), dtype=like.dtype, device=like.device)
    sigma = sigma.to(device=like.device, dtype=like.dtype)
    if sigma.ndim == 1 and like.ndim > 1:
        sigma = sigma.view(-1, *([1] * (like.ndim - 1)))
    return sigma

"""Which classifier-free guidance scale a prior supports (Sec. 4.1: CFG 7.5 for s_real and s_restore).

CFG extrapolates from the unconditional velocity towards the conditional one,
``v = v_u + w (v_c - v_u)`` (:func:`~nifi_lib.diffusion.flow.classifier_free_guidance`). It helps only where
the two branches estimate different fields; a prior trained on one fixed prompt plus the null prompt learns
the same field twice, and a large ``w`` then amplifies their estimation noise. This module measures, on
held-out clean views, how far the guided velocity is from the flow target ``eps - x`` (Eq. 2's velocity) at
the teacher's noise levels, for several scales, so the scale used for the scores of Eq. 4/5 is chosen by
measurement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..diffusion.flow import classifier_free_guidance, forward_noise, schedule_tables
from ..diffusion.latents import encode_latents, pad_to_multiple, to_model_range, transformer_velocity


@dataclass
class GuidanceProbe:
    """Mean squared error of the guided velocity to the flow target, per scale and noise level.

    ``mse[scale][i]`` is the error at ``sigmas[i]``; ``mean[scale]`` averages over the teacher's timestep
    range (indices ``t_min_index..t_max_index`` of the shifted table, uniform in the index as in training),
    on the *denoised* scale ``sigma^2 * mse`` (the error of ``s(x_t) = x_t - sigma v``, the score that Eq. 4
    and Eq. 5 use)."""

    scales: list[float]
    sigmas: list[float]
    mse: dict[float, list[float]]
    mean_denoised: dict[float, float]
    n_images: int
    best: float = field(init=False)

    def __post_init__(self):
        self.best = min(self.scales, key=lambda s: self.mean_denoised[s])

    def table(self) -> list[dict]:
        """One row per scale: ``scale``, ``mean_denoised_mse`` and ``v_mse@<sigma>`` per probed sigma."""
        rows = []
        for s in self.scales:
            row = {"scale": s, "mean_denoised_mse": self.mean_denoised[s]}
            row.update({f"v_mse@{sg:.2f}": m for sg, m in zip(self.sigmas, self.mse[s])})
            rows.append(row)
        return rows


@torch.no_grad()
def guidance_probe(backbone, clean01: torch.Tensor, scales: Sequence[float] = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5),
                   t_min_index: int = 50, t_max_index: int = 950, n_sigmas: int = 10, seed: int = 0,
                   batch: int = 8) -> GuidanceProbe:
    """Guided-velocity error to the flow target on clean views ``clean01`` ``(N, 3, H, W)`` in [0, 1].

    For ``n_sigmas`` indices spread evenly over ``t_min_index..t_max_index`` of the shifted table: encode
    ``x = E(I)``, noise it with Eq. 2 (``x_t = (1 - sigma) x + sigma eps``), predict the conditional and the
    null-prompt velocities with the frozen base, and score ``classifier_free_guidance(v_u, v_c, w)`` against
    ``eps - x`` for each ``w``. ``w = 1`` is the conditional branch alone, ``w = 0`` the unconditional one.
    Seeded (``seed``): the same latents and noise for every scale.
    """
    bb = backbone
    if bb.prompt is None or bb.null_prompt is None:
        raise ValueError("guidance_probe needs the prompt and the null-prompt embeddings")
    dev, dt = bb.device, next(bb.transformer.parameters()).dtype
    timesteps, sigmas = schedule_tables(bb.scheduler)
    idx = torch.linspace(t_min_index, t_max_index, n_sigmas).round().long()
    g = torch.Generator(device=dev).manual_seed(int(seed))
    scales = [float(s) for s in scales]
    sq = {s: torch.zeros(n_sigmas, dtype=torch.float64) for s in scales}
    count = 0
    for start in range(0, clean01.shape[0], batch):
        x = to_model_range(clean01[start:start + batch].to(device=dev, dtype=dt))
        x, _ = pad_to_multiple(x, bb.vae_scale_factor)
        z = encode_latents(bb.vae, x, bb.scaling_factor, generator=g).float()
        z, _ = pad_to_multiple(z, bb.patch_size)
        n = z.shape[0]
        pe, pp = bb.prompt_batch(n, device=dev, dtype=dt)
        npe, npp = bb.prompt_batch(n, device=dev, dtype=dt, null=True)
        for j, i in enumerate(idx.tolist()):
            eps = torch.randn(z.shape, generator=g, device=dev)
            z_t = forward_noise(z, eps, float(sigmas[i]))                                   # Eq. 2
            t = float(timesteps[i])
            v = transformer_velocity(bb.transformer, torch.cat([z_t, z_t]).to(dt), t,
                                     torch.cat([npe, pe]), torch.cat([npp, pp])).float()
            v_u, v_c = v.chunk(2)
            target = eps - z
            for s in scales:
                err = (classifier_free_guidance(v_u, v_c, s) - target).pow(2).mean(dim=(1, 2, 3))
                sq[s][j] += err.double().sum().cpu()
        count += n
    if count == 0:
        raise ValueError("guidance_probe needs at least one image")
    probed = [float(sigmas[i]) for i in idx.tolist()]
    mse = {s: (sq[s] / count).tolist() for s in scales}
    w = torch.tensor(probed, dtype=torch.float64).pow(2)
    mean_denoised = {s: float((w * torch.tensor(mse[s], dtype=torch.float64)).mean()) for s in scales}
    return GuidanceProbe(scales=scales, sigmas=probed, mse=mse, mean_denoised=mean_denoised, n_images=count)


__all__ = ["GuidanceProbe", "guidance_probe"]

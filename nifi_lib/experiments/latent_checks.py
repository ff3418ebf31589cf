"""What the backbone's latent round trip and one Eq. 7 step change in an image (notebooks 02 and 03).

- :func:`vae_reconstruction`: ``D(E(I))`` of clean views and its PSNR, the bound the VAE sets on any
  restorer on top of it.
- :func:`trace_sweep`: :meth:`Restorer.trace` of one image at several t0 (Eq. 2 projection, Eq. 7 step);
- :func:`trace_distances`: mean ``|x - input|`` of those restorations and of the VAE round trip alone.
"""
from __future__ import annotations

import torch

L1_KEY = "l1_restored_vs_input_t0_{t0}"
VAE_L1_KEY = "vae_reconstruction_l1"


@torch.no_grad()
def vae_reconstruction(backbone, clean01: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``D(E(I))`` of ``clean01`` ``(N, 3, H, W)`` in [0, 1] with the latent mean (no sampling), in [0, 1],
    and its PSNR in dB averaged over the images (:func:`nifi_lib.image_quality.psnr`, no epsilon). A frame whose
    sides are no multiple of the VAE factor is reflect-padded as the restorer pads it and cropped back."""
    from ..diffusion.latents import decode_latents, encode_latents, pad_to_multiple
    from ..image_quality import psnr

    bb = backbone
    vae_param = next(bb.vae.parameters())
    x = (clean01 * 2 - 1).to(device=vae_param.device, dtype=vae_param.dtype)   # a backbone on the GPU: its device
    x, _ = pad_to_multiple(x, bb.vae_scale_factor)
    z = encode_latents(bb.vae, x, bb.scaling_factor, sample=False)
    rec = ((decode_latents(bb.vae, z, bb.scaling_factor).float().cpu() + 1) / 2).clamp(0, 1)
    rec = rec[..., :clean01.shape[-2], :clean01.shape[-1]]
    return rec, float(psnr(rec, clean01, eps=0.0, dtype=None).mean())


def trace_sweep(restorer, image: torch.Tensor, t0_values, seed: int = 0) -> list[dict]:
    """Every intermediate of Eq. 7 (:meth:`~nifi_lib.restoration.restorer.Restorer.trace`) of ``image``
    ``(1, 3, H, W)`` in [-1, 1] for each t0 of ``t0_values``, with the same seed."""
    return [restorer.trace(image, t0=t, seed=seed) for t in t0_values]


def trace_distances(image: torch.Tensor, traces: list[dict]) -> dict[str, float]:
    """Mean absolute difference to ``image`` (the input, [-1, 1]) of each trace's one-step restoration
    (``l1_restored_vs_input_t0_<t0>``) and of the first trace's VAE reconstruction (``vae_reconstruction_l1``).
    ``traces``: :meth:`nifi_lib.restoration.restorer.Restorer.trace` of ``image`` at several t0 (on the restorer's
    device and dtype, e.g. bf16 on a GPU): measured in float32 on the CPU, where the notebook's input image is."""
    ref = image.detach().float().cpu()

    def l1(x: torch.Tensor) -> float:
        return (x.detach().float().cpu() - ref).abs().mean().item()

    out = {VAE_L1_KEY: l1(traces[0]["reconstruction"])}
    out.update({L1_KEY.format(t0=int(tr["t0"])): l1(tr["restored"]) for tr in traces})
    return out


__all__ = ["vae_reconstruction", "trace_sweep", "trace_distances", "L1_KEY", "VAE_L1_KEY"]

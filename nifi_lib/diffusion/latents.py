"""Backbone primitives shared by the prior, the restorer, the trainer and the bench (paper Sec. 3: the LDM's
E and D, the transformer's velocity ``eps_theta``): image range conversions, padding to the VAE/patch factor,
``E(I)`` (:func:`encode_latents`), ``D(x)`` (:func:`decode_latents`, :func:`decode_latents_tiled`) and
``v = eps_theta(x_t, t)`` (:func:`transformer_velocity`). No adapters here: which LoRA is active is the
caller's business (:func:`nifi_lib.restoration.lora.adapter_scope`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .fast_paths import vae_channels_last


def to_model_range(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return images01 * 2.0 - 1.0


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((images + 1.0) / 2.0).clamp(0, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the bottom/right of an NCHW tensor to a multiple of ``multiple``; return the pad."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (ph, pw)


def encode_latents(vae, images: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None,
                   sample: bool = True) -> torch.Tensor:
    """E(I): a sample of the encoder's latent distribution times the scaling factor (no shift, as the
    authors' code). ``images`` in [-1, 1], already padded."""
    if vae_channels_last(vae):
        images = images.contiguous(memory_format=torch.channels_last)
    dist = vae.encode(images).latent_dist
    z = dist.sample(generator=generator) if sample else dist.mode()
    return z * scaling_factor


def decode_latents(vae, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """D(x): decoded image in (roughly) [-1, 1]."""
    z = latents / scaling_factor
    if vae_channels_last(vae):
        z = z.contiguous(memory_format=torch.channels_last)
    return vae.decode(z).sample


def decode_latents_tiled(vae, latents: torch.Tensor, scaling_factor: float, tile: int = 64,
                         overlap: int = 16) -> torch.Tensor:
    """D(x) in overlapping latent tiles of ``tile`` x ``tile`` (``overlap`` latent pixels shared), each
    decoded on its own and blended with linear ramps in pixel space, all on the latents' device.

    Bounds the decoder's activation memory by the tile size (the full decoder at 1920x1080, batch 4,
    holds several GiB per layer). It is an approximation of :func:`decode_latents`: the decoder's group
    norms and mid-block attention see one tile instead of the frame (``tests/test_perf_paths.py`` states
    the tolerance); frames no larger than one tile are decoded exactly as :func:`decode_latents`.
    Every tile has the same shape (the last row/column is shifted inwards), so a compiled decoder sees
    one shape.
    """
    n, _, h, w = latents.shape
    if h <= tile and w <= tile:
        return decode_latents(vae, latents, scaling_factor)
    th, tw = min(tile, h), min(tile, w)
    ov = max(0, min(int(overlap), th - 1, tw - 1))
    ys, xs = _tile_starts(h, th, max(th - ov, 1)), _tile_starts(w, tw, max(tw - ov, 1))
    out = weight = None
    for y in ys:
        for x in xs:
            dec = decode_latents(vae, latents[..., y:y + th, x:x + tw], scaling_factor)
            if out is None:
                f = dec.shape[-2] // th
                out = torch.zeros(n, dec.shape[1], h * f, w * f, dtype=torch.float32, device=dec.device)
                weight = torch.zeros(1, 1, h * f, w * f, dtype=torch.float32, device=dec.device)
            wy = _ramp(th * f, ov * f if y > 0 else 0, ov * f if y + th < h else 0, device=dec.device)
            wx = _ramp(tw * f, ov * f if x > 0 else 0, ov * f if x + tw < w else 0, device=dec.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[..., y * f:(y + th) * f, x * f:(x + tw) * f] += dec.float() * wt
            weight[..., y * f:(y + th) * f, x * f:(x + tw) * f] += wt
    return (out / weight).to(dec.dtype)


def transformer_velocity(transformer, x_t: torch.Tensor, timestep: torch.Tensor | float,
                         prompt_embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """v = eps_theta(x_t, t) for a batch (the SD3 transformer's output)."""
    n = x_t.shape[0]
    if not torch.is_tensor(timestep) or timestep.ndim == 0:
        timestep = torch.full((n,), float(timestep), device=x_t.device, dtype=x_t.dtype)
    return transformer(hidden_states=x_t, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                       timestep=timestep.to(x_t.dtype), return_dict=False)[0]


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def _ramp(n: int, left: int, right: int, device=None) -> torch.Tensor:
    r = torch.ones(n, device=device)
    if left:
        r[:left] = torch.linspace(0, 1, left + 2, device=device)[1:-1]
    if right:
        r[-right:] = torch.linspace(1, 0, right + 2, device=device)[1:-1]
    return r


__all__ = ["decode_latents", "decode_latents_tiled", "encode_latents", "pad_to_multiple", "to_model_range",
           "to_unit_range", "transformer_velocity"]

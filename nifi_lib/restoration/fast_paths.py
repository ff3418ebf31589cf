"""The restorer's fast paths and frame-size handling, options of the one Eq. 7 path (``docs/performance.md``).

- :func:`fuse_adapter`: phi- merged into the base weights once (inference-only backbones);
- tiling: :func:`tile_plan` decides whether a frame is restored whole or in overlapping tiles (a user tile
  size, or automatically when the latent exceeds the transformer's position table,
  :func:`position_table_limit`), :func:`blend_tiles` runs a function per tile and blends with linear ramps.

The backbone's own fast paths (torch.compile, channels_last, CUDA graphs) are
:mod:`nifi_lib.diffusion.fast_paths`.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..diffusion.latents import _ramp, _tile_starts
from ..errors import NifiError
from .lora import RESTORER, adapter_names


class FrameSizeError(NifiError, ValueError):
    """A frame the restorer cannot handle at any tiling (a side smaller than the VAE factor, a bad tile or bucket size)."""


def fuse_adapter(backbone, adapter: str = RESTORER) -> None:
    """Merge one LoRA adapter into the base weights of the transformer and the VAE (peft's ``merge``),
    in place: ``W <- W + s B A`` for linears, the composed kernel for the VAE's LoRA convs. Runs once per
    backbone; afterwards peft's layers with the adapter active compute ``base_layer(x)`` only."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in (backbone.transformer, backbone.vae):
        if adapter not in adapter_names(model):
            continue
        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {}) \
                    and adapter not in getattr(module, "merged_adapters", []):
                module.merge(adapter_names=[adapter])
    backbone.fast_paths["fused_lora"] = adapter


def position_table_limit(backbone) -> int | None:
    """The largest frame side (image pixels) the transformer's position table covers:
    ``pos_embed_max_size`` x patch size (latent pixels) x the VAE factor; ``None`` when the transformer
    has no such table (no limit). SD3-medium: 192 x 2 x 8 = 3072 px; the embedded backbone: 48 x 2 x 4 = 384."""
    m = getattr(backbone.transformer.config, "pos_embed_max_size", None)
    if not m:
        return None
    return int(m) * int(backbone.patch_size) * int(backbone.vae_scale_factor)


def auto_overlap(tile: int, unit: int) -> int:
    """About 1/8 of ``tile``, rounded to a multiple of ``unit`` (VAE factor x patch), at most a quarter of it."""
    ov = max(unit, int(round(tile / 8 / unit)) * unit)
    return ov if 2 * ov <= tile else tile // 4


def tile_plan(backbone, h: int, w: int, tile_size: int | None, tile_overlap: int
              ) -> tuple[tuple[int, int] | None, str | None]:
    """``((tile, overlap), notice)`` in image pixels for an ``h`` x ``w`` frame, ``(None, None)`` to restore whole.

    Tiles when the frame is larger than ``tile_size`` and, automatically, when its padded latent exceeds the
    transformer's position table (:func:`position_table_limit`): tiles of the largest side the table allows,
    overlapping by about 1/8 of it (a multiple of VAE factor x patch); ``notice`` then says so (the caller
    announces it once). Raises :class:`FrameSizeError` for what no tiling can handle.
    """
    f = int(backbone.vae_scale_factor)
    if min(h, w) < f:
        raise FrameSizeError(f"frame {w}x{h} is too small: each side must be at least the backbone's VAE "
                             f"factor ({f} px)")
    user = int(tile_size) if tile_size else None
    if user is not None and user < f:
        raise FrameSizeError(f"frame {w}x{h} cannot be tiled with tile_size {user}: tiles must be at least "
                             f"the backbone's VAE factor ({f} px)")
    limit = position_table_limit(backbone)
    if limit is not None and max(h, w) > limit and (user is None or user > limit):
        ts, ov = limit, auto_overlap(limit, f * int(backbone.patch_size))
        stride = max(ts - ov, 1)
        n = len(_tile_starts(h, ts, stride)) * len(_tile_starts(w, ts, stride))
        return (ts, ov), (f"frame {w}x{h} exceeds the backbone's position table (max {limit} px): "
                          f"restoring in {n} overlapping tiles")
    if user is not None and max(h, w) > user:
        return (user, int(tile_overlap)), None
    return None, None


def blend_tiles(images: torch.Tensor, ts: int, ov: int, fn: Callable[[torch.Tensor], torch.Tensor],
                device: torch.device) -> torch.Tensor:
    """``fn`` on overlapping ``ts`` x ``ts`` tiles (``ov`` pixels shared; the last row/column shifted
    inwards), blended with linear ramps, accumulated on ``device`` (no host copy, i.e. no sync, per tile)."""
    n, _, h, w = images.shape
    ov = max(0, min(ov, ts // 2))   # ramps of both sides must fit in one tile
    stride = max(ts - ov, 1)
    out = torch.zeros(n, 3, h, w, dtype=torch.float32, device=device)
    weight = torch.zeros(1, 1, h, w, dtype=torch.float32, device=device)
    for y in _tile_starts(h, ts, stride):
        for x in _tile_starts(w, ts, stride):
            tile = images[..., y:y + ts, x:x + ts]
            res = fn(tile).to(device=device, dtype=torch.float32)
            wy = _ramp(tile.shape[-2], ov if y > 0 else 0, ov if y + ts < h else 0, device=device)
            wx = _ramp(tile.shape[-1], ov if x > 0 else 0, ov if x + ts < w else 0, device=device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[..., y:y + ts, x:x + ts] += res * wt
            weight[..., y:y + ts, x:x + ts] += wt
    return (out / weight.clamp_min(1e-8)).to(images.device)


__all__ = ["FrameSizeError", "auto_overlap", "blend_tiles", "fuse_adapter", "position_table_limit", "tile_plan"]

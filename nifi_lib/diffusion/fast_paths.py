"""Fast paths of the backbone (``docs/performance.md``): each leaves the computed function unchanged.

``optimize_backbone`` (torch.compile of the transformer blocks and the VAE, channels_last VAE with
:class:`ChannelsLastGroupNorm`, cuDNN autotuning, inductor's CUDA graphs) and :func:`mark_step`, which every
caller of a CUDA-graphed backbone runs at the start of a step. The restorer's own fast paths (phi- fused into
the base, tiling) are :mod:`nifi_lib.restoration.fast_paths`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .backbone import Backbone


def _raise_recompile_limits(limit: int = 64) -> None:
    """Each adapter state (off / phi- / phi+), grad mode, autocast state and input shape is one compiled
    variant of a block; the default limit (8 per code object) would silently fall back to eager."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)
    if hasattr(cfg, "accumulated_recompile_limit") and cfg.accumulated_recompile_limit < 8 * limit:
        cfg.accumulated_recompile_limit = 8 * limit


class ChannelsLastGroupNorm(torch.nn.GroupNorm):
    """``nn.GroupNorm`` computed from per-channel sums (two passes: mean, then centred variance; float32),
    for NHWC activations. The function is GroupNorm's; the reductions run over the pixels of each channel
    (contiguous across channels in NHWC), which inductor turns into coalesced kernels, where its
    GroupNorm lowering reads an NHWC tensor group by group (4 of every 128 channels per load at SD3's
    top VAE level: ~10x under bandwidth, seen on an H100). Other inputs (NCHW, 3-D) use ``nn.GroupNorm``.
    Under CUDA autocast it returns float32, as ``F.group_norm`` does there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.num_groups
        k = c // g
        xf = x.float()
        count = float(h * w * k)
        mean = xf.sum(dim=(2, 3)).view(n, g, k).sum(-1) / count                       # (n, g)
        d = xf - mean.repeat_interleave(k, dim=1)[:, :, None, None]
        var = (d * d).sum(dim=(2, 3)).view(n, g, k).sum(-1) / count
        y = d * torch.rsqrt(var + self.eps).repeat_interleave(k, dim=1)[:, :, None, None]
        if self.affine:
            y = y * self.weight.float()[None, :, None, None] + self.bias.float()[None, :, None, None]
        # CUDA autocast runs group_norm in float32 and returns float32; elsewhere the input dtype
        return y if (x.device.type == "cuda" and torch.is_autocast_enabled("cuda")) else y.to(x.dtype)


def set_channels_last_group_norm(module: torch.nn.Module, enabled: bool = True) -> int:
    """Switch every ``nn.GroupNorm`` of ``module`` to :class:`ChannelsLastGroupNorm` (or back), in place
    (same parameters and state-dict keys). Returns how many were switched."""
    count = 0
    for m in module.modules():
        if enabled and type(m) is torch.nn.GroupNorm:
            m.__class__ = ChannelsLastGroupNorm
            count += 1
        elif not enabled and type(m) is ChannelsLastGroupNorm:
            m.__class__ = torch.nn.GroupNorm
            count += 1
    return count


def optimize_backbone(bb: "Backbone", *, compile: bool = False, channels_last: bool | None = None,
                      cudnn_benchmark: bool | None = None, compile_transformer: bool = True, compile_vae: bool = True,
                      compile_mode: str | None = None, dynamic: bool | None = None,
                      cuda_graphs: bool = False, vae_attention: str | None = None) -> "Backbone":
    """Switch on the fast paths of the backbone in place; the computed function does not change.

    - ``channels_last`` (default: on when compiling): the VAE's 4-D weights (LoRA convs included) in NHWC
      order; :func:`~nifi_lib.diffusion.latents.encode_latents`/``decode_latents`` then feed NHWC
      inputs, so cuDNN runs its NHWC (tensor-core friendly) kernels without layout transposes; the VAE's
      group norms become :class:`ChannelsLastGroupNorm` (same function, NHWC-friendly reductions).
    - ``cuda_graphs`` (with ``compile``, inference only): inductor's CUDA graphs (``mode=
      "reduce-overhead"``): each compiled region replays as one graph, removing the per-kernel launch
      cost that otherwise bounds a batch-1 restore by the host. Callers mark each new step with
      ``torch.compiler.cudagraph_mark_step_begin()`` (:class:`Restorer` does).
    - ``cudnn_benchmark`` (default: on for CUDA whenever anything is switched on): cuDNN times its
      convolution algorithms once per shape and keeps the fastest (a process-wide flag).
    - ``compile``: ``torch.compile`` (inductor) of each ``JointTransformerBlock`` ("regional"
      compilation: one block's code serves all 24, much shorter compile time than the whole model) and
      of the VAE encoder and decoder. Graphs are specialised per adapter state, grad mode and shape; the
      recompile limit is raised so that no variant silently falls back to eager. ``dynamic`` applies to
      the transformer blocks (default: PyTorch's automatic dynamic shapes); the VAE is always compiled
      with static shapes (one graph per frame size): inductor fails on the channels_last convolutions'
      symbolic strides otherwise ("cannot determine truth value of Relational", torch 2.14).
    - ``vae_attention`` (default None: as it is): the VAE's attention processor, ``"sdpa"`` (diffusers'
      default) or ``"chunked"`` (:func:`~nifi_lib.diffusion.vae_attention.chunked_attention`: GEMMs and a
      float32 softmax over chunks of queries, for the single 512-wide head that no fused SDPA kernel serves);
      see :func:`~nifi_lib.diffusion.vae_attention.set_vae_attention`. Set before ``compile`` (a later switch
      recompiles the VAE). Another kind raises ``ValueError``.

    Attention already runs through PyTorch's fused ``scaled_dot_product_attention`` in diffusers'
    processors (flash attention for SD3's 64-wide heads in bf16). Calling this again only adds what
    was not applied yet.
    """
    from .vae_attention import set_vae_attention, vae_attention_kind

    device = bb.device
    if vae_attention is not None:
        if vae_attention_kind(bb.vae) != vae_attention:   # the same kind again: no new processors (no recompile)
            set_vae_attention(bb.vae, vae_attention)
        bb.fast_paths["vae_attention"] = vae_attention
    if channels_last is None:
        channels_last = bool(compile)
    if cudnn_benchmark is None:
        cudnn_benchmark = device.type == "cuda" and (compile or channels_last)
    done = bb.fast_paths
    if cudnn_benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        done["cudnn_benchmark"] = True
    if channels_last and not done.get("channels_last"):
        bb.vae.to(memory_format=torch.channels_last)
        set_channels_last_group_norm(bb.vae, True)
        done["channels_last"] = True
    if compile:
        _raise_recompile_limits()
        if cuda_graphs and compile_mode is None and device.type == "cuda":
            compile_mode = "reduce-overhead"
        kw = {"mode": compile_mode} if compile_mode is not None else {}
        if compile_mode is not None and "reduce-overhead" in compile_mode and not done.get("compile_transformer"):
            done["cuda_graphs"] = True
        if compile_transformer and not done.get("compile_transformer"):
            for block in bb.transformer.transformer_blocks:
                block.compile(**kw, **({"dynamic": dynamic} if dynamic is not None else {}))
            done["compile_transformer"] = True
        if compile_vae and not done.get("compile_vae"):
            bb.vae.encoder.compile(**kw, dynamic=False)
            bb.vae.decoder.compile(**kw, dynamic=False)
            done["compile_vae"] = True
    return bb


def vae_channels_last(vae) -> bool:
    """Whether :func:`optimize_backbone` put this VAE's weights in channels_last order."""
    w = vae.decoder.conv_in.weight
    return w.ndim == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def mark_step(bb) -> None:
    """A new step for inductor's CUDA graphs (their outputs of the previous step may then be overwritten);
    a no-op unless :func:`optimize_backbone` turned CUDA graphs on for ``bb``."""
    if bb.fast_paths.get("cuda_graphs"):
        torch.compiler.cudagraph_mark_step_begin()


# --------------------------------------------------------------------------- inductor's compile cache

COMPILE_CACHE_MAGIC = b"NIFICC1\n"   # our header before torch's bytes: a wrong file fails with its name


class CompileCacheError(ValueError):
    """A compile-cache file that is not one (wrong header, truncated, or refused by this torch)."""


def save_compile_cache(path: str | Path) -> int | None:
    """Write inductor's compiled artifacts of this process (``torch.compiler.save_cache_artifacts``: FX graphs,
    Triton kernels, autotuning results, AOT autograd entries) to ``path`` atomically; returns the bytes written,
    or None when nothing was compiled. A later process on a fresh machine (same torch, GPU and code) loads it with
    :func:`load_compile_cache` and skips inductor's code generation and autotuning (issue 18: the first training
    step on a warm cache). The file is executable code for torch: load only caches your own runs wrote."""
    from ..io.atomic import atomic_write_bytes

    art = torch.compiler.save_cache_artifacts()
    if art is None or not art[0]:
        return None
    data = COMPILE_CACHE_MAGIC + art[0]
    atomic_write_bytes(path, data)
    return len(data)


def load_compile_cache(path: str | Path) -> dict:
    """Hot-load a :func:`save_compile_cache` file into inductor's local caches before the first compiled call.
    Returns ``{"path", "bytes", "artifacts"}`` (artifacts per kind, as torch counts them). A missing file raises
    ``FileNotFoundError`` naming it; a file that is not a compile cache, or that this torch refuses, raises
    :class:`CompileCacheError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no compile cache there (a run with train.compile and train.compile_cache "
                                f"set writes it after its first steps)")
    data = p.read_bytes()
    if not data.startswith(COMPILE_CACHE_MAGIC):
        raise CompileCacheError(f"{p}: not a nifi compile cache (no {COMPILE_CACHE_MAGIC!r} header)")
    info = torch.compiler.load_cache_artifacts(data[len(COMPILE_CACHE_MAGIC):])
    if info is None:
        raise CompileCacheError(f"{p}: torch {torch.__version__} could not read these cache artifacts "
                                f"(truncated, or written by another torch version)")
    kinds = {k: len(v) for k, v in getattr(info, "artifacts", {}).items()}
    return {"path": str(p), "bytes": len(data), "artifacts": kinds}


__all__ = ["ChannelsLastGroupNorm", "CompileCacheError", "load_compile_cache", "mark_step", "optimize_backbone",
           "save_compile_cache", "set_channels_last_group_norm", "vae_channels_last"]

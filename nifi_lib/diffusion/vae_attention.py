"""Attention for the VAE's single 512-wide head (issue 18, ``docs/performance.md``): the same function, faster.

The SD3 VAE's mid-block attention is one head of width 512 over every latent pixel (16384 tokens at
1024x1024, 32400 at 1080x1920). PyTorch's flash and cuDNN attention kernels cap the head at 256, so
``scaled_dot_product_attention`` falls back to the cutlass memory-efficient kernel (4.7 ms per call at
1024x1024 on an H100, about 120 TFLOP/s). The work is two GEMMs (QK^T and PV, 0.55 TFLOP at 1024x1024) and a
softmax over the scores (a few GB of memory traffic), which :func:`chunked_attention` runs as such: scores by
a GEMM (half-precision inputs, float32 output), softmax in float32, then P @ V by a GEMM, over chunks of
queries that bound the scores' memory.

:class:`ChunkedAttnProcessor` is diffusers' ``AttnProcessor2_0`` (group norm, projections, residual connection,
rescale) with :func:`chunked_attention` in place of SDPA; :func:`set_vae_attention` switches a VAE's
``Attention`` modules between the two (a fast path of :func:`~nifi_lib.diffusion.fast_paths.optimize_backbone`).
"""
from __future__ import annotations

import functools
import math

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

CHUNK_BYTES = 512 * 2 ** 20      # float32 scores of one chunk of queries (all batches and heads)
VAE_ATTENTION_KINDS = ("sdpa", "chunked")


def default_chunk(batch_heads: int, n_keys: int, budget: int = CHUNK_BYTES) -> int:
    """Queries per chunk such that the chunk's float32 scores ``(batch_heads, chunk, n_keys)`` fit ``budget``
    bytes (at least one query): 8192 for one head over 16384 keys (1024x1024), 4142 over 32400 (1080x1920)."""
    return max(1, budget // (4 * batch_heads * n_keys))


class _HalfScores(torch.autograd.Function):
    """``q @ k^T`` in float32 from half-precision 3-D ``(batch, n, d)`` inputs, as the fused kernels keep their
    scores: one GEMM with a float32 output on CUDA (``bmm(..., out_dtype=)``, which has no derivative), an
    upcast GEMM elsewhere. The backward's GEMMs take the scores' gradient in the inputs' dtype (as flash
    attention's backward does)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k)
        if q.is_cuda:
            return torch.bmm(q, k.transpose(1, 2), out_dtype=torch.float32)
        return torch.bmm(q.float(), k.float().transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = ctx.saved_tensors
        grad = grad.to(q.dtype)
        return torch.bmm(grad, k), torch.bmm(grad.transpose(1, 2), q)


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``q @ k^T`` in float32 (half-precision inputs: :class:`_HalfScores`), else in the inputs' dtype."""
    if q.dtype in (torch.float16, torch.bfloat16):
        return _HalfScores.apply(q, k)
    return torch.bmm(q, k.transpose(1, 2))


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                      chunk: int | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` for ``(B, H, N, D)`` tensors, by chunks of ``chunk`` queries.

    The function of ``torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)`` (no mask, no
    dropout; ``scale`` defaults to ``D ** -0.5``), exact up to rounding: the scores are a float32 GEMM output
    (half-precision inputs on CUDA), scaled and softmaxed in float32; the probabilities are cast to ``v``'s
    dtype for the P @ V GEMM, whose output is returned in ``q``'s dtype. Under autocast the inputs are cast to
    the autocast dtype first, as SDPA's. ``chunk`` (default :func:`default_chunk`: 512 MiB of float32 scores)
    bounds the memory of the forward; under autograd every chunk's probabilities are kept for the backward.

    Why: no fused kernel serves the VAE's 512-wide head (flash and cuDNN cap the head at 256; the cutlass
    fallback reaches ~120 TFLOP/s on an H100), while plain GEMMs run near peak and the softmax is a
    bandwidth-bound pass over the scores.
    """
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        with torch.autocast(dev, enabled=False):
            return chunked_attention(q.to(dt), k.to(dt), v.to(dt), scale, chunk)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected (B, H, N, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, h, n, d = q.shape
    nk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    chunk = default_chunk(b * h, nk) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    q3, k3, v3 = q.reshape(b * h, n, d), k.reshape(b * h, nk, d), v.reshape(b * h, nk, v.shape[-1])
    outs = []
    for i in range(0, n, chunk):
        s = _scores(q3[:, i:i + chunk], k3)
        p = torch.softmax(s.mul_(scale), dim=-1).to(v.dtype)
        outs.append(torch.bmm(p, v3))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return out.view(b, h, n, v.shape[-1]).to(q.dtype)


class ChunkedAttnProcessor(AttnProcessor2_0):
    """diffusers' ``AttnProcessor2_0`` with :func:`chunked_attention` in place of SDPA (no attention mask; the
    VAE passes none). The steps around it are the attention module's own: spatial or group norm, ``to_q/k/v``,
    ``to_out``, the residual connection and ``rescale_output_factor``; 4-D ``(B, C, H, W)`` inputs attend over
    their pixels, as the VAE's. The scale is the module's (``dim_head ** -0.5``, SDPA's default)."""

    def __init__(self, chunk: int | None = None):
        super().__init__()
        self.chunk = chunk

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args,
                 **kwargs) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("ChunkedAttnProcessor takes no attention mask (use the default processor)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            bsz, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(bsz, channels, height * width).transpose(1, 2)
        bsz = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(bsz, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = chunked_attention(query, key, value, scale=attn.scale, chunk=self.chunk)
        hidden_states = hidden_states.transpose(1, 2).reshape(bsz, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))     # linear projection, dropout
        if spatial:
            hidden_states = hidden_states.transpose(-1, -2).reshape(bsz, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@functools.lru_cache(maxsize=None)
def _processor(kind: str, chunk: int | None) -> AttnProcessor2_0:
    """One stateless processor per (kind, chunk), shared by the modules (as diffusers' ``set_attn_processor``):
    switching back to a kind gives the same object, so a compiled VAE's earlier graphs still apply."""
    return AttnProcessor2_0() if kind == "sdpa" else ChunkedAttnProcessor(chunk)


def set_vae_attention(vae: torch.nn.Module, kind: str, chunk: int | None = None) -> int:
    """Give every diffusers ``Attention`` of ``vae`` the processor of ``kind``: ``"sdpa"`` (diffusers' default,
    ``AttnProcessor2_0``) or ``"chunked"`` (:class:`ChunkedAttnProcessor`, with ``chunk`` queries per chunk).
    Returns how many modules were switched; another kind raises ``ValueError`` naming the accepted ones."""
    if kind not in VAE_ATTENTION_KINDS:
        raise ValueError(f"unknown VAE attention kind {kind!r}; expected one of {', '.join(VAE_ATTENTION_KINDS)}")
    count = 0
    for m in vae.modules():
        if isinstance(m, Attention):
            m.set_processor(_processor(kind, chunk))
            count += 1
    return count


def vae_attention_kind(vae: torch.nn.Module) -> str | None:
    """The kind of :func:`set_vae_attention` the VAE's attention modules run (None: none, or mixed/other)."""
    kinds = {"chunked" if isinstance(m.processor, ChunkedAttnProcessor) else
             "sdpa" if type(m.processor) is AttnProcessor2_0 else "other"
             for m in vae.modules() if isinstance(m, Attention)}
    return kinds.pop() if len(kinds) == 1 and "other" not in kinds else None


__all__ = ["CHUNK_BYTES", "ChunkedAttnProcessor", "VAE_ATTENTION_KINDS", "chunked_attention", "default_chunk",
           "set_vae_attention", "vae_attention_kind"]

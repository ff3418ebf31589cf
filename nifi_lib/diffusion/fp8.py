"""FP8 matmuls for the frozen base (issue 18's lever; docs/performance.md).

The transformer's linear layers as float8 (e4m3) GEMMs with rowwise scaling: each weight row (an output feature)
and each activation row (a token) is scaled by its own absolute maximum / 448 before the cast, and
``torch._scaled_mm`` multiplies the float8 operands and applies both scales in its epilogue (Hopper's FP8 tensor
cores: twice bf16's throughput). An approximation of the bf16 layer (e4m3 keeps 3 mantissa bits: ~2^-4 relative
error per element), for inference of a frozen base only: the weights are quantised once, so phi- must be fused
into them first (``Restorer(fuse_lora=True)``); gradients do not flow through the float8 weights.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import NifiError

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)    # 448


class Fp8Unsupported(NifiError, ValueError):
    """FP8 asked for where ``torch._scaled_mm`` cannot run it (a GPU older than sm89, or not a bf16 model)."""


def check_fp8_device(device: torch.device, dtype: torch.dtype) -> None:
    """:class:`Fp8Unsupported` unless ``device`` can run rowwise float8 GEMMs for a ``dtype`` model: on CUDA a bf16
    model on compute capability 8.9 or later (Ada, Hopper); the CPU runs them in any dtype (slowly: tests)."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 9) or dtype != torch.bfloat16:
            raise Fp8Unsupported(f"fp8 needs a bf16 backbone on a GPU of compute capability 8.9 or later (Ada, "
                                 f"Hopper); this is {str(dtype).replace('torch.', '')} on sm{cap[0]}{cap[1]}")


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (..., K) -> ``(q, scale)``: ``q`` float8 e4m3 and ``scale`` (..., 1) float32 with
    ``x ~= q.float() * scale``, one scale per row (its absolute maximum / 448; an all-zero row gets scale 1)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def fp8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               out_dtype: torch.dtype) -> torch.Tensor:
    """``x @ W^T + b`` with ``W ~= weight_q * weight_scale`` (rowwise, :func:`quantize_rowwise` of the (N, K)
    weight; ``weight_scale`` stored as (1, N)) and ``x`` quantised per row here: one ``torch._scaled_mm``."""
    shape = x.shape
    xq, xs = quantize_rowwise(x.reshape(-1, shape[-1]))
    out = torch._scaled_mm(xq, weight_q.t(), scale_a=xs, scale_b=weight_scale, out_dtype=out_dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*shape[:-1], weight_q.shape[0])


class Fp8Linear(nn.Module):
    """An ``nn.Linear`` of a frozen model with its weight stored in float8 (e4m3, one scale per output row) and
    its forward as :func:`fp8_linear`; outputs in the original layer's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = linear.weight.dtype
        q, s = quantize_rowwise(linear.weight.detach())
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", s.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight_q, self.weight_scale, self.bias, self.out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 rowwise"


def fp8_eligible(name: str, layer: nn.Module) -> bool:
    """Which linear layers of a transformer block run in FP8: every token-wise projection (attention q/k/v/out,
    the context projections, the feed-forward) whose sizes ``torch._scaled_mm`` accepts (multiples of 16), not the
    AdaLN modulation (``norm*.linear``: one row per frame, a GEMV with nothing to gain and the scale and shift of
    every normalisation to lose), nor a LoRA layer's own A/B."""
    if not isinstance(layer, nn.Linear) or "lora_" in name or ".norm" in f".{name}":
        return False
    return layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def convert_to_fp8(transformer: nn.Module) -> int:
    """Replace the :func:`fp8_eligible` linear layers of each of ``transformer.transformer_blocks`` by
    :class:`Fp8Linear` (in place; inside peft's LoRA wrappers, the base layer); returns how many. Irreversible:
    for a frozen, inference-only backbone (phi- fused into the base weights first)."""
    n = 0
    for block in transformer.transformer_blocks:
        for name, layer in list(block.named_modules()):
            if fp8_eligible(name, layer):
                parent_name, _, child = name.rpartition(".")
                setattr(block.get_submodule(parent_name) if parent_name else block, child, Fp8Linear(layer))
                n += 1
    return n


def count_fp8(module: nn.Module) -> int:
    """The number of :class:`Fp8Linear` layers in ``module``."""
    return sum(isinstance(m, Fp8Linear) for m in module.modules())

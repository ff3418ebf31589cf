"""8-bit quantization of Gaussian attributes (Sec. 3: "store attributes with 8-bit quantization").

Every attribute is split into scalar channels in a fixed order (``CHANNEL_ORDER``):
``means`` (3), ``log_scales`` (3), ``quats`` (4, wxyz), ``opacity_logits`` (1), ``sh_dc`` (3) and
``sh_rest`` (K * 3, K = (d + 1)^2 - 1, flattened coefficient-major: channel ``k * 3 + c``).
Before quantization each quaternion is normalised to unit length and its sign is chosen so that
w >= 0 (q and -q are the same rotation; this halves the range of w).

For a channel with float32 values x, the side information is ``lo = min(x)`` and ``hi = max(x)`` as
float32, and

    q = clip(round((x - lo) / (hi - lo) * 255), 0, 255)            (uint8; q = 0 if hi == lo)

Dequantization is exactly (all in float32, numpy semantics):

    step = float32((hi - lo) / 255)       # computed in float32
    x'   = lo + float32(q) * step         # float32 multiply, then float32 add

so ``dequantize(quantize(m))`` is a deterministic function of the stored bytes and side info; the
entropy decoder reproduces it bit-exactly. Dequantized quaternions are not exactly unit length; the
renderer normalises them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NifiError

CHANNEL_ORDER = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
LEVELS = 256  # 8 bits


class QuantizationError(NifiError, ValueError):
    """Attributes cannot be quantized (non-finite values, wrong shapes)."""


def sh_rest_coeffs(sh_degree: int) -> int:
    """K = (d + 1)^2 - 1 higher-order SH coefficients per colour channel."""
    return (int(sh_degree) + 1) ** 2 - 1


def channel_names(sh_degree: int) -> list[str]:
    """One name per scalar channel, in the order used by quantization and the bitstream."""
    names = [f"means.{a}" for a in "xyz"] + [f"log_scales.{a}" for a in "xyz"]
    names += [f"quats.{a}" for a in "wxyz"] + ["opacity_logits"] + [f"sh_dc.{c}" for c in "rgb"]
    names += [f"sh_rest.{k}.{c}" for k in range(sh_rest_coeffs(sh_degree)) for c in "rgb"]
    return names


def canonical_quats(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions (wxyz) with w >= 0; zero-length quaternions become the identity."""
    q = np.asarray(quats, dtype=np.float32)
    norm = np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    ident = np.zeros_like(q)
    ident[:, 0] = 1.0
    q = np.where(norm > 1e-12, (q / np.maximum(norm, 1e-12)).astype(np.float32), ident)
    sign = np.where(q[:, :1] < 0, -1.0, 1.0).astype(np.float32)
    return (q * sign).astype(np.float32)


def attributes_to_channels(tensors: dict[str, torch.Tensor | np.ndarray], sh_degree: int) -> np.ndarray:
    """Stack the attributes into one float32 ``(N, C)`` array in ``channel_names`` order (quats canonical)."""
    arrays = {k: np.asarray(v.detach().cpu().numpy() if torch.is_tensor(v) else v, dtype=np.float32)
              for k, v in tensors.items()}
    n = arrays["means"].shape[0]
    k = sh_rest_coeffs(sh_degree)
    expected = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,),
                "sh_dc": (n, 3), "sh_rest": (n, k, 3)}
    for name, shape in expected.items():
        if name not in arrays:
            raise QuantizationError(f"attribute '{name}' is missing")
        if name == "sh_rest" and k == 0 and arrays[name].size == 0:
            arrays[name] = np.zeros((n, 0, 3), np.float32)
        if arrays[name].shape != shape:
            raise QuantizationError(f"attribute '{name}' has shape {arrays[name].shape}, expected {shape}")
        if not np.isfinite(arrays[name]).all():
            bad = int((~np.isfinite(arrays[name])).reshape(n, -1).any(axis=1).sum())
            raise QuantizationError(f"attribute '{name}' has non-finite values in {bad} Gaussians")
    cols = [arrays["means"], arrays["log_scales"], canonical_quats(arrays["quats"]),
            arrays["opacity_logits"][:, None], arrays["sh_dc"], arrays["sh_rest"].reshape(n, k * 3)]
    return np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float32)


def channels_to_attributes(x: np.ndarray, sh_degree: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`attributes_to_channels` (without undoing the quaternion canonicalisation)."""
    n = x.shape[0]
    k = sh_rest_coeffs(sh_degree)
    if x.shape[1] != 14 + 3 * k:
        raise QuantizationError(f"{x.shape[1]} channels do not match SH degree {sh_degree} ({14 + 3 * k} expected)")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return {"means": t(x[:, 0:3]), "log_scales": t(x[:, 3:6]), "quats": t(x[:, 6:10]),
            "opacity_logits": t(x[:, 10]), "sh_dc": t(x[:, 11:14]), "sh_rest": t(x[:, 14:].reshape(n, k, 3))}


@dataclass
class QuantizedScene:
    """8-bit codes ``(N, C)`` (channel order of :func:`channel_names`) plus float32 ``lo``/``hi`` per channel."""

    codes: np.ndarray       # uint8 (N, C)
    lo: np.ndarray          # float32 (C,)
    hi: np.ndarray          # float32 (C,)
    sh_degree: int

    @property
    def num_gaussians(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.codes.shape[1])

    def raw_bytes(self) -> bytes:
        """The raw 8-bit payload, channel-major (all of channel 0, then channel 1, ...)."""
        return np.ascontiguousarray(self.codes.T).tobytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantizedScene):
            return NotImplemented
        return (self.sh_degree == other.sh_degree and np.array_equal(self.codes, other.codes)
                and np.array_equal(self.lo.view(np.uint32), other.lo.view(np.uint32))
                and np.array_equal(self.hi.view(np.uint32), other.hi.view(np.uint32)))


def quantize_channels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel min/max 8-bit quantization of a float32 ``(N, C)`` array -> (codes, lo, hi)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise QuantizationError(f"expected an (N, C) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise QuantizationError("cannot quantize non-finite values")
    if x.shape[0] == 0:
        c = x.shape[1]
        return np.zeros((0, c), np.uint8), np.zeros(c, np.float32), np.zeros(c, np.float32)
    lo = x.min(axis=0).astype(np.float32)
    hi = x.max(axis=0).astype(np.float32)
    span = (hi.astype(np.float64) - lo.astype(np.float64))
    safe = np.where(span > 0, span, 1.0)
    q = np.rint((x.astype(np.float64) - lo.astype(np.float64)) / safe * (LEVELS - 1))
    q = np.where(span > 0, q, 0.0)
    return np.clip(q, 0, LEVELS - 1).astype(np.uint8), lo, hi


def dequantize_channels(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``x' = lo + float32(q) * float32((hi - lo) / 255)``, all in float32 (see module docstring)."""
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    step = ((hi - lo) / np.float32(LEVELS - 1)).astype(np.float32)
    return (lo[None, :] + codes.astype(np.float32) * step[None, :]).astype(np.float32)


def quantize_tensors(tensors: dict, sh_degree: int) -> QuantizedScene:
    codes, lo, hi = quantize_channels(attributes_to_channels(tensors, sh_degree))
    return QuantizedScene(codes=codes, lo=lo, hi=hi, sh_degree=int(sh_degree))


def dequantize_tensors(q: QuantizedScene) -> dict[str, torch.Tensor]:
    return channels_to_attributes(dequantize_channels(q.codes, q.lo, q.hi), q.sh_degree)


def quantize(model) -> QuantizedScene:
    """8-bit quantization of a ``GaussianModel`` (see the module docstring for the exact rule)."""
    return quantize_tensors(model.tensors(), model.sh_degree)


def dequantize(q: QuantizedScene):
    """The ``GaussianModel`` that the 8-bit codes stand for (float32, exact rule in the module docstring)."""
    from ..gs.model import GaussianModel

    return GaussianModel.from_tensors(dequantize_tensors(q))


def morton_order(model) -> torch.Tensor:
    """Permutation sorting primitives by the Morton (Z-order) code of their 8-bit quantized means.

    Interleaves the bits of the three 8-bit coordinates (x in bit 0, y in bit 1, z in bit 2 of each
    triple), ties broken by index. Spatial neighbours become sequence neighbours, so the entropy coder's
    difference predictor sees small residuals. The rendered image does not depend on the order.
    """
    means = model.means.detach().cpu().numpy().astype(np.float32)
    codes, _, _ = quantize_channels(means)
    x = codes.astype(np.uint32)
    key = np.zeros(len(x), dtype=np.uint32)
    for b in range(8):
        for d in range(3):
            key |= ((x[:, d] >> b) & 1) << (3 * b + d)
    return torch.from_numpy(np.argsort(key, kind="stable").astype(np.int64))

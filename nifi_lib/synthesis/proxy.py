"""Proxy degradations: fast image-space imitations of low-rate 3DGS artifacts. NOT a real codec.

For quick experiments only (``--compression_method proxy``); manifests written in this mode say
``"mode": "proxy"`` and ``"proxy": true``. The degradation of strength ``s`` (the rate label as a number,
lambda in {0.1, 0.5, 1.0}: larger lambda = lower rate = stronger artifacts) combines, in order:

1. loss of detail: bilinear down/up-sampling by ``1 + 3 s`` and a Gaussian blur of
   ``sigma = (0.5 + 1.5 s) * min(H, W) / 256`` pixels (too few primitives, over-large splats);
2. blotches: ``round(40 s * H W / 256^2)`` anisotropic Gaussian splats of random orientation whose
   colour is the local image colour plus a small offset (the smeared, blob-like 3DGS artifacts);
3. colour shift: a smooth per-channel gain/offset field of amplitude ``0.06 s`` (quantized SH colours).

Everything is deterministic given ``seed`` (derived from scene, view and label by the caller).
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F


def proxy_seed(*parts: str) -> int:
    """A stable 31-bit seed from strings (scene, view, label)."""
    return zlib.crc32("/".join(parts).encode("utf-8")) & 0x7FFFFFFF


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(3, H, W)`` image (reflect padding)."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c, h, w = img.shape
    t = img[None]
    pad_w, pad_h = min(r, w - 1), min(r, h - 1)
    kw = k[r - pad_w: r + pad_w + 1] / k[r - pad_w: r + pad_w + 1].sum()
    kh = k[r - pad_h: r + pad_h + 1] / k[r - pad_h: r + pad_h + 1].sum()
    if pad_w > 0:
        t = F.conv2d(F.pad(t, (pad_w, pad_w, 0, 0), mode="reflect"), kw.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    if pad_h > 0:
        t = F.conv2d(F.pad(t, (0, 0, pad_h, pad_h), mode="reflect"), kh.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return t[0]


def proxy_degrade(img: torch.Tensor, strength: float, seed: int = 0) -> torch.Tensor:
    """Degrade a ``(3, H, W)`` image in [0, 1] with the proxy artifacts of strength ``strength`` (docstring)."""
    s = float(min(max(strength, 0.0), 1.0))
    img = img.float().clamp(0, 1)
    if s == 0.0:
        return img.clone()
    c, h, w = img.shape
    g = torch.Generator().manual_seed(int(seed))
    # 1. loss of detail
    factor = 1.0 + 3.0 * s
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    out = F.interpolate(F.interpolate(img[None], size=small, mode="bilinear", align_corners=False, antialias=True),
                        size=(h, w), mode="bilinear", align_corners=False)[0]
    out = gaussian_blur(out, (0.5 + 1.5 * s) * min(h, w) / 256.0)
    # 2. blotches: anisotropic splats with the local colour
    n_blobs = int(round(40 * s * h * w / 256.0 ** 2))
    if n_blobs:
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                                indexing="ij")
        cx = torch.rand(n_blobs, generator=g) * w
        cy = torch.rand(n_blobs, generator=g) * h
        size = min(h, w) * (0.01 + 0.04 * s) * (0.5 + torch.rand(n_blobs, 2, generator=g))
        theta = torch.rand(n_blobs, generator=g) * math.pi
        ix = cx.long().clamp(0, w - 1)
        iy = cy.long().clamp(0, h - 1)
        colour = (out[:, iy, ix].T + 0.08 * s * torch.randn(n_blobs, 3, generator=g)).clamp(0, 1)
        opacity = 0.4 + 0.5 * torch.rand(n_blobs, generator=g)
        for i in range(n_blobs):
            dx, dy = xx - cx[i], yy - cy[i]
            ct, st = math.cos(theta[i]), math.sin(theta[i])
            u, v = (ct * dx + st * dy) / size[i, 0], (-st * dx + ct * dy) / size[i, 1]
            a = opacity[i] * torch.exp(-0.5 * (u * u + v * v))
            out = out * (1 - a) + colour[i].view(3, 1, 1) * a
    # 3. smooth colour shift
    grid = 0.06 * s * torch.randn(1, 6, 3, 3, generator=g)
    field = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0]
    out = out * (1.0 + field[:3]) + field[3:]
    return out.clamp(0, 1)

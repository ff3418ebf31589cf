"""Full-reference image quality shared by every stage: PSNR, SSIM and the 3DGS photometric loss.

Pure torch, no weights, no input checks (the checked, calibrated metrics of the evaluation are
:mod:`nifi_lib.metrics.metrics`, built on these). It sits in the bottom layer so that the 3DGS fit
(:mod:`nifi_lib.gs`), the artifact synthesis (:mod:`nifi_lib.synthesis`) and the evaluation use one
definition each.

PSNR: ``10 log10(data_range^2 / (max(mse, min_mse) + eps))``, the mse taken over the last three dimensions
(one value per image). The callers differ only in the guards against identical images, so those are
parameters: the evaluation adds ``eps = 1e-8`` (IQA-PyTorch, caps at 80 dB), the 3DGS fit floors the mse
at 1e-12, the 8-bit pair PSNR (data range 255) keeps ``inf``. :func:`psnr_from_mse` takes a float (Python
arithmetic, for the per-view numbers of the fit and of the pairs) or a tensor (the batched metric).

SSIM (Wang et al. 2004, 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03) exists in two
variants, selected by ``padding``:

- ``"valid"``: no padding, the map is smaller than the images. The official definition (MATLAB
  ``ssim_index``, IQA-PyTorch, scikit-image), used by the evaluation metric, whose calibration test
  matches the official numbers only this way.
- ``"same"``: zero padding, the map has the images' size. The 3DGS code's training loss (3DGS Eq. 7),
  used by the 3DGS fit and the fine-tuning of pruned levels: every pixel, borders included, gets a
  gradient. It differs from ``"valid"`` (the zero border lowers the SSIM near the edges), so it is not
  a metric to report.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PSNR_EPS = 1e-8
SSIM_PADDINGS = ("valid", "same")
SSIM_ROUNDINGS = ("3dgs", "finetune")
WINDOW_FORMS = ("fspecial", "standardized")


def mse(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Mean squared error over the last three dimensions (one value per image), computed in ``dtype``
    (``None``: the inputs' dtype)."""
    if dtype is not None:
        pred, target = pred.to(dtype), target.to(dtype)
    return ((pred - target) ** 2).mean(dim=(-3, -2, -1))


def psnr_from_mse(mse: torch.Tensor | float, data_range: float = 1.0, eps: float = 0.0,
                  min_mse: float = 0.0) -> torch.Tensor | float:
    """``10 log10(data_range^2 / (max(mse, min_mse) + eps))``: a float for a float (``inf`` for 0 when both
    guards are 0), a float64 tensor for a tensor."""
    if not torch.is_tensor(mse):
        den = max(float(mse), min_mse) + eps
        return float("inf") if den == 0 else 10.0 * math.log10(data_range ** 2 / den)
    mse = mse.double()
    if min_mse:
        mse = mse.clamp_min(min_mse)
    return 10.0 * torch.log10(data_range ** 2 / (mse + eps))


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, eps: float = PSNR_EPS,
         min_mse: float = 0.0, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """PSNR in dB per image as a float64 tensor: ``(N, C, H, W)`` -> ``(N,)``, ``(C, H, W)`` -> 0-d.

    The squared error is averaged in ``dtype`` (:func:`mse`); ``eps`` and ``min_mse`` as in
    :func:`psnr_from_mse`.
    """
    return psnr_from_mse(mse(pred, target, dtype), data_range, eps, min_mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None,
                    form: str = "fspecial") -> torch.Tensor:
    """Normalised ``size x size`` Gaussian (MATLAB ``fspecial('gaussian', 11, 1.5)``), computed in ``dtype``.

    ``form`` only changes the rounding of the same Gaussian: ``"fspecial"`` evaluates ``exp(-x^2 / (2 sigma^2))``
    (MATLAB, the 3DGS code), ``"standardized"`` ``exp(-0.5 (x / sigma)^2)`` (the fine-tuning's own; in float32
    a few taps differ in the last bit).
    """
    if form not in WINDOW_FORMS:
        raise ValueError(f"gaussian_window: form must be one of {WINDOW_FORMS}, got '{form}'")
    c = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(c ** 2) / (2 * sigma ** 2)) if form == "fspecial" else torch.exp(-0.5 * (c / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
             sigma: float = 1.5, padding: str = "valid", rounding: str = "3dgs") -> torch.Tensor:
    """SSIM map per channel of ``(N, C, H, W)`` (or ``(C, H, W)``) images; differentiable.

    ``padding="valid"``: the official metric (separable filtering, window in the inputs' dtype, map
    ``win_size - 1`` pixels smaller). ``padding="same"``: the 3DGS loss (zero padding, map of the images'
    size). See the module docstring.

    ``rounding`` (``"same"`` only) picks between two float evaluations of the same formula, so that each
    training loop keeps its exact numbers: ``"3dgs"`` (the 3DGS fit, as the 3DGS code: window built in
    float32, each mean product computed once and shared by the variance and luminance terms) or
    ``"finetune"`` (the pruned-level fine-tuning: ``"standardized"`` window in the inputs' dtype, products
    recomputed per term). Same values to float rounding (SSIM within 2e-7, gradients within 1e-10); not
    bit-identical, and a 300-step fine-tuning drifts by a few 1e-6 in its parameters when one is swapped for
    the other, which would move the synthesised levels (and the numbers embedded from them) in the last digits.
    """
    if padding not in SSIM_PADDINGS:
        raise ValueError(f"ssim: padding must be one of {SSIM_PADDINGS}, got '{padding}'")
    if rounding not in SSIM_ROUNDINGS:
        raise ValueError(f"ssim: rounding must be one of {SSIM_ROUNDINGS}, got '{rounding}'")
    if x.ndim == 3:
        return ssim_map(x[None], y[None], data_range, win_size, sigma, padding, rounding)[0]
    c = x.shape[1]
    shared = padding == "same" and rounding == "3dgs"
    if padding == "valid":
        # the 2-D Gaussian is the outer product of a 1-D one: filter rows then columns (no padding)
        g = gaussian_window(win_size, sigma, x.dtype, x.device).sum(0)
        gh = g.view(1, 1, 1, win_size).expand(c, 1, 1, win_size)
        gv = g.view(1, 1, win_size, 1).expand(c, 1, win_size, 1)

        def filt(z):
            return F.conv2d(F.conv2d(z, gh, groups=c), gv, groups=c)
    else:
        w = (gaussian_window(win_size, sigma, torch.float32, x.device) if shared
             else gaussian_window(win_size, sigma, x.dtype, x.device, form="standardized"))
        w = w.expand(c, 1, win_size, win_size).contiguous().to(x.dtype)
        pad = win_size // 2

        def filt(z):
            return F.conv2d(z, w, padding=pad, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    if shared:
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        sxx, syy, sxy = filt(x * x) - mu_xx, filt(y * y) - mu_yy, filt(x * y) - mu_xy
        return ((2 * mu_xy + c1) * (2 * sxy + c2)) / ((mu_xx + mu_yy + c1) * (sxx + syy + c2))
    # recomputed per term; squares as ``** 2`` in the metric, ``z * z`` in the fine-tuning (same values, the
    # gradients' accumulation order differs)
    sq = (lambda z: z ** 2) if padding == "valid" else (lambda z: z * z)  # noqa: E731
    sxx, syy, sxy = filt(x * x) - sq(mu_x), filt(y * y) - sq(mu_y), filt(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((sq(mu_x) + sq(mu_y) + c1) * (sxx + syy + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, padding: str = "valid") -> torch.Tensor:
    """Mean SSIM per image: ``(N, C, H, W)`` -> ``(N,)``, ``(C, H, W)`` -> 0-d (see :func:`ssim_map`)."""
    return ssim_map(x, y, data_range, padding=padding).mean(dim=(-3, -2, -1))


def gs_photometric_loss(render: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2,
                        rounding: str = "3dgs") -> torch.Tensor:
    """3DGS Eq. 7: ``(1 - lambda) L1 + lambda (1 - SSIM)``, ``lambda = 0.2``; SSIM with zero padding
    ("same", as the 3DGS code), both terms averaged over every pixel and channel (and image).
    ``rounding``: see :func:`ssim_map` (the fine-tuning of pruned levels passes ``"finetune"``)."""
    l1 = (render - target).abs().mean()
    dssim = 1.0 - ssim_map(render, target, padding="same", rounding=rounding).mean()
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * dssim


__all__ = ["PSNR_EPS", "SSIM_PADDINGS", "SSIM_ROUNDINGS", "WINDOW_FORMS", "mse", "psnr_from_mse", "psnr",
           "gaussian_window", "ssim_map", "ssim", "gs_photometric_loss"]

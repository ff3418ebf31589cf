"""Image-quality metrics of the evaluation (paper Sec. 4.2: LPIPS and DISTS, lower is better; PSNR/SSIM beside).

Every metric takes ``pred`` and ``target`` as NCHW float tensors in [0, 1] (3 channels, same shape) and returns
one value per image, a tensor of shape ``(N,)`` on the inputs' device.

Conventions (checked against IQA-PyTorch's ``results_official.csv`` on its calibration pairs, see
``tests/test_eval_metrics.py``):

- ``lpips``: the ``lpips`` package (v0.1, ``alex`` trunk as the headline, ``vgg`` beside it), inputs mapped
  to [-1, 1], spatially averaged; trunk = torchvision ImageNet weights via :mod:`.weights`, linear heads from
  the ``lpips`` wheel. No resizing.
- ``dists``: the reference implementation ``DISTS_pytorch.DISTS`` (VGG16 trunk via :mod:`.weights`, alpha/beta
  from its wheel), no resizing.
- ``psnr``: default ``mode="rgb"``: mean squared error over all three channels and pixels of each image,
  data range 1, ``10 log10(1 / (mse + 1e-8))`` (the epsilon caps identical images at 80 dB, as
  IQA-PyTorch does, so that JSON never holds infinity). This is IQA-PyTorch's ``psnr`` and matches the
  official numbers. ``mode="y"`` is its ``psnry`` (luma 0.299 R + 0.587 G + 0.114 B in [0, 1]).
- ``ssim``: Wang et al. SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid'
  filtering (no padding), no downsampling, mean of the SSIM map. Default ``mode="rgb"``: per RGB channel
  on [0, 1] (data range 1), averaged over channels -- the convention for restoration results, used in
  ``nifi eval``/``nifi benchmark``. ``mode="y"`` reproduces IQA-PyTorch's ``ssim`` (and the original MATLAB
  ``ssim_index`` on ``rgb2gray`` without its 256-pixel downsampling): channels rounded to 8-bit levels, the
  luma 0.299 R + 0.587 G + 0.114 B rounded to 8-bit levels, compared with data range 255. Only ``mode="y"`` matches the official
  calibration numbers, so the calibration test uses it; the RGB default differs from them by design.
- ``ms_ssim``: ``piq.multi_scale_ssim`` on RGB, data range 1 (differentiable; the weight-free perceptual
  fallback for training). Not a calibrated metric: IQA-PyTorch's MS-SSIM is computed on the luma (on the
  calibration pairs piq on RGB gives e.g. 0.954 where the official value is 0.9996; piq on the rounded luma
  comes within 0.005 of the official values, not to 3 decimals).

Models are built once per process and device, frozen, in eval mode.
"""
from __future__ import annotations

import threading
import types

import torch
import torch.nn as nn

from .. import image_quality
from ..errors import NifiError
from ..image_quality import PSNR_EPS, gaussian_window
from .weights import dists_alpha_beta, load_trunk_features, lpips_linear_heads

LPIPS_NETS = ("alex", "vgg")
LUMA = (0.299, 0.587, 0.114)


class MetricInputError(NifiError, ValueError):
    """Metric inputs of the wrong shape, type or range."""


def check_pair(pred: torch.Tensor, target: torch.Tensor, name: str = "metric") -> None:
    """NCHW float tensors, 3 channels, same shape, finite, values in [0, 1] (1e-4 tolerance)."""
    for what, t in (("pred", pred), ("target", target)):
        if not torch.is_tensor(t):
            raise MetricInputError(f"{name}: {what} must be a torch tensor, got {type(t).__name__}")
        if t.ndim != 4 or t.shape[1] != 3:
            raise MetricInputError(f"{name}: {what} must have shape (N, 3, H, W), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise MetricInputError(f"{name}: {what} must be a float tensor in [0, 1], got {t.dtype}")
        if t.numel() == 0:
            raise MetricInputError(f"{name}: {what} is empty")
        if not torch.isfinite(t).all():
            raise MetricInputError(f"{name}: {what} holds NaN or infinite values")
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise MetricInputError(f"{name}: {what} values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] "
                                   f"(images in [-1, 1]? map them with (x + 1) / 2)")
    if pred.shape != target.shape:
        raise MetricInputError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")


def _device_of(pred: torch.Tensor, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else pred.device


# --------------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------------
def luma(x: torch.Tensor) -> torch.Tensor:
    """``0.299 R + 0.587 G + 0.114 B`` as ``(N, 1, H, W)`` (YIQ/BT.601 luma, MATLAB ``rgb2gray``)."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def luma8(x: torch.Tensor) -> torch.Tensor:
    """8-bit luma as MATLAB ``rgb2gray`` on a uint8 image: channels rounded to 0..255, then
    ``round(0.299 R + 0.587 G + 0.114 B)`` (float64 arithmetic, so ties do not depend on the input dtype)."""
    x8 = torch.round(x.double().clamp(0, 1) * 255.0)
    return torch.round(luma(x8))


def psnr(pred: torch.Tensor, target: torch.Tensor, mode: str = "rgb") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (data range 1); ``mode`` ``"rgb"`` (default) or ``"y"``."""
    check_pair(pred, target, "psnr")
    x, y = pred.double(), target.double()
    if mode == "y":
        x, y = luma(x), luma(y)
    elif mode != "rgb":
        raise MetricInputError(f"psnr: mode must be 'rgb' or 'y', got '{mode}'")
    return image_quality.psnr(x, y, eps=PSNR_EPS).to(pred.dtype)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float, win_size: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """SSIM map with 'valid' Gaussian filtering, per channel (Wang et al. 2004). Differentiable."""
    if min(x.shape[-2:]) < win_size:
        raise MetricInputError(f"ssim: images must be at least {win_size}x{win_size} pixels, got "
                               f"{tuple(x.shape[-2:])}")
    return image_quality.ssim_map(x, y, data_range, win_size, sigma, padding="valid")


def ssim(pred: torch.Tensor, target: torch.Tensor, mode: str = "rgb") -> torch.Tensor:
    """SSIM per image (see the module docstring).

    ``mode="rgb"`` (default, restoration metric): each RGB channel on [0, 1], data range 1, channel mean.
    ``mode="y"``: IQA-PyTorch / MATLAB convention: 8-bit-rounded luma, data range 255 (matches the official
    calibration numbers).
    """
    check_pair(pred, target, "ssim")
    x, y = pred.double(), target.double()
    if mode == "y":
        x, y = luma8(x), luma8(y)
        rng = 255.0
    elif mode == "rgb":
        rng = 1.0
    else:
        raise MetricInputError(f"ssim: mode must be 'rgb' or 'y', got '{mode}'")
    return ssim_map(x, y, rng).mean(dim=(1, 2, 3)).to(pred.dtype)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM per image (``piq.multi_scale_ssim``, RGB, data range 1; differentiable).

    The weight-free perceptual fallback for training (``loss_weights.perceptual_fallback: ms_ssim``); images
    must be larger than 160 px on the short side (piq's five scales with an 11-px window).
    """
    import piq

    check_pair(pred, target, "ms_ssim")
    if min(pred.shape[-2:]) <= 160:
        raise MetricInputError(f"ms_ssim: images must be larger than 160 px on each side, got {tuple(pred.shape[-2:])}")
    return piq.multi_scale_ssim(pred.clamp(0, 1), target.clamp(0, 1), data_range=1.0, reduction="none")


# --------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------
def trunk_features_module(name: str, features: dict[str, torch.Tensor]) -> nn.Sequential:
    """torchvision's ``alexnet().features`` / ``vgg16().features`` layout with the given weights (strict load),
    built without the classifier (no 100M-parameter random initialisation)."""
    from torchvision.models.vgg import cfgs, make_layers

    if name == "vgg16":
        feats = make_layers(cfgs["D"], batch_norm=False)
    elif name == "alexnet":  # torchvision.models.alexnet.AlexNet.features (checked by a test)
        feats = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2))
    else:
        raise MetricInputError(f"unknown trunk '{name}'")
    feats.load_state_dict({k[len("features."):]: v for k, v in features.items()}, strict=True)
    return feats


def _fake_torchvision(features_by_name: dict[str, dict[str, torch.Tensor]]) -> types.SimpleNamespace:
    """Stand-in for ``torchvision.models`` inside lpips/DISTS_pytorch: ``alexnet(...)``/``vgg16(...)`` return an
    object whose ``.features`` hold the real (resolved) weights, whatever ``pretrained`` says."""
    def make(name):
        def factory(*args, **kwargs):
            if name not in features_by_name:
                raise NifiError(f"internal: no {name} weights prepared")
            return types.SimpleNamespace(features=trunk_features_module(name, features_by_name[name]))
        return factory
    return types.SimpleNamespace(alexnet=make("alexnet"), vgg16=make("vgg16"))


_PATCH_LOCK = threading.Lock()


def build_lpips(net: str = "alex") -> nn.Module:
    """A frozen ``lpips.LPIPS`` (v0.1) with the real trunk and heads, on CPU, in eval mode.

    lpips builds its trunk with ``torchvision.models.{alexnet,vgg16}(pretrained=...)`` (a strict download);
    we hand it the resolved ``features`` weights instead and load the linear heads with ``weights_only=True``.
    """
    import lpips as lpips_pkg
    from lpips import pretrained_networks as pn

    if net not in LPIPS_NETS:
        raise MetricInputError(f"lpips: net must be one of {LPIPS_NETS}, got '{net}'")
    trunk = {"alex": "alexnet", "vgg": "vgg16"}[net]
    features = load_trunk_features(trunk)
    heads = lpips_linear_heads(net)
    with _PATCH_LOCK:
        original = pn.tv
        pn.tv = _fake_torchvision({trunk: features})
        try:
            model = lpips_pkg.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=False, verbose=False)
        finally:
            pn.tv = original
    for i, lin in enumerate(model.lins):
        lin.load_state_dict({"model.1.weight": heads[f"lin{i}.model.1.weight"]}, strict=True)
    first = next(iter(model.net.slice1.children()))
    if not torch.equal(first.weight, features["features.0.weight"]):  # the trunk really holds the weights
        raise NifiError(f"LPIPS-{net}: trunk weights were not loaded")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


_MODELS: dict[tuple, nn.Module] = {}
_LOCK = threading.Lock()


def _cached(key: tuple, builder, device: torch.device) -> nn.Module:
    full = (*key, str(device))
    with _LOCK:
        if full not in _MODELS:
            _MODELS[full] = builder().to(device)
        return _MODELS[full]


def clear_model_cache() -> None:
    """Drop the per-process metric models (e.g. after changing weight files)."""
    with _LOCK:
        _MODELS.clear()


def lpips(pred: torch.Tensor, target: torch.Tensor, net: str = "alex",
          device: str | torch.device | None = None, batch_size: int = 8) -> torch.Tensor:
    """LPIPS v0.1 per image (``alex`` headline, ``vgg`` beside it); inputs in [0, 1], no gradient."""
    check_pair(pred, target, "lpips")
    dev = _device_of(pred, device)
    model = _cached(("lpips", net), lambda: build_lpips(net), dev)
    out = []
    with torch.no_grad():
        for i in range(0, pred.shape[0], batch_size):
            p = pred[i:i + batch_size].to(dev, torch.float32) * 2 - 1
            t = target[i:i + batch_size].to(dev, torch.float32) * 2 - 1
            out.append(model(p, t).reshape(-1))
    return torch.cat(out).to(pred.device)


class LPIPSLoss(nn.Module):
    """Frozen LPIPS for training (Eq. 6): ``forward(x, y)`` with images in [-1, 1] -> ``(N,)``; differentiable
    w.r.t. the inputs, no trainable parameters."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net_name = net
        self.model = build_lpips(net)

    def train(self, mode: bool = True) -> "LPIPSLoss":  # stays in eval mode (dropout off)
        super().train(False)
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise MetricInputError(f"LPIPSLoss: expected two (N, 3, H, W) tensors of one shape, got "
                                   f"{tuple(x.shape)} and {tuple(y.shape)}")
        return self.model(x.float(), y.float()).reshape(-1)


def lpips_loss_module(net: str = "alex", device: str | torch.device | None = None) -> LPIPSLoss:
    """A new frozen :class:`LPIPSLoss` on ``device`` (images in [-1, 1]); raises :class:`WeightsError` without
    real weights (use ``ms_ssim`` as the configured fallback instead)."""
    m = LPIPSLoss(net).eval()
    if device is not None:
        m = m.to(device)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# --------------------------------------------------------------------------------------------------
# DISTS
# --------------------------------------------------------------------------------------------------
def build_dists() -> nn.Module:
    """The reference ``DISTS_pytorch.DISTS`` with the real VGG16 trunk and alpha/beta, frozen, on CPU.

    ``DISTS_pytorch`` fetches its trunk with ``torchvision.models.vgg16(pretrained=True)`` (a strict load from
    the internet) and reads alpha/beta from a wrong path (``sys.prefix``); we hand it a VGG16 whose
    ``features`` hold the resolved weights and set alpha/beta from the wheel's ``weights.pt``.
    """
    from DISTS_pytorch import DISTS_pt

    features = load_trunk_features("vgg16")
    ab = dists_alpha_beta()
    with _PATCH_LOCK:
        original = DISTS_pt.models
        DISTS_pt.models = _fake_torchvision({"vgg16": features})
        try:
            model = DISTS_pt.DISTS(load_weights=False)
        finally:
            DISTS_pt.models = original
    model.alpha.data = ab["alpha"].clone()
    model.beta.data = ab["beta"].clone()
    if not torch.equal(model.stage1[0].weight, features["features.0.weight"]):
        raise NifiError("DISTS: trunk weights were not loaded")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def dists(pred: torch.Tensor, target: torch.Tensor, device: str | torch.device | None = None,
          batch_size: int = 8) -> torch.Tensor:
    """DISTS per image (reference implementation, real weights, no resizing); inputs in [0, 1]."""
    check_pair(pred, target, "dists")
    dev = _device_of(pred, device)
    model = _cached(("dists",), build_dists, dev)
    out = []
    with torch.no_grad():
        for i in range(0, pred.shape[0], batch_size):
            p = pred[i:i + batch_size].to(dev, torch.float32)
            t = target[i:i + batch_size].to(dev, torch.float32)
            out.append(model(t, p).reshape(-1))
    return torch.cat(out).to(pred.device)


METRICS = {"lpips": lpips, "dists": dists, "psnr": psnr, "ssim": ssim}
LOWER_IS_BETTER = {"lpips": True, "lpips_vgg": True, "dists": True, "psnr": False, "ssim": False, "ms_ssim": False}


def compute_metrics(pred: torch.Tensor, target: torch.Tensor, names=("lpips", "dists", "psnr", "ssim"),
                    device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Several metrics at once (``lpips`` = alex, ``lpips_vgg``, ``dists``, ``psnr``, ``ssim``, ``ms_ssim``)."""
    out = {}
    for n in names:
        if n == "lpips":
            out[n] = lpips(pred, target, "alex", device=device)
        elif n == "lpips_vgg":
            out[n] = lpips(pred, target, "vgg", device=device)
        elif n == "dists":
            out[n] = dists(pred, target, device=device)
        elif n == "psnr":
            out[n] = psnr(pred, target)
        elif n == "ssim":
            out[n] = ssim(pred, target)
        elif n == "ms_ssim":
            out[n] = ms_ssim(pred, target)
        else:
            raise MetricInputError(f"unknown metric '{n}' (known: lpips, lpips_vgg, dists, psnr, ssim, ms_ssim)")
    return out


__all__ = ["MetricInputError", "check_pair", "luma", "psnr", "ssim", "ssim_map", "gaussian_window", "ms_ssim",
           "lpips", "dists", "build_lpips", "build_dists", "trunk_features_module", "LPIPSLoss", "lpips_loss_module", "compute_metrics",
           "clear_model_cache", "METRICS", "LOWER_IS_BETTER"]


class MSSSIMLoss(nn.Module):
    """Weight-free perceptual fallback for training (``loss_weights.perceptual_fallback: ms_ssim``):
    ``1 - MS-SSIM`` per image on inputs in [-1, 1]; frames too small for five scales (< 161 px) use
    single-scale SSIM. Differentiable with respect to both inputs."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import piq

        x = ((pred.float() + 1) / 2).clamp(0, 1)
        y = ((target.float() + 1) / 2).clamp(0, 1)
        if min(x.shape[-2:]) >= 161:
            return 1 - piq.multi_scale_ssim(x, y, data_range=1.0, reduction="none")
        return 1 - piq.ssim(x, y, data_range=1.0, reduction="none")


def ms_ssim_loss_module(device: str | torch.device | None = None) -> MSSSIMLoss:
    return MSSSIMLoss().to(device or "cpu")

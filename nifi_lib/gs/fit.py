"""Fitting a 3D Gaussian scene to posed images (3DGS, Kerbl et al. 2023, Sec. 5 and 7.1).

Photometric loss (3DGS Eq. 7): ``L = (1 - lambda) L1 + lambda (1 - SSIM)`` with ``lambda = 0.2``;
Adam with the per-attribute learning rates of the 3DGS code (the means' rate scaled by the scene
extent and decayed exponentially); SH bands switched on one at a time; adaptive density control
(3DGS Sec. 5.2): Gaussians with a large average view-space positional gradient are cloned (small
ones) or split in two (large ones), transparent and oversized ones are pruned, and opacities are
periodically reset. On CPU the density control is implemented here; on CUDA with gsplat, gsplat's
``DefaultStrategy`` (the same rules) is used instead.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..devices import default_device
from ..errors import NifiError
from ..image_quality import gs_photometric_loss, mse, psnr_from_mse
from .cameras import Camera, cameras_extent
from .model import GaussianModel
from .render import RenderOutput, quat_to_rotmat, render, resolve_backend
from .sh import rgb_to_sh

# model attribute <-> gsplat parameter names (gsplat's strategies work on the latter)
PARAM_NAMES = {"means": "means", "log_scales": "scales", "quats": "quats", "opacity_logits": "opacities",
               "sh_dc": "sh0", "sh_rest": "shN"}


class FitError(NifiError, ValueError):
    """Inputs of a fit are inconsistent (no views, image sizes that do not match the cameras...)."""


# --- loss (3DGS Eq. 7: nifi_lib.image_quality.gs_photometric_loss) and PSNR -----------------------

def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (``a`` is clamped; mse in the inputs' dtype, floored at 1e-12)."""
    return psnr_from_mse(float(mse(a.detach().clamp(0, 1), b, dtype=None)), min_mse=1e-12)


# --- configuration ---------------------------------------------------------------------------------

@dataclass
class LearningRates:
    """Adam learning rates of the 3DGS code (``arguments/__init__.py``); ``means`` is x scene extent."""

    means_init: float = 1.6e-4
    means_final: float = 1.6e-6
    sh_dc: float = 2.5e-3
    sh_rest: float = 2.5e-3 / 20.0
    opacity: float = 0.05
    scales: float = 5e-3
    quats: float = 1e-3


@dataclass
class DensifyConfig:
    """Adaptive density control (3DGS Sec. 5.2); defaults are the 3DGS ones for 30k iterations."""

    start: int = 500
    stop: int = 15_000
    every: int = 100
    grad_threshold: float = 2e-4  # on the view-space gradient in NDC units (pixel gradient x W/2, H/2)
    percent_dense: float = 0.01  # clone if max scale <= percent_dense * extent, else split
    reset_every: int = 3000
    prune_opacity: float = 0.005
    prune_scale: float = 0.1  # prune if max scale > prune_scale * extent (after the first reset)
    max_gaussians: int | None = None

    @classmethod
    def for_iterations(cls, iterations: int, **overrides: Any) -> "DensifyConfig":
        """The 3DGS schedule for 30k iterations, compressed for shorter fits."""
        if iterations >= 30_000:
            return cls(**overrides)
        every = int(min(100, max(10, iterations // 40)))
        cfg = cls(start=int(min(500, max(every, iterations // 10))), stop=int(min(15_000, iterations // 2)),
                  every=every, reset_every=3000 if iterations >= 6000 else 10 ** 9)
        return replace(cfg, **overrides)


@dataclass
class FitHistory:
    """Per-iteration training loss and PSNR of the view used, and the number of Gaussians."""

    iteration: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    num_gaussians: list[int] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = ""
    extent: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "loss": self.loss, "psnr": self.psnr,
                "num_gaussians": self.num_gaussians, "seconds": self.seconds, "backend": self.backend,
                "extent": self.extent}


# --- initialisation ----------------------------------------------------------------------------------

def gaussians_from_points(points: torch.Tensor, colors: torch.Tensor | None = None, sh_degree: int = 3,
                          opacity: float = 0.1, generator: torch.Generator | None = None) -> GaussianModel:
    """3DGS initialisation from a point cloud: isotropic scales = RMS distance to the 3 nearest
    neighbours, identity rotations, opacity 0.1, colour from ``colors`` (N, 3) in [0, 1] or grey."""
    from scipy.spatial import cKDTree

    points = points.detach().float().cpu()
    n = points.shape[0]
    if n == 0:
        raise FitError("cannot initialise Gaussians from an empty point cloud")
    if n > 1:
        k = min(4, n)
        dist, _ = cKDTree(points.numpy()).query(points.numpy(), k=k)
        d2 = torch.from_numpy((dist[:, 1:] ** 2).mean(axis=1)).float()
    else:
        d2 = torch.ones(1) * 1e-2
    log_scales = torch.log(torch.sqrt(d2.clamp_min(1e-7)))[:, None].repeat(1, 3)
    if colors is None:
        g = generator or torch.Generator().manual_seed(0)
        colors = 0.5 + 0.05 * (torch.rand(n, 3, generator=g) - 0.5)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    k = (sh_degree + 1) ** 2 - 1
    return GaussianModel(means=points.clone(), log_scales=log_scales, quats=quats,
                         opacity_logits=torch.full((n,), math.log(opacity / (1 - opacity))),
                         sh_dc=rgb_to_sh(colors.float().cpu()), sh_rest=torch.zeros(n, k, 3))


def init_volume(cameras: Sequence[Camera]) -> tuple[torch.Tensor, float]:
    """Centre and half size of a cube the cameras look at.

    The centre is the least-squares point closest to all optical axes (an orbit's target) when that
    is well defined and in front of the cameras; the half size is the field of view's half width at
    the median distance. Otherwise (e.g. forward-facing captures) a cube in front of the cameras.
    """
    c = torch.stack([cam.camera_center for cam in cameras]).double()
    d = torch.stack([cam.forward for cam in cameras]).double()
    d = d / d.norm(dim=1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64)[None] - d[:, :, None] * d[:, None, :]
    a, b = proj.sum(0), (proj @ c[:, :, None]).sum(0)[:, 0]
    tan_half = max(math.tan(0.5 * max(cam.fov_x, cam.fov_y)) for cam in cameras)
    ev = torch.linalg.eigvalsh(a)
    if len(cameras) >= 2 and float(ev[0]) > 1e-3 * float(ev[-1]):
        p = torch.linalg.solve(a, b)
        depth = ((p - c) * d).sum(1)
        if float((depth > 0).double().mean()) >= 0.8:
            dist = float((p - c).norm(dim=1).median())
            return p.float(), dist * tan_half
    extent = cameras_extent(cameras)
    return (c.mean(0) + d.mean(0) * extent).float(), extent


def random_init(cameras: Sequence[Camera], num_points: int, sh_degree: int, generator: torch.Generator
                ) -> GaussianModel:
    """Random points uniformly in :func:`init_volume` (the 3DGS synthetic-scene initialisation)."""
    centre, half = init_volume(cameras)
    pts = centre + (torch.rand(num_points, 3, generator=generator) * 2 - 1) * half
    return gaussians_from_points(pts, None, sh_degree, generator=generator)


# --- parameters, optimisers and density control ----------------------------------------------------------

def _params_from_model(model: GaussianModel, device: torch.device) -> dict[str, torch.nn.Parameter]:
    return {PARAM_NAMES[k]: torch.nn.Parameter(v.detach().to(device).float().clone().contiguous())
            for k, v in model.tensors().items()}


def _model_from_params(params: dict[str, torch.Tensor]) -> GaussianModel:
    return GaussianModel(**{k: params[v] for k, v in PARAM_NAMES.items()})


def _make_optimizers(params: dict[str, torch.nn.Parameter], lrs: LearningRates, extent: float
                     ) -> dict[str, torch.optim.Optimizer]:
    rates = {"means": lrs.means_init * extent, "scales": lrs.scales, "quats": lrs.quats,
             "opacities": lrs.opacity, "sh0": lrs.sh_dc, "shN": lrs.sh_rest}
    # one Adam per attribute (gsplat's convention; eps 1e-15 as the 3DGS code)
    return {k: torch.optim.Adam([{"params": [p], "lr": rates[k], "name": k}], eps=1e-15) for k, p in params.items()}


def _means_lr(step: int, total: int, lrs: LearningRates, extent: float) -> float:
    """3DGS ``get_expon_lr_func``: log-linear decay from ``means_init`` to ``means_final`` (x extent)."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return math.exp(math.log(lrs.means_init) * (1 - t) + math.log(lrs.means_final) * t) * extent


def _rebuild(params: dict[str, torch.nn.Parameter], optimizers: dict[str, torch.optim.Optimizer],
             keep: torch.Tensor | None, new: dict[str, torch.Tensor] | None) -> None:
    """Keep the Gaussians ``keep`` (index or mask) and append ``new`` ones; Adam moments follow (zeros for new)."""
    for name in list(params):
        p = params[name]
        opt = optimizers[name]
        state = opt.state.pop(p, {})

        def edit(t: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
            t = t if keep is None else t[keep]
            return t if fill is None else torch.cat([t, fill])

        extra = None if new is None else new[name].to(p)
        q = torch.nn.Parameter(edit(p.detach(), extra).contiguous())
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key] = edit(state[key], None if extra is None else torch.zeros_like(extra))
        opt.param_groups[0]["params"] = [q]
        if state:
            opt.state[q] = state
        params[name] = q


@torch.no_grad()
def cap_gaussians(params: dict[str, torch.nn.Parameter], optimizers: dict[str, torch.optim.Optimizer],
                  max_gaussians: int, state: dict | None = None) -> int:
    """Enforce ``DensifyConfig.max_gaussians`` after a density-control step that has no budget of its own
    (gsplat's ``DefaultStrategy``): keep the ``max_gaussians`` most opaque Gaussians, cut their Adam moments and
    every per-Gaussian tensor of the strategy ``state`` alike. Returns how many were removed."""
    if max_gaussians < 1:
        raise FitError(f"max_gaussians must be >= 1, got {max_gaussians}")
    n = params["means"].shape[0]
    if n <= max_gaussians:
        return 0
    opacity = params["opacities"].detach().reshape(n, -1)[:, 0]
    keep = torch.zeros(n, dtype=torch.bool, device=opacity.device)
    keep[torch.topk(opacity, max_gaussians, sorted=False).indices] = True
    _rebuild(params, optimizers, keep, None)
    for key, value in list((state or {}).items()):
        if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == n:
            state[key] = value[keep.to(value.device)]
    return n - max_gaussians


class Densifier:
    """Adaptive density control of 3DGS (Sec. 5.2) for the CPU / torch-backend path."""

    def __init__(self, cfg: DensifyConfig, extent: float, generator: torch.Generator):
        self.cfg, self.extent, self.gen = cfg, extent, generator
        self.grad_accum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def update(self, out: RenderOutput, width: int, height: int) -> None:
        """Accumulate the norm of the view-space positional gradient (NDC units) of visible Gaussians."""
        grad = out.means2d_grad()
        if grad is None:
            return
        n = grad.shape[0]
        if self.grad_accum is None or self.grad_accum.shape[0] != n:
            self.grad_accum = torch.zeros(n, device=grad.device)
            self.count = torch.zeros(n, device=grad.device)
        g = grad.detach() * torch.tensor([width / 2.0, height / 2.0], device=grad.device)
        vis = out.visible
        self.grad_accum[vis] += g[vis].norm(dim=1)
        self.count[vis] += 1

    @torch.no_grad()
    def step(self, step: int, params: dict[str, torch.nn.Parameter], optimizers: dict[str, torch.optim.Optimizer]
             ) -> dict[str, int]:
        """Clone / split / prune (every ``cfg.every`` steps in [start, stop]) and reset opacities."""
        cfg, stats = self.cfg, {}
        if cfg.start < step <= cfg.stop and step % cfg.every == 0 and self.grad_accum is not None:
            stats = self._densify_and_prune(step, params, optimizers)
            self.grad_accum = self.count = None
        if step <= cfg.stop and step % cfg.reset_every == 0:
            params["opacities"].data.clamp_(max=math.log(0.01 / 0.99))  # opacity reset to min(o, 0.01)
            for moment in optimizers["opacities"].state.get(params["opacities"], {}).values():
                if torch.is_tensor(moment) and moment.shape == params["opacities"].shape:
                    moment.zero_()
            stats["reset"] = 1
        return stats

    def _densify_and_prune(self, step: int, params, optimizers) -> dict[str, int]:
        cfg = self.cfg
        n = params["means"].shape[0]
        grads = self.grad_accum / self.count.clamp_min(1)
        high = grads >= cfg.grad_threshold
        max_scale = params["scales"].exp().max(dim=1).values
        small = max_scale <= cfg.percent_dense * self.extent
        if cfg.max_gaussians is not None:
            room = max(0, cfg.max_gaussians - n)
            cand = torch.nonzero(high).squeeze(1)
            if cand.numel() > room:  # keep the highest gradients within the budget
                top = cand[torch.argsort(grads[cand], descending=True)[:room]]
                high = torch.zeros_like(high)
                high[top] = True
        clone, split = high & small, high & ~small
        new = {k: p.detach()[clone] for k, p in params.items()}
        # split: two samples from N(mean, Sigma), scales / 1.6 (3DGS densify_and_split with N = 2)
        sel = torch.nonzero(split).squeeze(1)
        if sel.numel():
            scales = params["scales"].detach()[sel].exp()
            rot = quat_to_rotmat(params["quats"].detach()[sel])
            noise = torch.randn(2, sel.numel(), 3, generator=self.gen).to(scales)
            samples = torch.einsum("nij,bnj->bni", rot, noise * scales[None])
            for k, p in params.items():
                v = p.detach()[sel]
                if k == "means":
                    v2 = (v[None] + samples).reshape(-1, 3)
                elif k == "scales":
                    v2 = torch.log(scales / 1.6).repeat(2, 1)
                else:
                    v2 = v.repeat(2, *([1] * (v.ndim - 1)))
                new[k] = torch.cat([new[k], v2])
        keep = ~split
        _rebuild(params, optimizers, keep, new)
        # prune transparent (and, after the first opacity reset, very large) Gaussians
        prune = torch.sigmoid(params["opacities"].detach()) < cfg.prune_opacity
        if step > cfg.reset_every:
            prune |= params["scales"].detach().exp().max(dim=1).values > cfg.prune_scale * self.extent
        if bool(prune.all()):  # never remove everything
            prune[torch.argmax(params["opacities"].detach())] = False
        if bool(prune.any()):
            _rebuild(params, optimizers, ~prune, None)
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum())}


# --- the fit -------------------------------------------------------------------------------------------------

def fit_gaussians(
    cameras: Sequence[Camera],
    images: torch.Tensor | Sequence[torch.Tensor],
    init: GaussianModel | torch.Tensor | None = None,
    iterations: int = 3000,
    sh_degree: int = 3,
    densify: bool | DensifyConfig = True,
    seed: int = 0,
    progress: bool = True,
    backend: str = "auto",
    background: Sequence[float] | torch.Tensor | None = None,
    num_init_points: int = 10_000,
    init_colors: torch.Tensor | None = None,
    lrs: LearningRates | None = None,
    lambda_dssim: float = 0.2,
    sh_increase_every: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[GaussianModel, FitHistory]:
    """Fit 3D Gaussians to ``images (V, 3, H, W)`` in [0, 1] seen by ``cameras`` (3DGS training).

    ``init``: a model to start from, an ``(N, 3)`` point cloud (optionally ``init_colors``), or None
    for ``num_init_points`` random points in the volume the cameras look at. ``densify``: True for
    the 3DGS schedule compressed to ``iterations`` (:meth:`DensifyConfig.for_iterations`), a
    :class:`DensifyConfig`, or False. ``background`` (default black) is composited behind the
    Gaussians (use white for NeRF-synthetic images composited on white). One random view per step,
    each view once per epoch (as 3DGS). Deterministic from ``seed`` on CPU.
    Returns the fitted model (detached, on CPU) and a :class:`FitHistory`.
    """
    if len(cameras) == 0:
        raise FitError("fit_gaussians: no cameras")
    if len(images) != len(cameras):
        raise FitError(f"fit_gaussians: {len(images)} images for {len(cameras)} cameras")
    for cam, img in zip(cameras, images):
        if tuple(img.shape) != (3, cam.height, cam.width):
            raise FitError(f"fit_gaussians: image of camera {cam.name} has shape {tuple(img.shape)}, "
                           f"expected (3, {cam.height}, {cam.width})")
    if device is None:
        device = default_device() if backend != "torch" else "cpu"
    device = torch.device(device)
    chosen = resolve_backend(backend, device)
    gen = torch.Generator().manual_seed(seed)
    lrs = lrs or LearningRates()
    extent = cameras_extent(cameras)

    if isinstance(init, GaussianModel):
        model0 = init.detach().clone()
        if model0.sh_degree < sh_degree:  # pad SH bands
            k = (sh_degree + 1) ** 2 - 1
            pad = torch.zeros(model0.num_gaussians, k - model0.sh_rest.shape[1], 3)
            model0.sh_rest = torch.cat([model0.sh_rest.cpu(), pad.to(model0.sh_rest)], dim=1)
    elif init is not None:
        model0 = gaussians_from_points(torch.as_tensor(init), init_colors, sh_degree, generator=gen)
    else:
        model0 = random_init(cameras, num_init_points, sh_degree, gen)
    model0.validate("initial Gaussians")
    max_degree = min(sh_degree, model0.sh_degree)

    params = _params_from_model(model0, device)
    optimizers = _make_optimizers(params, lrs, extent)
    bg = torch.zeros(3) if background is None else torch.as_tensor(background, dtype=torch.float32)
    bg = bg.to(device)
    imgs = [torch.as_tensor(im, dtype=torch.float32).to(device) for im in images]

    cfg: DensifyConfig | None
    if densify is True:
        cfg = DensifyConfig.for_iterations(iterations)
    elif isinstance(densify, DensifyConfig):
        cfg = densify
    else:
        cfg = None
    strategy = strategy_state = densifier = None
    if cfg is not None and chosen == "gsplat":
        from gsplat.strategy import DefaultStrategy

        strategy = DefaultStrategy(prune_opa=cfg.prune_opacity, grow_grad2d=cfg.grad_threshold,
                                   grow_scale3d=cfg.percent_dense, prune_scale3d=cfg.prune_scale,
                                   refine_start_iter=cfg.start, refine_stop_iter=cfg.stop,
                                   reset_every=cfg.reset_every, refine_every=cfg.every)
        strategy.check_sanity(params, optimizers)
        strategy_state = strategy.initialize_state(scene_scale=extent)
    elif cfg is not None:
        densifier = Densifier(cfg, extent, gen)

    if sh_increase_every is None:
        sh_increase_every = min(1000, max(1, iterations // (2 * (max_degree + 1))))
    history = FitHistory(backend=chosen, extent=extent)
    order: list[int] = []
    t0 = time.perf_counter()
    bar = tqdm(range(1, iterations + 1), desc="fit 3DGS", disable=not progress, leave=False)
    for step in bar:
        lr = _means_lr(step - 1, iterations, lrs, extent)
        for group in optimizers["means"].param_groups:
            group["lr"] = lr
        degree = min(max_degree, (step - 1) // sh_increase_every)
        if not order:
            order = torch.randperm(len(cameras), generator=gen).tolist()
        v = order.pop()
        cam, target = cameras[v], imgs[v]
        model = _model_from_params(params)
        out = render(model, cam, backend=chosen, background=bg, sh_degree=degree)
        if strategy is not None:
            strategy.step_pre_backward(params, optimizers, strategy_state, step, out.info)
        elif densifier is not None and step <= cfg.stop:
            out.retain_grad()
        loss = gs_photometric_loss(out.image, target, lambda_dssim)
        loss.backward()
        if strategy is not None:
            strategy.step_post_backward(params, optimizers, strategy_state, step, out.info, packed=False)
            if cfg.max_gaussians is not None:   # DefaultStrategy grows without a budget
                cap_gaussians(params, optimizers, cfg.max_gaussians, strategy_state)
        elif densifier is not None and step <= cfg.stop:
            densifier.update(out, cam.width, cam.height)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if densifier is not None:
            densifier.step(step, params, optimizers)
            if cfg.max_gaussians is not None and params["means"].shape[0] > 4 * cfg.max_gaussians:
                raise FitError("density control exceeded max_gaussians")  # pragma: no cover - safety net
        p = _psnr(out.image, target)
        history.iteration.append(step)
        history.loss.append(float(loss.detach()))
        history.psnr.append(p)
        history.num_gaussians.append(int(params["means"].shape[0]))
        if progress and (step % 10 == 0 or step == iterations):
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", psnr=f"{p:.2f}", n=params["means"].shape[0])
    bar.close()
    history.seconds = time.perf_counter() - t0
    fitted = _model_from_params({k: v.detach() for k, v in params.items()}).to("cpu")
    fitted.validate("fitted Gaussians")
    return fitted, history


@torch.no_grad()
def evaluate_psnr(model: GaussianModel, cameras: Sequence[Camera], images: torch.Tensor | Sequence[torch.Tensor],
                  background: Sequence[float] | torch.Tensor | None = None, backend: str = "auto") -> list[float]:
    """PSNR (dB) of the model's renders (clamped to [0, 1]) against ``images``, one value per view."""
    return [_psnr(render(model, cam, backend=backend, background=background).image, img.to(model.means))
            for cam, img in zip(cameras, images)]

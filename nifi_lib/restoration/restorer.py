"""Artifact Restoration (paper Sec. 3, Eq. 7): project the degraded latent to t0 and take one step.

The procedure matches the authors' inference code step by step (PAPER.md):
1. image in [-1, 1], reflect-padded to a multiple of the VAE factor (8 for SD3);
2. latents = a sample of the encoder's latent distribution x scaling factor (no shift factor);
3. latents reflect-padded to a multiple of the patch size (2);
4. sigma_t0 = the scheduler sigma whose timestep is nearest t0 in the initial 1000-step table
   (SD3, shift 3: t0 = 199 -> 0.198); x~_t0 = sigma * noise + (1 - sigma) * latents (Eq. 2), the latent
   sample drawn first and the noise second from one generator seeded with ``seed``; at t0 = T (1000, the
   "NiFi w/o t0" ablation) the latent is fed un-noised with sigma_t0 = 1 (:func:`~nifi_lib.diffusion.flow.eq7_start`,
   the same rule the trainer uses);
5. one Euler step x^ = x~_t0 - (sigma_t0 - sigma_end) v with v = eps_{theta,phi-}(x~_t0, t0) (timestep
   value t0 passed to the transformer, the fixed prompt embedding, no CFG), sigma_end being the sigma
   nearest timestep 0 (about 0.003) -- Eq. 7 with the authors' end point;
6. decode x^ / scaling factor, crop back to the input size, clamp to [-1, 1].

Fast paths (``docs/performance.md``; none changes the procedure): ``compile=True`` (torch.compile of the
transformer blocks and the VAE, channels_last VAE, cuDNN autotuning), ``fuse_lora=True`` (phi- merged into
the base weights once, for inference-only backbones), ``vae_tile`` (decode in overlapping latent tiles on
the device, to bound the decoder's memory on large frames; an approximation, see
:func:`~nifi_lib.diffusion.latents.decode_latents_tiled`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
from torch.profiler import record_function

from ..config import DEFAULT_T0
from ..diffusion.backbone import DTYPES, Backbone
from ..diffusion.fast_paths import mark_step, optimize_backbone
from ..diffusion.flow import Eq7Start, euler_step, eq7_start, forward_noise, one_step_restore, project_to_t0
from ..diffusion.latents import decode_latents, decode_latents_tiled, encode_latents, pad_to_multiple, \
    transformer_velocity
from .fast_paths import FrameSizeError, blend_tiles, fuse_adapter, position_table_limit, tile_plan
from .lora import RESTORER, adapter_names, adapter_scope

_log = logging.getLogger("nifi_lib.restoration")


def encode_degraded(bb: Backbone, images: torch.Tensor, adapter: str | None, generator: torch.Generator | None,
                    autocast: Callable[[], ContextManager] | None = None) -> torch.Tensor:
    """Steps 1-3 of the procedure: ``x~ = E_phi-(I~)`` (a sample of the latent distribution x scaling factor),
    the image (in [-1, 1]) reflect-padded to the VAE factor first and the latent to the patch size after."""
    x, _ = pad_to_multiple(images, bb.vae_scale_factor)
    with record_function("nifi.restore.encode"), adapter_scope(bb.vae, adapter), (autocast or contextlib.nullcontext)():
        latents = encode_latents(bb.vae, x, bb.scaling_factor, generator=generator)
    return pad_to_multiple(latents, bb.patch_size)[0]


def enable_fp8(bb: Backbone) -> int:
    """:func:`~nifi_lib.diffusion.fp8.convert_to_fp8` on ``bb``'s transformer, after
    :func:`~nifi_lib.diffusion.fp8.check_fp8_device`; returns the number of FP8 layers."""
    from ..diffusion.fp8 import check_fp8_device, convert_to_fp8

    check_fp8_device(bb.device, next(bb.transformer.parameters()).dtype)
    return convert_to_fp8(bb.transformer)


def default_vae_attention(bb: Backbone, compile: bool, vae_attention: str | None) -> str | None:
    """The restorer's VAE attention kind: ``vae_attention`` when given; else ``"chunked"`` for a compiled
    restorer on CUDA (docs/performance.md, runs 6-7 on an H100: 1.09x at 1024x1024, 1.16x at 1080x1920, real-photo
    LPIPS against the eager path 0.0022 at most, the SDPA kind's 0.0021); else ``None`` (the backbone as it is)."""
    if vae_attention is None and compile and bb.device.type == "cuda":
        return "chunked"
    return vae_attention


def check_size_bucket(bb: Backbone, size_bucket: int | None) -> int | None:
    """``size_bucket`` if it is a positive multiple of the VAE factor x the patch size (the unit a frame is
    padded to anyway: 16 pixels for SD3), else a :class:`FrameSizeError` naming that unit."""
    if size_bucket is None or size_bucket == 0:
        return None
    unit = bb.vae_scale_factor * bb.patch_size
    if size_bucket < 0 or size_bucket % unit:
        raise FrameSizeError(f"size_bucket {size_bucket}: must be a positive multiple of {unit} pixels (the VAE factor "
                         f"{bb.vae_scale_factor} x the patch size {bb.patch_size})")
    return int(size_bucket)


def bucket_pad(images: torch.Tensor, size_bucket: int) -> torch.Tensor:
    """Reflect-pad ``(N, 3, H, W)`` frames at the bottom/right to a multiple of ``size_bucket`` pixels
    (:func:`~nifi_lib.diffusion.latents.pad_to_multiple`, as the VAE-factor padding of step 1): every frame size
    within one bucket then reaches the backbone as the same shape, so a compiled restorer (``compile``, CUDA
    graphs) serves a new size without compiling. Not the authors' procedure: the extra rows and columns are context
    the transformer's and the VAE's attention see, so the cropped result differs a little from the unpadded one
    (measured in docs/performance.md); frames whose size is a multiple of the bucket are restored exactly."""
    return pad_to_multiple(images, size_bucket)[0]


@dataclass
class Eq7Latents:
    """The intermediates of Eq. 7 for one batch: ``x~_t0`` (Eq. 2), ``v = eps_{theta,phi-}(x~_t0, t0)``, ``x^``."""

    x_t0: torch.Tensor
    v: torch.Tensor
    x_hat: torch.Tensor


def restore_latents(bb: Backbone, latents: torch.Tensor, start: Eq7Start, adapter: str | None,
                    generator: torch.Generator | None = None,
                    prompts: tuple[torch.Tensor, torch.Tensor] | None = None,
                    autocast: Callable[[], ContextManager] | None = None) -> Eq7Latents:
    """Eq. 7, the one implementation (restorer, trainer, bench and ``nifi verify`` call it):
    ``x^ = x~_t0 - (sigma_t0 - sigma_end) eps_{theta,phi-}(x~_t0, t0)``.

    ``x~_t0`` is :func:`~nifi_lib.diffusion.flow.project_to_t0` of ``latents`` (Eq. 2 noise drawn from
    ``generator`` after the latent sample; un-noised at t0 = T, the "w/o t0" ablation); ``prompts`` default to
    the backbone's fixed prompt (no CFG); the trainer passes its dropped-out batch. ``v`` runs under
    ``autocast()`` when given and the step is taken in the latents' dtype. Gradients flow when enabled.
    """
    x_t0 = project_to_t0(latents, start, generator)                                   # Eq. 2 (t0 < T)
    pe, pp = prompts if prompts is not None else bb.prompt_batch(x_t0.shape[0], device=x_t0.device,
                                                                 dtype=x_t0.dtype)
    with record_function("nifi.restore.transformer"), adapter_scope(bb.transformer, adapter), \
            (autocast or contextlib.nullcontext)():
        v = transformer_velocity(bb.transformer, x_t0, start.t0, pe, pp)
    x_hat = one_step_restore(x_t0, v.to(x_t0.dtype), start.sigma_t0, start.sigma_end)   # Eq. 7
    return Eq7Latents(x_t0, v, x_hat)


# Where Eq. 7 starts and ends on the scheduler's table: the one rule of
# :func:`nifi_lib.diffusion.flow.eq7_start`, shared with the trainer (t0 = T: un-noised, sigma 1).
RestoreSchedule = Eq7Start


class Restorer:
    """One-step restorer ``I^ = D(x^)`` with ``x^`` from Eq. 7, on a frozen backbone with phi-.

    ``adapter=None`` runs the frozen base alone (the "w/o phi-" reference and Img2Img's denoiser).
    """

    checkpoint_t0: int | None = None      # the t0 the loaded checkpoint records (set by from_pretrained)
    base_model: str | None = None         # the backbone folder or hub id it was loaded from (from_pretrained)
    checkpoint_format: str | None = None

    def __init__(self, backbone: Backbone, t0: int = DEFAULT_T0, adapter: str | None = RESTORER,
                 tile_size: int | None = None, tile_overlap: int = 32, *, compile: bool = False,
                 channels_last: bool | None = None, fuse_lora: bool = False, vae_tile: int | None = None,
                 vae_tile_overlap: int = 16, cuda_graphs: bool | None = None, vae_attention: str | None = None,
                 size_bucket: int | None = None, fp8: bool = False):
        """``tile_size``: run the whole procedure on overlapping image tiles (frames larger than it).

        Fast paths (same function, see the module docstring): ``compile`` (torch.compile of the
        transformer blocks and the VAE via :func:`~nifi_lib.diffusion.backbone.optimize_backbone`, which
        also turns on ``channels_last`` unless given and cuDNN autotuning on CUDA), ``fuse_lora`` (merge
        phi- into the base weights of the transformer and the VAE encoder once: one GEMM/conv per layer
        instead of three; the backbone then serves inference only, since running it without the adapter
        unmerges in the base dtype), ``vae_tile`` (latent tile size for :func:`decode_latents_tiled`),
        ``cuda_graphs`` (default: with ``compile`` on CUDA; inductor's CUDA graphs, inference only: not
        for a backbone that is also trained), ``vae_attention`` (``"sdpa"`` or ``"chunked"``: the VAE's attention
        processor, see :func:`~nifi_lib.diffusion.vae_attention.set_vae_attention`; default
        :func:`default_vae_attention`: chunked with ``compile`` on CUDA, else as the backbone is), ``size_bucket`` (pixels, a multiple of
        the VAE factor x the patch size, 16 for SD3: each frame is reflect-padded to a multiple of it instead of
        the VAE factor alone and cropped back after decoding, so frames of different sizes within one bucket
        share one compiled graph (a new size costs no compilation); an approximation like ``tile_size``: the
        padding is context the attention sees, see :func:`bucket_pad`), ``fp8`` (the transformer blocks' linear
        layers as float8 GEMMs with rowwise scaling, :func:`~nifi_lib.diffusion.fp8.convert_to_fp8`: an
        approximation, inference only and irreversible for this backbone; after ``fuse_lora``, before ``compile``;
        on CUDA it needs a bf16 backbone on an FP8 GPU, sm89 or later).
        """
        self.backbone = backbone
        self.t0 = t0
        self.adapter = adapter if adapter is None or adapter in adapter_names(backbone.transformer) else None
        if adapter is not None and self.adapter is None:
            raise ValueError(f"backbone has no adapter '{adapter}'; load a checkpoint first or pass adapter=None")
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.vae_tile = vae_tile
        self.vae_tile_overlap = vae_tile_overlap
        self.size_bucket = check_size_bucket(backbone, size_bucket)
        if fuse_lora and self.adapter is not None:
            fuse_adapter(backbone, self.adapter)
        if fp8 and not backbone.fast_paths.get("fp8"):
            backbone.fast_paths["fp8"] = enable_fp8(backbone)
        if cuda_graphs is None:
            cuda_graphs = bool(compile) and backbone.device.type == "cuda"
        vae_attention = default_vae_attention(backbone, compile, vae_attention)
        if compile or channels_last or vae_attention is not None:
            optimize_backbone(backbone, compile=compile, channels_last=channels_last, cuda_graphs=cuda_graphs,
                              vae_attention=vae_attention)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.transformer.parameters()).dtype

    def schedule(self, t0: float | None = None, add_noise: bool | None = None) -> RestoreSchedule:
        """The Eq. 7 start for ``t0`` (default: the restorer's), by :func:`~nifi_lib.diffusion.flow.eq7_start`:
        Eq. 2 noise at sigma(t0) for t0 < T; the un-noised latent at t0 = T (sigma 1, "NiFi w/o t0").

        ``add_noise`` is a removed switch kept only to fail clearly: ``False`` with t0 < T raises (the
        ablation is ``t0 = T``, not an un-noised latent at another timestep)."""
        t0 = self.t0 if t0 is None else t0
        sched = eq7_start(self.backbone.scheduler, t0)
        if add_noise is False and sched.add_noise:
            big_t = int(self.backbone.scheduler.config.num_train_timesteps)
            raise ValueError(f"add_noise=False is no longer supported: the 'NiFi w/o t0' ablation is t0 = T "
                             f"(t0={big_t}: the un-noised latent at timestep {big_t}); got t0={t0}")
        return sched

    @torch.no_grad()
    def restore(self, images: torch.Tensor, t0: float | None = None, seed: int | Sequence[int] | None = None,
                generator: torch.Generator | None = None, add_noise: bool = True) -> torch.Tensor:
        """Restore a batch ``(N, 3, H, W)`` in [-1, 1]; returns the same shape in [-1, 1].

        ``seed`` seeds one generator used first for the latent sample and then for the noise, so the
        result is reproducible. A sequence of ``N`` seeds gives each frame its own generator (a list, as
        diffusers' ``randn_tensor``), so frame i of the batch is what ``restore(images[i:i+1], seed=seed[i])``
        returns (``nifi restore --batch_size``: batching does not change a frame). Frames larger than ``tile_size`` are processed in overlapping tiles, and so
        are frames whose latent exceeds the transformer's position table (:func:`position_table_limit`; tiles
        of the largest size it allows, announced once per restorer through ``notify``, see :meth:`_tile_plan`).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if generator is None and isinstance(seed, (list, tuple)):
            if len(seed) != images.shape[0]:
                raise ValueError(f"{len(seed)} seeds for a batch of {images.shape[0]} frames")
            generator = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seed]
        elif generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(0 if seed is None else int(seed))
        h, w = images.shape[-2:]
        if self.size_bucket:     # the frame reaches the transformer bucketed: its position table sees that size
            h, w = (-(-h // self.size_bucket) * self.size_bucket), (-(-w // self.size_bucket) * self.size_bucket)
        plan = self._tile_plan(h, w)
        if plan is not None:
            return self._restore_tiled(images, t0, generator, add_noise, *plan)
        return self._restore_batch(images, self.schedule(t0, add_noise), generator, bucket=True)

    def _restore_batch(self, images: torch.Tensor, sched: RestoreSchedule, generator: torch.Generator,
                       bucket: bool = False) -> torch.Tensor:
        """Steps 1-6 on one batch; ``bucket``: padded to ``size_bucket`` first (whole frames; tiles already share
        one size)."""
        mark_step(self.backbone)
        x = images.to(device=self.device, dtype=self.dtype)
        h, w = x.shape[-2:]
        if bucket and self.size_bucket:
            x = bucket_pad(x, self.size_bucket)
        latents = encode_degraded(self.backbone, x, self.adapter, generator)
        x_hat = restore_latents(self.backbone, latents, sched, self.adapter, generator).x_hat     # Eq. 7
        with record_function("nifi.restore.decode"):
            out = self.decode(x_hat)
        return out[..., :h, :w].clamp(-1, 1).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """D(x^): the full decoder, or overlapping latent tiles with ``vae_tile`` (a fast path)."""
        bb = self.backbone
        if self.vae_tile:
            return decode_latents_tiled(bb.vae, latents, bb.scaling_factor, self.vae_tile, self.vae_tile_overlap)
        return decode_latents(bb.vae, latents, bb.scaling_factor)

    # Called once per restorer with the tiling notice (default: a warning of the "nifi_lib.restoration" logger).
    notify: Callable[[str], None] | None = None
    _table_noted: bool = False

    def _tile_plan(self, h: int, w: int, auto_only: bool = False) -> tuple[int, int] | None:
        """``(tile, overlap)`` for an ``h`` x ``w`` frame or ``None`` (:func:`~.fast_paths.tile_plan`; the user's
        ``tile_size`` ignored with ``auto_only``); the position-table notice is announced once per restorer."""
        plan, notice = tile_plan(self.backbone, h, w, None if auto_only else self.tile_size, self.tile_overlap)
        if notice is not None and not self._table_noted:
            self._table_noted = True
            (self.notify or _log.warning)(notice)
        return plan

    def _restore_tiled(self, images, t0, generator, add_noise, tile: int | None = None,
                       overlap: int | None = None) -> torch.Tensor:
        """Overlapping tiles blended with linear ramps; each tile follows the exact procedure."""
        sched = self.schedule(t0, add_noise)
        ts = int(self.tile_size if tile is None else tile)
        ov = int(self.tile_overlap if overlap is None else overlap)
        return self._blend_tiles(images, ts, ov, lambda t: self._restore_batch(t, sched, generator))

    def _blend_tiles(self, images: torch.Tensor, ts: int, ov: int,
                     fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return blend_tiles(images, ts, ov, fn, self.device)

    @torch.no_grad()
    def img2img(self, images: torch.Tensor, t0: float | None = None, steps: int = 10, seed: int | None = 0) -> torch.Tensor:
        """Training-free Img2Img baseline (Sec. 4.2): the frozen base denoises x~_t0 with ``steps`` Euler
        steps (Eq. 3) from t0 to the end of the schedule; no adapters, the fixed prompt, no CFG."""
        plan = self._tile_plan(*images.shape[-2:], auto_only=True)
        if plan is not None:  # beyond the transformer's position table: overlapping tiles, each seeded alike
            return self._blend_tiles(images, *plan, lambda t: self.img2img(t, t0=t0, steps=steps, seed=seed))
        bb = self.backbone
        mark_step(bb)
        g = torch.Generator(device=self.device)
        g.manual_seed(0 if seed is None else int(seed))
        sched = self.schedule(t0)
        x = images.to(device=self.device, dtype=self.dtype)
        latents = encode_degraded(bb, x, None, g)
        noise = torch.randn(latents.shape, generator=g, device=latents.device, dtype=latents.dtype)
        z = forward_noise(latents, noise, sched.sigma_t0)                                 # Eq. 2
        sigmas = torch.linspace(sched.sigma_t0, sched.sigma_end, steps + 1).tolist()
        pe, pp = bb.prompt_batch(z.shape[0], device=self.device, dtype=self.dtype)
        with adapter_scope(bb.transformer, None):
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                v = transformer_velocity(bb.transformer, z, s * bb.scheduler.config.num_train_timesteps, pe, pp)
                z = euler_step(z, v, s, s_next)                                           # Eq. 3
        return self.decode(z)[..., :x.shape[-2], :x.shape[-1]].clamp(-1, 1).float()

    @torch.no_grad()
    def trace(self, images: torch.Tensor, t0: float | None = None, seed: int = 0) -> dict[str, torch.Tensor | float]:
        """Every intermediate of Eq. 7 for one batch (for notebooks): the latent x~, its projection x~_t0
        (Eq. 2) decoded, the one-step estimate x^ and the restored image, images in [-1, 1]."""
        bb = self.backbone
        mark_step(bb)
        sched = self.schedule(t0)
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        x = images.to(device=self.device, dtype=self.dtype)
        h, w = x.shape[-2:]
        latents = encode_degraded(bb, x, self.adapter, g)
        eq7 = restore_latents(bb, latents, sched, self.adapter, g)
        dec = lambda z: decode_latents(bb.vae, z, bb.scaling_factor)[..., :h, :w].clamp(-1, 1).float()  # noqa: E731
        return {"t0": sched.t0, "sigma_t0": sched.sigma_t0, "sigma_end": sched.sigma_end,
                "latents": latents.float(), "x_t0": eq7.x_t0.float(), "x_hat": eq7.x_hat.float(),
                "reconstruction": dec(latents), "projected": dec(eq7.x_t0), "restored": dec(eq7.x_hat)}

    @classmethod
    def from_pretrained(cls, base_model: str | None = None, ckpt: str | None = None, embeddings: str | None = None,
                        device: str = "cpu", dtype: str = "fp32", t0: int | None = None, kind: str | None = None,
                        tile_size: int | None = None, compile: bool = False, fuse_lora: bool = False,
                        vae_tile: int | None = None, vae_attention: str | None = None,
                        size_bucket: int | None = None, fp8: bool = False) -> "Restorer":
        """Backbone + phi- from a checkpoint (the authors' ``.ckpt``, our ``.safetensors`` adapters, or a
        training checkpoint ``latest.pt``/``best.pt``). Without ``ckpt``: the frozen base alone.
        ``base_model``/``embeddings`` default to what the checkpoint records (the backbone it was trained on),
        else the embedded backbone (:func:`~nifi_lib.restoration.io.resolve_restore_settings`).
        ``t0`` (Eq. 7's start): default the t0 the checkpoint was trained for (training checkpoints record
        it; 1000 = T is the "w/o t0" ablation), else 199 (the authors' ``.ckpt`` records none). The stored
        value is kept as ``restorer.checkpoint_t0`` (None if absent).
        ``compile``/``fuse_lora``/``vae_tile``/``vae_attention``/``size_bucket``/``fp8``: the fast paths of :class:`Restorer` (the
        backbone is private to the restorer here, so fusing phi- into it is safe)."""
        from ..diffusion.backbone import load_backbone
        from ..paths import resolve_model_ref
        from .io import load_restorer_checkpoint, resolve_restore_settings

        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}'")
        base_model, stored_kind, embeddings = resolve_restore_settings(ckpt, base_model, embeddings)
        bb = load_backbone(resolve_model_ref(base_model), kind=kind or stored_kind, embeddings=embeddings,
                           device=device, dtype=dtype)
        adapter, weights = None, None
        if ckpt:
            weights = load_restorer_checkpoint(ckpt, bb)
            bb.to(device=device, dtype=DTYPES[dtype])
            adapter = RESTORER
        if t0 is None:
            t0 = weights.t0_or_default if weights is not None else DEFAULT_T0
        eq7_start(bb.scheduler, t0)   # a t0 outside [0, T] fails here, before any restore
        r = cls(bb, t0=int(t0), adapter=adapter, tile_size=tile_size, compile=compile, fuse_lora=fuse_lora,
                vae_tile=vae_tile, vae_attention=vae_attention, size_bucket=size_bucket, fp8=fp8)
        r.base_model = base_model
        r.checkpoint_t0 = weights.t0 if weights is not None else None
        r.checkpoint_format = weights.format if weights is not None else None
        return r


__all__ = ["Eq7Latents", "FrameSizeError", "RestoreSchedule", "Restorer", "encode_degraded", "fuse_adapter",
           "position_table_limit", "restore_latents"]

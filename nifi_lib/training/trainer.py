"""The NiFi trainer (``nifi train``, the seed's ``train_nifi.py``).

Each step (Sec. 3, "Training alternates one phi- update and one phi+ update"):
1. phi- step (Eq. 6): the restorer maps the degraded latent x~ = E_phi-(I~) through Eq. 7 to x^; the
   loss is the distribution-matching surrogate of Eq. 4/5 (s_real: frozen base, s_restore: base + phi+,
   both with CFG) + l2(x, x^) + LPIPS(D(x^), I);
2. phi+ step (Eq. 8): the critic's flow-matching loss on the detached x^.
AdamW (lr 5e-6 / 1e-6, weight decay 1e-4), grad-norm clip 1.0, prompt dropout (the student's prompt only:
s_real, s_restore and the critic's Eq. 8 pass keep the real prompt), bf16 autocast on CUDA with fp32 adapter
master weights. ``best.pt`` is chosen on held-out training views (:func:`~.data.holdout_views`), never on
the test split.

Performance (``docs/performance.md``): the step issues no host-device synchronisation. All randomness
(dropout mask, timestep indices, noise, the encoder's latent sample) comes from one generator on the
compute device, the timestep tables and prompt embeddings live there, the finite-loss checks are
tensors and a non-finite step is skipped inside the fused AdamW kernel (``found_inf``), and
:meth:`NiFiTrainer.train_step` returns 0-dim tensors that :func:`train` converts once per logging
interval. The real score on ``x^_t`` and on ``x_t`` is one CFG-batched transformer call. ``train.compile``
turns on torch.compile (transformer blocks, VAE), channels_last VAE weights and cuDNN autotuning
(:func:`~nifi_lib.diffusion.backbone.optimize_backbone`); ``train.gradient_checkpointing`` checkpoints
the transformer blocks and the VAE encoder/decoder. Outputs (the seed's): ``runs/<exp>/latest.pt``, ``best.pt``,
``train_log.csv``, ``train_summary.json``. Data parallel over ``torch.distributed`` when launched with
torchrun (gloo on CPU, NCCL on GPUs): gradients of the adapters are averaged across ranks.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..config import Config
from ..devices import default_device
from ..diffusion.backbone import Backbone, load_backbone
from ..diffusion.fast_paths import load_compile_cache, mark_step, optimize_backbone, save_compile_cache
from ..diffusion.flow import classifier_free_guidance, denoised_estimate, eq7_start, schedule_tables, sigma_at
from ..diffusion.latents import decode_latents, encode_latents, to_model_range, transformer_velocity
from ..diffusion.prompts import apply_prompt_dropout, dropout_mask
from ..errors import NifiError
from ..io.atomic import WriteError, atomic_path, atomic_save, atomic_write_json
from ..paths import repo_path, resolve_model_ref
from ..restoration.io import TRAIN_FORMAT, restore_settings_of_config, safe_torch_load, split_groups
from ..restoration.lora import (CRITIC, RESTORER, adapter_parameters, adapter_scope, adapter_state_dict,
                                add_critic_adapter, add_restorer_adapters, load_adapter_state_dict)
from ..restoration.restorer import Restorer, encode_degraded, restore_latents
from .data import BatchLoader, PairError, PairSampler, find_pairs, holdout_views
from .scene_prompts import ScenePrompts, training_embeddings
from .objectives import critic_inputs, critic_loss, perceptual_matching_loss, restoration_distribution_matching_loss

CACHE_SAVE_STEP = 3   # train.compile_cache is written after this step (compiled, CUDA graphs recorded) and at the end
LOG_FIELDS = ["step", "loss_total", "loss_kl", "loss_l2", "loss_lpips", "loss_critic", "grad_norm_minus",
              "grad_norm_plus", "dm_grad_norm", "sigma", "lr_minus", "lr_plus", "skipped", "wall_time"]


class TrainingError(NifiError):
    pass


@dataclass
class TrainState:
    step: int = 0
    best_metric: float = math.inf
    best_step: int = -1
    skipped_steps: int = 0
    elapsed: float = 0.0
    history: list = field(default_factory=list)


def _block_tuner_layers(module) -> list:
    """peft's LoRA layers inside ``module`` (a checkpointed block), found once and cached on it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    cached = module.__dict__.get("_nifi_ckpt_tuner_layers")
    if cached is None:
        cached = module.__dict__["_nifi_ckpt_tuner_layers"] = [m for m in module.modules()
                                                                if isinstance(m, BaseTunerLayer)]
    return cached


@contextlib.contextmanager
def _adapter_state(layers: list, state: list):
    """Set each LoRA layer's (``_active_adapter``, ``_disable_adapters``) to ``state``; restore on exit."""
    saved = [(layer._active_adapter, layer._disable_adapters) for layer in layers]
    try:
        for layer, (act, dis) in zip(layers, state):
            layer._active_adapter, layer._disable_adapters = act, dis
        yield
    finally:
        for layer, (act, dis) in zip(layers, saved):
            layer._active_adapter, layer._disable_adapters = act, dis


def adapter_checkpoint(module, *args):
    """diffusers' ``gradient_checkpointing_func`` (non-reentrant ``torch.utils.checkpoint``) whose backward
    recompute runs ``module`` with the adapters that ran its forward.

    A step runs the transformer under three adapter states (:func:`adapter_scope`: phi- for Eq. 7, none for
    s_real, phi+ for s_restore and Eq. 8) and calls ``backward`` after the scopes have exited, so a plain
    checkpoint would recompute phi-'s blocks with the wrong (or no) LoRA active: other activations, and
    ``CheckpointError: different number of tensors saved``. The LoRA layers' state at forward time is
    recorded here and re-applied by ``context_fn`` around the recompute only. Under torch.compile (a compiled
    region that contains the checkpoint) the recompute is part of the traced graph, which already holds the
    forward's adapters, and dynamo accepts no custom ``context_fn``: the plain checkpoint is used there."""
    from torch.utils.checkpoint import checkpoint

    if torch.compiler.is_compiling():
        return checkpoint(module.__call__, *args, use_reentrant=False)
    layers = _block_tuner_layers(module)
    if not layers:
        return checkpoint(module.__call__, *args, use_reentrant=False)
    state = [(layer._active_adapter, layer._disable_adapters) for layer in layers]
    return checkpoint(module.__call__, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _adapter_state(layers, state)))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def out_of_time(elapsed: float, max_seconds: float | None, world: int = 1) -> bool:
    """``train.max_seconds`` reached? With several processes the answer is rank 0's (one broadcast), so every
    rank stops after the same step."""
    if max_seconds is None:
        return False
    if max_seconds <= 0:
        raise TrainingError(f"train.max_seconds {max_seconds}: must be positive (or null for no cap)")
    late = elapsed >= max_seconds
    if world > 1:
        flag = torch.tensor([float(late)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(flag, src=0)
        late = bool(flag.item())
    return late


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return _world()


class _ForwardHolder(torch.nn.Module):
    """The module DDP wraps: the backbone's trainable parts as submodules; ``forward(fn)`` runs ``fn()``."""

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module):
        super().__init__()
        self.transformer, self.vae = transformer, vae

    def forward(self, fn):
        return fn()


class NiFiTrainer:
    """Holds the frozen backbone with phi- and phi+, their optimizers and the training state."""

    def __init__(self, cfg: Config, backbone: Backbone, device: str = "cpu", perceptual=None,
                 perceptual_name: str = "lpips", compile: bool | None = None):
        self.cfg = cfg
        self.bb = backbone
        self.device = torch.device(device)
        self.rank, self.world = _world()
        m, t = cfg.model, cfg.train
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.mixed_precision)
        if self.device.type != "cuda":
            self.autocast_dtype = None
        torch.manual_seed(t.seed)
        add_restorer_adapters(backbone, rank=m.lora_rank, alpha=m.lora_alpha)
        add_critic_adapter(backbone, rank=m.lora_rank, alpha=m.lora_alpha)
        self.phi_minus = adapter_parameters(backbone.transformer, RESTORER) + adapter_parameters(backbone.vae, RESTORER)
        self.phi_plus = adapter_parameters(backbone.transformer, CRITIC)
        for p in self.phi_minus + self.phi_plus:  # fp32 master weights for the adapters
            p.data = p.data.float()
            p.requires_grad_(True)
        if t.gradient_checkpointing:   # recomputed under the adapter state of the forward (adapter_checkpoint)
            backbone.transformer.enable_gradient_checkpointing(gradient_checkpointing_func=adapter_checkpoint)
            backbone.vae.enable_gradient_checkpointing(gradient_checkpointing_func=adapter_checkpoint)
        # fused AdamW skips a non-finite step on the device (found_inf), without reading the flag back
        self._fused = self.device.type in ("cuda", "cpu")
        fused = {"fused": True} if self._fused else {}
        self.opt_minus = torch.optim.AdamW(self.phi_minus, lr=t.lr_phi_minus, weight_decay=t.weight_decay, **fused)
        self.opt_plus = torch.optim.AdamW(self.phi_plus, lr=t.lr_phi_plus, weight_decay=t.weight_decay, **fused)
        s = backbone.scheduler
        check_schedule(cfg, s)
        self.t0 = float(cfg.diffusion.t0)
        self.sigma_t0 = sigma_at(s, self.t0)
        self.sigma_end = sigma_at(s, 0)
        self.timesteps, self.sigmas = (x.to(self.device) for x in schedule_tables(s))
        self.perceptual = perceptual
        self.perceptual_name = perceptual_name
        # data sampling (PairSampler, CPU) and the step's randomness (on the compute device)
        self.generator = torch.Generator().manual_seed(t.seed * 1000 + self.rank)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(t.seed * 1000 + self.rank + 500_000)
        self.state = TrainState()
        self.data_state = None   # set by train(): the data generator's state to checkpoint (prefetching loaders)
        self.scene_prompts = None   # training.scene_prompts.ScenePrompts when model.embeddings is a folder
        self._wrap_distributed()
        self.step_prompts = None
        self.val_split: str | None = None          # what best.pt is chosen on (set by train(), checkpointed)
        self.loaded_val_split: str | None = None   # ... and what the loaded checkpoint's was chosen on
        self.compile = bool(getattr(t, "compile", False)) if compile is None else bool(compile)
        vae_attention = getattr(t, "vae_attention", None)
        if self.compile or vae_attention is not None:
            self.enable_fast_paths(compile=self.compile, cuda_graphs=bool(getattr(t, "cuda_graphs", False)),
                                   vae_attention=vae_attention)

    def enable_fast_paths(self, compile: bool = True, channels_last: bool | None = None,
                          cuda_graphs: bool = False, vae_attention: str | None = None) -> None:
        """torch.compile / channels_last / cuDNN autotuning on the backbone (same function, faster).
        ``cuda_graphs`` (CUDA, with ``compile``): inductor's CUDA graph trees for the compiled regions, forward
        and backward; :meth:`train_step` marks each step's beginning. ``vae_attention`` (``train.vae_attention``):
        the VAE's attention processor (:func:`~nifi_lib.diffusion.vae_attention.set_vae_attention`; None: as it is)."""
        optimize_backbone(self.bb, compile=compile, channels_last=channels_last, cuda_graphs=cuda_graphs,
                          vae_attention=vae_attention)
        self.compile = self.compile or compile
        for opt in (self.opt_minus, self.opt_plus):   # channels_last LoRA convs: moments in their layout
            _match_state_layout(opt)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host batches go through pinned memory without blocking (a pageable copy syncs the stream)."""
        if x.device == self.device:
            return x
        if self.device.type == "cuda" and x.device.type == "cpu":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    # ---- scores -------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _prompts(self, n: int, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings with the dropped ones replaced by the null prompt (no ``drop.any()`` test:
        that would read the mask back to the host)."""
        if self.step_prompts is not None:   # per-scene captions of this step's batch (scene_prompts.ScenePrompts)
            pe, pp = self.step_prompts
            k = n // pe.shape[0]
            if k > 1:   # the joint real score: the batch twice, in the same order
                pe, pp = pe.repeat(k, 1, 1), pp.repeat(k, 1)
        else:
            pe, pp = self.bb.prompt_batch(n, device=self.device)
        if drop is not None:
            pe, pp = apply_prompt_dropout(drop.to(self.device), pe, pp,
                                          *self.bb.prompt_batch(n, device=self.device, null=True))
        return pe, pp

    def guided_denoise(self, adapter: str | None, z_t: torch.Tensor, sigma: torch.Tensor,
                       timestep: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """s(z_t) = z_t - sigma v_cfg with CFG 7.5 (Eq. 4's s_real with ``adapter=None``, s_restore with the
        critic phi+): conditional (real prompt) and null passes in one batch.

        Prompt dropout belongs to the student only (:meth:`restore_latents`): the teacher and the critic
        always guide with the real prompt, so ``drop`` is ignored here (kept for call compatibility)."""
        del drop
        n = z_t.shape[0]
        pe, pp = self._prompts(n)
        scale = float(self.cfg.model.guidance_scale)
        if scale == 1.0:   # v_u + 1 (v_c - v_u) = v_c: the null pass would not change the result
            with adapter_scope(self.bb.transformer, adapter), self._autocast():
                v = transformer_velocity(self.bb.transformer, z_t, timestep, pe, pp).float()
            return denoised_estimate(z_t, v, sigma)
        npe, npp = self.bb.prompt_batch(n, device=self.device, null=True)
        with adapter_scope(self.bb.transformer, adapter), self._autocast():
            v = transformer_velocity(self.bb.transformer, torch.cat([z_t, z_t]), torch.cat([timestep, timestep]),
                                     torch.cat([npe, pe]), torch.cat([npp, pp]))
        v_u, v_c = v.float().chunk(2)
        v = classifier_free_guidance(v_u, v_c, scale)
        return denoised_estimate(z_t, v, sigma)

    def distribution_matching(self, x_hat: torch.Tensor, x_clean: torch.Tensor, sigma: torch.Tensor,
                              timestep: torch.Tensor, noise: torch.Tensor, drop: torch.Tensor | None = None,
                              normalize: str = "dmd") -> tuple[torch.Tensor, dict]:
        """Eq. 5 (Eq. 4 when alpha = 1): :func:`~.objectives.restoration_distribution_matching_loss` with the
        CFG denoisers of :meth:`guided_denoise`, the real score on ``x^_t`` and ``x_t`` in ONE transformer call
        (``joint_real``), the surrogate's ``"mean"`` reduction (DMD/TSD-SR's scale, commensurate with the
        mean-squared l2 term of Eq. 6) and the diagnostics as device tensors (no sync). Both scores use CFG
        with the real prompt; ``drop`` (the student's prompt dropout) is ignored, as in :meth:`guided_denoise`."""
        del drop
        n = x_hat.shape[0]
        real = lambda z, s: self.guided_denoise(None, z, s, timestep.repeat(z.shape[0] // n))   # noqa: E731
        fake = lambda z, s: self.guided_denoise(CRITIC, z, s, timestep)                          # noqa: E731
        loss, info = restoration_distribution_matching_loss(
            x_hat, x_clean, real, fake, sigma, noise, alpha=float(self.cfg.loss_weights.alpha), normalize=normalize,
            reduction="mean", joint_real=True, sync=False)
        return loss, {"grad_norm": info["grad_norm"], "sigma": info["sigma"]}

    # ---- one step -----------------------------------------------------------------------------
    def restore_latents(self, degraded01: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Eq. 7 with gradients: x^ from the degraded images through E_phi- and eps_{theta,phi-}, by the one
        Eq. 7 path of the restorer (:func:`~nifi_lib.restoration.restorer.encode_degraded` +
        :func:`~nifi_lib.restoration.restorer.restore_latents`) from :func:`~nifi_lib.diffusion.flow.eq7_start`
        of ``diffusion.t0``: Eq. 2 noise at sigma(t0) for t0 < T (the latent sample drawn first, the noise
        second, from the step's generator); at t0 = T (1000, "NiFi w/o t0") the un-noised latent at timestep
        T with sigma 1. The student's prompt carries the dropout ``drop``."""
        bb = self.bb
        start = self.__dict__.get("_eq7_start")
        if start is None or start.t0 != float(self.cfg.diffusion.t0):   # computed once (host-only lookup)
            start = self.__dict__["_eq7_start"] = eq7_start(bb.scheduler, self.cfg.diffusion.t0)
        x = to_model_range(self._to_device(degraded01))
        z = encode_degraded(bb, x, RESTORER, self.noise_generator, autocast=self._autocast)
        return restore_latents(bb, z.float(), start, RESTORER, self.noise_generator,
                               prompts=self._prompts(z.shape[0], drop), autocast=self._autocast).x_hat

    def train_step(self, clean01: torch.Tensor, degraded01: torch.Tensor, scenes: list[str] | None = None) -> dict:
        """One phi- update and one phi+ update. Returns 0-dim device tensors (and the two learning
        rates as floats); nothing here waits for the device. ``skipped`` is a bool tensor: a step whose
        phi- loss or gradient norm is not finite updates neither adapter, one whose critic loss or norm
        is not finite leaves phi+ alone (fused AdamW's ``found_inf``). :func:`info_to_python` converts a
        list of such dicts with one synchronisation."""
        cfg, w = self.cfg, self.cfg.loss_weights
        bb, g, n, dev = self.bb, self.noise_generator, clean01.shape[0], self.device
        mark_step(bb)   # CUDA graphs: the previous step's graph outputs may be reused
        # per-scene prompts (model.embeddings = a folder of per-scene captions), else the one fixed prompt
        self.step_prompts = self.scene_prompts.batch(scenes, device=dev) \
            if self.scene_prompts is not None and scenes is not None else None
        clean01, degraded01 = self._to_device(clean01), self._to_device(degraded01)
        lo, hi = cfg.diffusion.t_min_index, cfg.diffusion.t_max_index + 1
        drop = dropout_mask(n, cfg.model.prompt_dropout, g, dev)   # the student's prompt only
        # ---- phi- update (Eq. 6 with Eq. 5) ----
        def forward_minus():
            with record_function("nifi.step.restore_latents"):
                x_hat = self.restore_latents(degraded01, drop)
            with record_function("nifi.step.encode_clean"), torch.no_grad(), adapter_scope(bb.vae, None), \
                    self._autocast():
                x_clean = encode_latents(bb.vae, to_model_range(clean01), bb.scaling_factor, generator=g).float()
            idx = torch.randint(lo, hi, (n,), generator=g, device=dev)
            sigma, timestep = self.sigmas[idx], self.timesteps[idx]
            noise = torch.randn(x_hat.shape, generator=g, device=dev)
            with record_function("nifi.step.scores"):
                l_kl, dm_info = self.distribution_matching(x_hat, x_clean, sigma, timestep, noise)
            img_hat = img_clean = None
            if w.lpips > 0:
                with record_function("nifi.step.decode"), self._autocast():
                    img_hat = decode_latents(bb.vae, x_hat, bb.scaling_factor).float()
                img_clean = to_model_range(clean01)
            with record_function("nifi.step.loss"):
                total, terms = perceptual_matching_loss(l_kl, x_hat, x_clean, img_hat, img_clean, self.perceptual,
                                                        w_kl=w.kl, w_l2=w.l2, w_lpips=w.lpips)
            return total, terms, x_hat, dm_info

        # past one process through DistributedDataParallel (its backward averages phi-'s gradients)
        total, terms, x_hat, dm_info = self._forward("minus", forward_minus)
        total_ok = torch.isfinite(total.detach())
        self.opt_minus.zero_grad(set_to_none=True)
        with record_function("nifi.step.backward_minus"):
            total.backward()
        with record_function("nifi.step.optim_minus"):
            gn_minus = torch.nn.utils.clip_grad_norm_(self.phi_minus, cfg.train.grad_clip)
            ok_minus = total_ok & torch.isfinite(gn_minus)
            self._masked_step(self.opt_minus, ok_minus)
        # ---- phi+ update (Eq. 8) ----
        x_hat_d = x_hat.detach()
        idx2 = torch.randint(lo, hi, (n,), generator=g, device=dev)
        sigma2 = self.sigmas[idx2]
        noise2 = torch.randn(x_hat.shape, generator=g, device=dev)
        z_t = critic_inputs(x_hat_d, noise2, sigma2)
        pe, pp = self._prompts(n)   # the real prompt: prompt dropout is the student's only

        def forward_plus():
            with record_function("nifi.step.critic_forward"), adapter_scope(bb.transformer, CRITIC), \
                    self._autocast():
                v = transformer_velocity(bb.transformer, z_t, self.timesteps[idx2], pe, pp)
            return critic_loss(v.float(), noise2, x_hat_d)

        l_c = self._forward("plus", forward_plus)
        critic_ok = ok_minus & torch.isfinite(l_c.detach())
        self.opt_plus.zero_grad(set_to_none=True)
        with record_function("nifi.step.critic_backward"):
            l_c.backward()
        with record_function("nifi.step.optim_plus"):
            gn_plus = torch.nn.utils.clip_grad_norm_(self.phi_plus, cfg.train.grad_clip)
            ok_plus = critic_ok & torch.isfinite(gn_plus)
            self._masked_step(self.opt_plus, ok_plus)
        nan = torch.full((), float("nan"), device=dev)
        return {"loss_total": total.detach(), "loss_kl": terms["kl"], "loss_l2": terms["l2"],
                "loss_lpips": terms["lpips"], "loss_critic": l_c.detach(),
                "grad_norm_minus": torch.where(total_ok, gn_minus.detach(), nan),
                "grad_norm_plus": torch.where(critic_ok, gn_plus.detach(), nan),
                "dm_grad_norm": dm_info["grad_norm"], "sigma": dm_info["sigma"],
                "lr_minus": self.opt_minus.param_groups[0]["lr"], "lr_plus": self.opt_plus.param_groups[0]["lr"],
                "skipped": ~ok_plus}

    def _masked_step(self, opt: torch.optim.Optimizer, ok: torch.Tensor) -> None:
        """``opt.step()`` if ``ok`` else nothing (no update, no moment or step-count change), decided on
        the device by the fused kernel; other optimizers fall back to reading the flag."""
        if self._fused:
            _ensure_fused(opt)
            opt.grad_scale = None
            opt.found_inf = (~ok).to(torch.float32)
            try:
                opt.step()
            finally:
                del opt.grad_scale, opt.found_inf
        elif bool(ok):
            opt.step()

    def _forward(self, which: str, fn):
        """``fn()`` (a forward whose loss is backpropagated next); with several processes through the
        DistributedDataParallel wrapper of phi- (``"minus"``) or phi+ (``"plus"``), so that the backward that
        follows all-reduces (averages) that adapter's gradients across ranks (torch's own engine: bucketed,
        overlapped with the backward)."""
        ddp = self._ddp.get(which)
        return fn() if ddp is None else ddp(fn)

    def _wrap_distributed(self) -> None:
        """One DDP wrapper per adapter over the same backbone: DDP reduces the parameters that require grad when
        it is built, so each wrapper is built with only its adapter trainable (then every flag is restored)."""
        self._ddp = {}
        if self.world == 1:
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        holder = _ForwardHolder(self.bb.transformer, self.bb.vae)
        frozen = {id(p): p.requires_grad for m in (self.bb.transformer, self.bb.vae) for p in m.parameters()}
        dev = [self.device.index or 0] if self.device.type == "cuda" else None
        try:
            for which, params, first in (("minus", self.phi_minus, True), ("plus", self.phi_plus, False)):
                keep = {id(p) for p in params}
                for m in (self.bb.transformer, self.bb.vae):
                    for p in m.parameters():
                        p.requires_grad_(id(p) in keep)
                # phi+ is not used in phi-'s forward and the frozen base of either: find_unused_parameters
                self._ddp[which] = DDP(holder, device_ids=dev, find_unused_parameters=True, init_sync=first,
                                       broadcast_buffers=False)
        finally:
            for m in (self.bb.transformer, self.bb.vae):
                for p in m.parameters():
                    p.requires_grad_(frozen[id(p)])

    # ---- checkpoints --------------------------------------------------------------------------
    def adapters_flat(self) -> dict[str, torch.Tensor]:
        out = {}
        for attr, name in (("transformer", RESTORER), ("vae", RESTORER), ("transformer", CRITIC)):
            for k, v in adapter_state_dict(getattr(self.bb, attr), name).items():
                out[f"{attr}.{name}/{k}"] = v.float()
        return out

    def checkpoint(self) -> dict:
        return {"format": TRAIN_FORMAT, "step": self.state.step, "adapters": self.adapters_flat(),
                "optim_minus": self.opt_minus.state_dict(), "optim_plus": self.opt_plus.state_dict(),
                "generator": self.data_state() if self.data_state is not None else self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "noise_generator": self.noise_generator.get_state(), "noise_generator_device": self.device.type,
                "lora_rank": self.cfg.model.lora_rank, "lora_alpha": self.cfg.model.lora_alpha,
                "t0": int(self.cfg.diffusion.t0),   # Eq. 7's start phi- was trained for (1000 = T: "w/o t0")
                # what eval/benchmark/restore use unless told otherwise (restoration.io.checkpoint_settings)
                "restore": restore_settings_of_config(self.cfg.to_dict()),
                "val_split": self.val_split,
                "config": self.cfg.to_dict(),
                "state": {"best_metric": self.state.best_metric, "best_step": self.state.best_step,
                          "skipped_steps": self.state.skipped_steps, "elapsed": self.state.elapsed}}

    def save(self, path: Path) -> None:
        ck = self.checkpoint()
        atomic_save(path, lambda p: torch.save(ck, p))

    def load(self, path: Path) -> None:
        ck = safe_torch_load(path)
        if not isinstance(ck, dict) or ck.get("format") != TRAIN_FORMAT:
            raise TrainingError(f"{path}: not a nifi training checkpoint")
        if ck.get("lora_rank") != self.cfg.model.lora_rank:
            raise TrainingError(f"{path}: checkpoint LoRA rank {ck.get('lora_rank')} != config {self.cfg.model.lora_rank}")
        groups = split_groups(ck["adapters"], str(path))
        for attr, name in (("transformer", RESTORER), ("vae", RESTORER), ("transformer", CRITIC)):
            load_adapter_state_dict(getattr(self.bb, attr), groups.get(f"{attr}.{name}", {}), name,
                                    f"{path} [{attr}.{name}]")
        for p in self.phi_minus + self.phi_plus:
            p.data = p.data.float()
        self.opt_minus.load_state_dict(ck["optim_minus"])
        self.opt_plus.load_state_dict(ck["optim_plus"])
        for opt in (self.opt_minus, self.opt_plus):
            if self._fused:
                _ensure_fused(opt)
            _match_state_layout(opt)
        self.generator.set_state(ck["generator"])
        if "noise_generator" in ck and ck.get("noise_generator_device") == self.device.type:
            self.noise_generator.set_state(ck["noise_generator"])
        torch.set_rng_state(ck["torch_rng"])
        self.loaded_val_split = ck.get("val_split")
        st = ck["state"]
        self.state = TrainState(step=int(ck["step"]), best_metric=float(st["best_metric"]),
                                best_step=int(st["best_step"]), skipped_steps=int(st["skipped_steps"]),
                                elapsed=float(st["elapsed"]))

    # ---- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, sampler: PairSampler, max_images: int, metric_fn) -> float:
        """Mean ``metric_fn(restored, clean)`` over held-out pairs (Eq. 7 inference path, fixed seed)."""
        restorer = Restorer(self.bb, t0=int(self.t0), adapter=RESTORER)
        vals = []
        for i in validation_indices(len(sampler.pairs), max_images):
            clean, deg = sampler.load(i)
            out = restorer.restore(to_model_range(deg[None]).to(self.device), seed=i)
            vals.append(float(metric_fn(((out + 1) / 2).clamp(0, 1).cpu(), clean[None]).mean()))
        return float(sum(vals) / max(len(vals), 1))


def validation_indices(n: int, max_images: int) -> list[int]:
    """The pairs :meth:`NiFiTrainer.validate` scores: ``min(max_images, n)`` evenly spaced of ``n``."""
    k = min(max_images, n)
    return torch.linspace(0, n - 1, k).round().long().tolist() if k > 0 else []


def _ensure_fused(opt: torch.optim.Optimizer) -> None:
    """A state loaded from an older (non-fused) checkpoint: switch the groups to the fused kernel, whose
    step counters are float32 tensors on the parameters' device."""
    for group in opt.param_groups:
        if group.get("fused"):
            continue
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            st = opt.state.get(p)
            if st and "step" in st:
                st["step"] = torch.as_tensor(st["step"]).to(dtype=torch.float32, device=p.device)


def _match_state_layout(opt: torch.optim.Optimizer) -> None:
    """Optimizer moments in their parameter's memory layout (a checkpoint stores them contiguous; the
    VAE's LoRA convs are channels_last on the fast path, and fused AdamW needs equal strides)."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in list(st.items()):
                if torch.is_tensor(v) and v.shape == p.shape and v.dim() > 1 and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def info_to_python(rows: list[dict]) -> list[dict]:
    """Step infos of :meth:`NiFiTrainer.train_step` (0-dim tensors) as python numbers, with ONE
    device-to-host transfer for the whole list; ``skipped`` becomes an int."""
    keys = [(i, k) for i, r in enumerate(rows) for k, v in r.items() if torch.is_tensor(v)]
    out = [dict(r) for r in rows]
    if keys:
        vals = [rows[i][k].detach().float().reshape(()) for i, k in keys]
        if len({v.device for v in vals}) > 1:
            vals = [v.cpu() for v in vals]
        for (i, k), v in zip(keys, torch.stack(vals).cpu().tolist()):
            out[i][k] = int(v) if k == "skipped" else v
    return out


# ---- the run --------------------------------------------------------------------------------------
def _read_log(path: Path) -> list[dict]:
    """Complete rows of ``train_log.csv``. A row torn by a kill or a full disk in the middle of an append
    (no final newline, missing fields, or a step that is not an integer) is dropped, not kept as a bogus row."""
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]   # the last line was never finished
    rows = []
    for r in csv.DictReader(io.StringIO(text, newline="")):
        if None in r or any(v is None for v in r.values()):
            continue
        try:
            int(r["step"])
        except (KeyError, TypeError, ValueError):
            continue
        rows.append(r)
    return rows


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    wr.writeheader()
    wr.writerows(rows)
    with atomic_path(path, suffix=".csv") as tmp:
        tmp.write_text(buf.getvalue())


def _append_log(path: Path, rows: list[dict]) -> None:
    """Durable append (flush + fsync). A failure (e.g. a full disk) raises :class:`WriteError` naming the log;
    rows that reached the file only partly are dropped by :func:`_read_log` on ``--resume``."""
    new = not path.is_file()
    try:
        with open(path, "a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
            if new:
                wr.writeheader()
            wr.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"{path}: cannot append {len(rows)} log rows ({e.strerror or e}); the checkpoints "
                         "are unchanged and `--resume` continues from the last one") from e


def build_perceptual(cfg: Config, device) -> tuple[object, str, dict]:
    """LPIPS with real weights; if unavailable, the configured weight-free fallback or a clear error."""
    from ..metrics import metrics

    if cfg.loss_weights.lpips == 0:
        return None, "none (loss_weights.lpips = 0)", {}
    try:
        fn = metrics.lpips_loss_module(net=cfg.eval.lpips_net, device=device)
        return fn, f"lpips-{cfg.eval.lpips_net}", {}
    except NifiError as e:
        fb = cfg.loss_weights.perceptual_fallback
        if fb is None:
            raise TrainingError(f"{e}\nLPIPS needs real trunk weights (see `nifi weights status`); or set "
                                "loss_weights.perceptual_fallback: ms_ssim in the config to train without them.") from e
        return metrics.ms_ssim_loss_module(device=device), fb, {"perceptual_fallback": fb, "reason": str(e)}


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def check_schedule(cfg: Config, scheduler) -> None:
    """``diffusion.shift`` and ``diffusion.num_train_timesteps`` state the schedule the config's t0 and timestep
    ranges refer to; the backbone's scheduler (it travels with the model) must be that schedule."""
    d, sc = cfg.diffusion, scheduler.config
    got = (int(sc.num_train_timesteps), float(sc.shift))
    if got != (int(d.num_train_timesteps), float(d.shift)):
        raise TrainingError(f"the backbone's scheduler has num_train_timesteps {got[0]}, shift {got[1]:g}, but the config "
                            f"says diffusion.num_train_timesteps {d.num_train_timesteps}, diffusion.shift {d.shift:g} "
                            "(t0 and t_min_index/t_max_index refer to that table): fix the config or the backbone")


def train(cfg: Config, data_root: str | Path, exp: str | Path, smoke_test: bool = False, resume: bool = False,
          device: str | None = None, progress: bool = True, val_split: str = "train_holdout",
          stop_after: int | None = None) -> dict:
    """Run (or resume) training; returns the summary dict also written to ``train_summary.json``.

    Checkpoint selection (``best.pt``, on ``train.best_metric``) never sees the test split, which
    eval/benchmark score once at the end. ``val_split="train_holdout"`` (default): every
    ``train.val_holdout_every``-th view of each scene's train split, all its rates, is held out of the
    gradient steps and validated on (:func:`~.data.holdout_views`); another split name (e.g. held-out scenes
    in a ``val`` split) validates on that split. ``"test"`` (and ``"train"``) raise :class:`TrainingError`.
    The summary records ``val_split``, ``val_holdout_every`` and ``validation_images``."""
    if val_split in ("test", "train"):
        raise TrainingError(f"val_split='{val_split}': checkpoint selection must not use the "
                            + ("test split (it is scored once, at the end, by eval/benchmark)" if val_split == "test"
                               else "training pairs of the gradient steps")
                            + "; use 'train_holdout' (held-out train views) or a separate held-out split")
    rank, world = init_distributed()
    device = default_device(device)
    exp = repo_path(exp)
    data_root = repo_path(data_root)
    if smoke_test:   # a copy: the caller's config stays as it was
        cfg = copy.deepcopy(cfg)
        t = cfg.train
        t.max_steps, t.save_every, t.val_every, t.val_max_images = min(t.max_steps, 4), 2, 4, 2
    t = cfg.train
    if t.batch_size % world:
        raise TrainingError(f"train.batch_size {t.batch_size} must be divisible by the {world} processes")
    pairs = find_pairs(data_root, "train")
    holdout_every = int(getattr(t, "val_holdout_every", 8))
    if val_split == "train_holdout":   # validation views leave the gradient-step sampler
        try:
            pairs, val_pairs = holdout_views(pairs, every=holdout_every)
        except PairError as e:
            raise TrainingError(str(e)) from e
    else:
        try:
            val_pairs = find_pairs(data_root, val_split)
        except NifiError as e:
            raise TrainingError(f"val_split='{val_split}': {e}") from e
    if smoke_test:
        pairs = pairs[:8]
    embeddings = training_embeddings(cfg, data_root, exp, device=device)   # computed once if null + text encoders
    if embeddings and not cfg.model.embeddings:   # recorded in the checkpoints' restore settings (a copy: the
        cfg = copy.deepcopy(cfg)                   # caller's config stays as it was)
        cfg.model.embeddings = embeddings
    scene_prompts = ScenePrompts(embeddings) if embeddings and Path(embeddings).is_dir() else None
    bb = load_backbone(resolve_model_ref(cfg.model.backbone), kind=cfg.model.backbone_kind,
                       embeddings=None if scene_prompts is not None else embeddings,
                       device=device, dtype="bf16" if (device.startswith("cuda") and cfg.model.dtype == "bf16") else "fp32")
    if scene_prompts is not None:   # validation and inference use the default prompt, as the authors' restorer
        bb.prompt, bb.null_prompt = scene_prompts.default, scene_prompts.null
    if bb.prompt is None or bb.null_prompt is None:
        raise TrainingError("training needs the prompt and null-prompt embeddings (model.embeddings .npz with "
                            "negative_prompt_embeds), for prompt dropout and CFG")
    perceptual, perceptual_name, fallback = build_perceptual(cfg, device)
    cache_file = repo_path(t.compile_cache) if (t.compile and t.compile_cache) else None
    compile_cache: dict = {"path": str(cache_file) if cache_file else None, "loaded": None, "saved_bytes": None}
    if cache_file is not None and cache_file.is_file():   # before anything compiles (issue 18: warm first step)
        compile_cache["loaded"] = load_compile_cache(cache_file)
    trainer = NiFiTrainer(cfg, bb, device=device, perceptual=perceptual, perceptual_name=perceptual_name)
    trainer.val_split = val_split
    trainer.scene_prompts = scene_prompts
    exp.mkdir(parents=True, exist_ok=True)
    latest, best, log_path = exp / "latest.pt", exp / "best.pt", exp / "train_log.csv"
    if resume:
        if not latest.is_file():
            raise TrainingError(f"{latest}: nothing to resume from")
        trainer.load(latest)
        if trainer.loaded_val_split != val_split:
            # the best so far was chosen on another split (an older run: the test split): start selection anew
            trainer.state.best_metric, trainer.state.best_step = math.inf, -1
            if rank == 0 and best.exists():
                best.unlink()
        rows = [r for r in _read_log(log_path) if int(r["step"]) <= trainer.state.step]
        if rank == 0:
            _write_log(log_path, rows)  # drop rows written after the last checkpoint: no duplicates
    elif rank == 0:
        for stale in (log_path, best):   # a fresh run's best.pt comes from this run's validation only
            if stale.exists():
                stale.unlink()
    sampler = PairSampler(pairs, resolution=t.resolution, cache_mb=t.cache_mb)
    val_sampler = PairSampler(val_pairs, resolution=None, cache_mb=t.cache_mb) if val_pairs else None
    from ..metrics import metrics as M

    metric_fn = {"lpips": lambda a, b: M.lpips(a, b, net=cfg.eval.lpips_net), "dists": M.dists,
                 "psnr": lambda a, b: -M.psnr(a, b), "ssim": lambda a, b: -M.ssim(a, b)}.get(t.best_metric)
    per_rank = t.batch_size // world
    pending: list[dict] = []     # rows whose values are still device tensors (converted once per interval)
    start = time.time() - trainer.state.elapsed
    bar = tqdm(total=t.max_steps, initial=trainer.state.step, desc="nifi train", disable=not progress or rank != 0)
    last_good_saved = trainer.state.step

    def flush() -> list[dict]:
        """Materialise the pending rows (one sync), count skipped steps, update the progress bar."""
        nonlocal pending
        rows, pending = info_to_python(pending), []
        trainer.state.skipped_steps += sum(int(r["skipped"]) for r in rows)
        if rows:
            bar.set_postfix(loss=f"{rows[-1]['loss_total']:.4f}", critic=f"{rows[-1]['loss_critic']:.4f}")
        return rows

    batches = BatchLoader(sampler, per_rank, trainer.generator, num_workers=t.num_workers,
                          pin_memory=trainer.device.type == "cuda")
    trainer.data_state = batches.generator_state   # checkpoints: the state after the batches trained on
    stopped = None               # why the loop ended before max_steps (train.max_seconds)
    while trainer.state.step < t.max_steps:
        clean, deg = batches.next()
        info = trainer.train_step(clean, deg, scenes=batches.last_scenes())
        if t.nan_policy == "stop" and bool(info["skipped"]):   # this policy reads the flag every step
            raise TrainingError(f"non-finite loss at step {trainer.state.step + 1}; stopped. "
                                f"{latest} holds the last good state (step {last_good_saved}).")
        trainer.state.step += 1
        trainer.state.elapsed = time.time() - start   # host time; exact at each flush (which waits)
        row = {"step": trainer.state.step, **info, "wall_time": round(trainer.state.elapsed, 2)}
        pending.append(row)
        bar.update(1)
        step = trainer.state.step
        timed_out = out_of_time(trainer.state.elapsed, t.max_seconds, world)
        last = step == t.max_steps or timed_out
        if val_sampler is not None and metric_fn is not None and (step % t.val_every == 0 or last):
            metric = trainer.validate(val_sampler, t.val_max_images, metric_fn)
            row["val_" + t.best_metric] = metric
            trainer.state.history.append({"step": step, t.best_metric: metric})
            if metric < trainer.state.best_metric and rank == 0:
                trainer.state.best_metric, trainer.state.best_step = metric, step
                trainer.save(best)
        if step % t.save_every == 0 or last:
            rows = flush()
            if rank == 0:
                _append_log(log_path, rows)
                trainer.save(latest)
            last_good_saved = step
        if cache_file is not None and rank == 0 and step == min(CACHE_SAVE_STEP, t.max_steps):
            compile_cache["saved_bytes"] = save_compile_cache(cache_file)   # the compiled step, for the next run
        if stop_after is not None and step >= stop_after:
            break
        if timed_out:
            stopped = f"train.max_seconds {t.max_seconds} reached after step {step}"
            break
    flush()
    if cache_file is not None and rank == 0 and trainer.state.step > CACHE_SAVE_STEP:
        compile_cache["saved_bytes"] = save_compile_cache(cache_file)   # + validation's graphs
    bar.close()
    if rank == 0 and not best.exists() and latest.exists():
        atomic_save(best, lambda p: p.write_bytes(latest.read_bytes()))
    summary = {
        "config": cfg.to_dict(), "config_source": cfg.source,
        "val_split": val_split, "val_holdout_every": holdout_every if val_split == "train_holdout" else None,
        # the held-out views (never in a gradient step) and the pairs each validation actually scores
        "heldout_views": sorted({f"{p.dataset}/{p.scene}/{p.name}" for p in val_pairs}),
        "validation_images": [_rel(val_pairs[i].clean, data_root)
                              for i in validation_indices(len(val_pairs), t.val_max_images)],
        "data": {"data_root": str(data_root), "train_pairs": len(pairs), "val_pairs": len(val_pairs),
                 "scenes": sorted({f"{p.dataset}/{p.scene}" for p in pairs}),
                 "rates": sorted({p.rate for p in pairs})},
        "steps": trainer.state.step, "skipped_steps": trainer.state.skipped_steps, "stopped_early": stopped,
        "best_metric": {"name": t.best_metric, "value": trainer.state.best_metric if math.isfinite(trainer.state.best_metric) else None,
                        "step": trainer.state.best_step},
        "validation": trainer.state.history,
        "seconds": round(trainer.state.elapsed, 1), "device": str(device), "world_size": world,
        "weights": {"backbone": bb.source, "backbone_kind": bb.kind, "perceptual": perceptual_name, **fallback},
        "smoke_test": smoke_test, "compile_cache": compile_cache,
    }
    if rank == 0:
        atomic_write_json(exp / "train_summary.json", summary)
    return summary

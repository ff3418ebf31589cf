"""The NiFi trainer (``nifi train``, the seed's ``train_nifi.py``).

Each step (Sec. 3, "Training alternates one phi- update and one phi+ update"):
1. phi- step (Eq. 6): the restorer maps the degraded latent x~ = E_phi-(I~) through Eq. 7 to x^; the
   loss is the distribution-matching surrogate of Eq. 4/5 (s_real: frozen base, s_restore: base + phi+,
   both with CFG) + l2(x, x^) + LPIPS(D(x^), I);
2. phi+ step (Eq. 8): the critic's flow-matching loss on the detached x^.
AdamW (lr 5e-6 / 1e-6, weight decay 1e-4), grad-norm clip 1.0, prompt dropout, bf16 autocast on CUDA
with fp32 adapter master weights. Outputs (the seed's): ``runs/<exp>/latest.pt``, ``best.pt``,
``train_log.csv``, ``train_summary.json``. Data parallel over ``torch.distributed`` when launched with
torchrun (gloo on CPU, NCCL on GPUs): gradients of the adapters are averaged across ranks.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import Config
from ..diffusion.backbone import Backbone, load_backbone
from ..diffusion.flow import classifier_free_guidance, forward_noise, one_step_restore, schedule_tables, sigma_at
from ..errors import NifiError
from ..io.atomic import atomic_path, atomic_save, atomic_write_json
from ..paths import repo_path
from ..restoration.io import TRAIN_FORMAT, safe_torch_load, split_groups
from ..restoration.lora import (CRITIC, RESTORER, active_adapter, adapter_parameters, adapter_state_dict,
                                add_critic_adapter, add_restorer_adapters, load_adapter_state_dict)
from ..restoration.restorer import Restorer, decode_latents, encode_latents, to_model_range, transformer_velocity
from .data import PairSampler, find_pairs
from .objectives import critic_inputs, critic_loss, perceptual_matching_loss, restoration_distribution_matching_loss

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


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return _world()


class NiFiTrainer:
    """Holds the frozen backbone with phi- and phi+, their optimizers and the training state."""

    def __init__(self, cfg: Config, backbone: Backbone, device: str = "cpu", perceptual=None,
                 perceptual_name: str = "lpips"):
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
        if t.gradient_checkpointing:
            backbone.transformer.enable_gradient_checkpointing()
        self.opt_minus = torch.optim.AdamW(self.phi_minus, lr=t.lr_phi_minus, weight_decay=t.weight_decay)
        self.opt_plus = torch.optim.AdamW(self.phi_plus, lr=t.lr_phi_plus, weight_decay=t.weight_decay)
        s = backbone.scheduler
        self.t0 = float(cfg.diffusion.t0)
        self.sigma_t0 = sigma_at(s, self.t0)
        self.sigma_end = sigma_at(s, 0)
        self.timesteps, self.sigmas = schedule_tables(s)
        self.perceptual = perceptual
        self.perceptual_name = perceptual_name
        self.generator = torch.Generator().manual_seed(t.seed * 1000 + self.rank)
        self.state = TrainState()

    # ---- scores -------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _prompts(self, n: int, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pe, pp = self.bb.prompt_batch(n, device=self.device)
        if drop is not None and drop.any():
            npe, npp = self.bb.prompt_batch(n, device=self.device, null=True)
            d = drop.to(self.device)
            pe = torch.where(d[:, None, None], npe, pe)
            pp = torch.where(d[:, None], npp, pp)
        return pe, pp

    def guided_denoise(self, adapter: str | None, z_t: torch.Tensor, sigma: torch.Tensor,
                       timestep: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """s(z_t) = z_t - sigma v_cfg with CFG 7.5: conditional and null passes in one batch."""
        n = z_t.shape[0]
        pe, pp = self._prompts(n, drop)
        npe, npp = self.bb.prompt_batch(n, device=self.device, null=True)
        with active_adapter(self.bb.transformer, adapter), self._autocast():
            v = transformer_velocity(self.bb.transformer, torch.cat([z_t, z_t]), torch.cat([timestep, timestep]),
                                     torch.cat([npe, pe]), torch.cat([npp, pp]))
        v_u, v_c = v.float().chunk(2)
        v = classifier_free_guidance(v_u, v_c, self.cfg.model.guidance_scale)
        return z_t - sigma.view(-1, 1, 1, 1) * v

    # ---- one step -----------------------------------------------------------------------------
    def restore_latents(self, degraded01: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Eq. 7 with gradients: x^ from the degraded images through E_phi- and eps_{theta,phi-}."""
        bb = self.bb
        x = to_model_range(degraded01.to(self.device))
        with active_adapter(bb.vae, RESTORER), self._autocast():
            z = encode_latents(bb.vae, x, bb.scaling_factor, generator=None)
        noise = torch.randn(z.shape, generator=self.generator).to(self.device)
        x_t0 = forward_noise(z.float(), noise, self.sigma_t0)                               # Eq. 2
        pe, pp = self._prompts(z.shape[0], drop)
        with active_adapter(bb.transformer, RESTORER), self._autocast():
            v = transformer_velocity(bb.transformer, x_t0, self.t0, pe, pp)
        return one_step_restore(x_t0, v.float(), self.sigma_t0, self.sigma_end)             # Eq. 7

    def train_step(self, clean01: torch.Tensor, degraded01: torch.Tensor) -> dict:
        cfg, w = self.cfg, self.cfg.loss_weights
        bb, g, n = self.bb, self.generator, clean01.shape[0]
        drop = torch.rand(n, generator=g) < cfg.model.prompt_dropout
        # ---- phi- update (Eq. 6 with Eq. 5) ----
        x_hat = self.restore_latents(degraded01, drop)
        with torch.no_grad(), active_adapter(bb.vae, None), self._autocast():
            x_clean = encode_latents(bb.vae, to_model_range(clean01.to(self.device)), bb.scaling_factor,
                                     generator=None).float()
        idx = torch.randint(cfg.diffusion.t_min_index, cfg.diffusion.t_max_index + 1, (n,), generator=g)
        sigma = self.sigmas[idx].to(self.device)
        timestep = self.timesteps[idx].to(self.device)
        noise = torch.randn(x_hat.shape, generator=g).to(self.device)
        real = lambda z, s: self.guided_denoise(None, z, sigma, timestep, drop)      # noqa: E731
        fake = lambda z, s: self.guided_denoise(CRITIC, z, sigma, timestep, drop)    # noqa: E731
        l_kl, dm_info = restoration_distribution_matching_loss(x_hat, x_clean, real, fake, sigma, noise,
                                                               alpha=w.alpha, normalize="dmd")
        img_hat = img_clean = None
        if w.lpips > 0:
            with self._autocast():
                img_hat = decode_latents(bb.vae, x_hat, bb.scaling_factor).float()
            img_clean = to_model_range(clean01.to(self.device))
        total, terms = perceptual_matching_loss(l_kl, x_hat, x_clean, img_hat, img_clean, self.perceptual,
                                                w_kl=w.kl, w_l2=w.l2, w_lpips=w.lpips)
        finite = bool(torch.isfinite(total))
        self.opt_minus.zero_grad(set_to_none=True)
        gn_minus = float("nan")
        if finite:
            total.backward()
            self._all_reduce(self.phi_minus)
            gn_minus = float(torch.nn.utils.clip_grad_norm_(self.phi_minus, cfg.train.grad_clip))
            finite = math.isfinite(gn_minus)
        if finite:
            self.opt_minus.step()
        # ---- phi+ update (Eq. 8) ----
        x_hat_d = x_hat.detach()
        idx2 = torch.randint(cfg.diffusion.t_min_index, cfg.diffusion.t_max_index + 1, (n,), generator=g)
        sigma2 = self.sigmas[idx2].to(self.device)
        noise2 = torch.randn(x_hat.shape, generator=g).to(self.device)
        z_t = critic_inputs(x_hat_d, noise2, sigma2)
        pe, pp = self._prompts(n, drop)
        with active_adapter(bb.transformer, CRITIC), self._autocast():
            v = transformer_velocity(bb.transformer, z_t, self.timesteps[idx2].to(self.device), pe, pp)
        l_c = critic_loss(v.float(), noise2, x_hat_d)
        self.opt_plus.zero_grad(set_to_none=True)
        gn_plus = float("nan")
        finite_c = bool(torch.isfinite(l_c)) and finite
        if finite_c:
            l_c.backward()
            self._all_reduce(self.phi_plus)
            gn_plus = float(torch.nn.utils.clip_grad_norm_(self.phi_plus, cfg.train.grad_clip))
            finite_c = math.isfinite(gn_plus)
            if finite_c:
                self.opt_plus.step()
        skipped = not (finite and finite_c)
        return {"loss_total": float(total.detach()), "loss_kl": float(terms["kl"]), "loss_l2": float(terms["l2"]),
                "loss_lpips": float(terms["lpips"]), "loss_critic": float(l_c.detach()),
                "grad_norm_minus": gn_minus, "grad_norm_plus": gn_plus, "dm_grad_norm": dm_info["grad_norm"],
                "sigma": dm_info["sigma"], "lr_minus": self.opt_minus.param_groups[0]["lr"],
                "lr_plus": self.opt_plus.param_groups[0]["lr"], "skipped": int(skipped)}

    def _all_reduce(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients across ranks (DDP semantics for the adapters, the only trainable weights)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([gr.reshape(-1) for gr in grads])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for p in params:
            k = p.numel()
            p.grad = flat[off:off + k].view_as(p).clone()
            off += k

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
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "lora_rank": self.cfg.model.lora_rank, "lora_alpha": self.cfg.model.lora_alpha,
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
        self.generator.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
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
        k = min(max_images, len(sampler.pairs))
        for i in torch.linspace(0, len(sampler.pairs) - 1, k).round().long().tolist():
            clean, deg = sampler.load(i)
            out = restorer.restore(to_model_range(deg[None]).to(self.device), seed=i)
            vals.append(float(metric_fn(((out + 1) / 2).clamp(0, 1).cpu(), clean[None]).mean()))
        return float(sum(vals) / max(len(vals), 1))


# ---- the run --------------------------------------------------------------------------------------
def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    wr.writeheader()
    wr.writerows(rows)
    with atomic_path(path, suffix=".csv") as tmp:
        tmp.write_text(buf.getvalue())


def _append_log(path: Path, rows: list[dict]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            wr.writeheader()
        wr.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def build_perceptual(cfg: Config, device) -> tuple[object, str, dict]:
    """LPIPS with real weights; if unavailable, the configured weight-free fallback or a clear error."""
    from ..evaluation import metrics

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


def train(cfg: Config, data_root: str | Path, exp: str | Path, smoke_test: bool = False, resume: bool = False,
          device: str | None = None, progress: bool = True, val_split: str = "test",
          stop_after: int | None = None) -> dict:
    """Run (or resume) training; returns the summary dict also written to ``train_summary.json``."""
    rank, world = init_distributed()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    exp = repo_path(exp)
    data_root = repo_path(data_root)
    t = cfg.train
    if smoke_test:
        t.max_steps, t.save_every, t.val_every, t.val_max_images = min(t.max_steps, 4), 2, 4, 2
    if t.batch_size % world:
        raise TrainingError(f"train.batch_size {t.batch_size} must be divisible by the {world} processes")
    pairs = find_pairs(data_root, "train")
    try:
        val_pairs = find_pairs(data_root, val_split)
    except NifiError:
        val_pairs = []
    if smoke_test:
        pairs = pairs[:8]
    bb = load_backbone(str(repo_path(cfg.model.backbone)) if repo_path(cfg.model.backbone).exists()
                       else cfg.model.backbone, kind=cfg.model.backbone_kind,
                       embeddings=repo_path(cfg.model.embeddings) if cfg.model.embeddings else None,
                       device=device, dtype="bf16" if (device.startswith("cuda") and cfg.model.dtype == "bf16") else "fp32")
    if bb.prompt is None or bb.null_prompt is None:
        raise TrainingError("training needs the prompt and null-prompt embeddings (model.embeddings .npz with "
                            "negative_prompt_embeds), for prompt dropout and CFG")
    perceptual, perceptual_name, fallback = build_perceptual(cfg, device)
    trainer = NiFiTrainer(cfg, bb, device=device, perceptual=perceptual, perceptual_name=perceptual_name)
    exp.mkdir(parents=True, exist_ok=True)
    latest, best, log_path = exp / "latest.pt", exp / "best.pt", exp / "train_log.csv"
    if resume:
        if not latest.is_file():
            raise TrainingError(f"{latest}: nothing to resume from")
        trainer.load(latest)
        rows = [r for r in _read_log(log_path) if int(r["step"]) <= trainer.state.step]
        if rank == 0:
            _write_log(log_path, rows)  # drop rows written after the last checkpoint: no duplicates
    elif rank == 0:
        if log_path.exists():
            log_path.unlink()
    sampler = PairSampler(pairs, resolution=t.resolution)
    val_sampler = PairSampler(val_pairs, resolution=None) if val_pairs else None
    from ..evaluation import metrics as M

    metric_fn = {"lpips": lambda a, b: M.lpips(a, b, net=cfg.eval.lpips_net), "dists": M.dists,
                 "psnr": lambda a, b: -M.psnr(a, b), "ssim": lambda a, b: -M.ssim(a, b)}.get(t.best_metric)
    per_rank = t.batch_size // world
    pending: list[dict] = []
    start = time.time() - trainer.state.elapsed
    bar = tqdm(total=t.max_steps, initial=trainer.state.step, desc="nifi train", disable=not progress or rank != 0)
    last_good_saved = trainer.state.step
    while trainer.state.step < t.max_steps:
        clean, deg, _ = sampler.sample(per_rank, trainer.generator)
        info = trainer.train_step(clean, deg)
        if info["skipped"]:
            trainer.state.skipped_steps += 1
            if t.nan_policy == "stop":
                raise TrainingError(f"non-finite loss at step {trainer.state.step + 1}; stopped. "
                                    f"{latest} holds the last good state (step {last_good_saved}).")
        trainer.state.step += 1
        trainer.state.elapsed = time.time() - start
        row = {"step": trainer.state.step, **info, "wall_time": round(trainer.state.elapsed, 2)}
        pending.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{info['loss_total']:.4f}", critic=f"{info['loss_critic']:.4f}")
        step = trainer.state.step
        if val_sampler is not None and metric_fn is not None and (step % t.val_every == 0 or step == t.max_steps):
            metric = trainer.validate(val_sampler, t.val_max_images, metric_fn)
            row["val_" + t.best_metric] = metric
            trainer.state.history.append({"step": step, t.best_metric: metric})
            if metric < trainer.state.best_metric and rank == 0:
                trainer.state.best_metric, trainer.state.best_step = metric, step
                trainer.save(best)
        if rank == 0 and (step % t.save_every == 0 or step == t.max_steps):
            _append_log(log_path, pending)
            pending = []
            trainer.save(latest)
            last_good_saved = step
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    if rank == 0 and not best.exists() and latest.exists():
        atomic_save(best, lambda p: p.write_bytes(latest.read_bytes()))
    summary = {
        "config": cfg.to_dict(), "config_source": cfg.source,
        "data": {"data_root": str(data_root), "train_pairs": len(pairs), "val_pairs": len(val_pairs),
                 "scenes": sorted({f"{p.dataset}/{p.scene}" for p in pairs}),
                 "rates": sorted({p.rate for p in pairs})},
        "steps": trainer.state.step, "skipped_steps": trainer.state.skipped_steps,
        "best_metric": {"name": t.best_metric, "value": trainer.state.best_metric if math.isfinite(trainer.state.best_metric) else None,
                        "step": trainer.state.best_step},
        "validation": trainer.state.history,
        "seconds": round(trainer.state.elapsed, 1), "device": str(device), "world_size": world,
        "weights": {"backbone": bb.source, "backbone_kind": bb.kind, "perceptual": perceptual_name, **fallback},
        "smoke_test": smoke_test,
    }
    if rank == 0:
        atomic_write_json(exp / "train_summary.json", summary)
    return summary

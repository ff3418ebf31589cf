"""The embedded backbone's prior (``nifi prior train``): NiFi distils from a pretrained LDM; offline there is
none, so the embedded default pretrains a tiny one of the same classes as SD3:

1. a small ``AutoencoderKL`` (E, D) on the embedded clean images (L1 + MSE reconstruction + a small KL);
   its ``scaling_factor`` is then set to 1 / std of the latents, as SD3's is;
2. a small ``SD3Transformer2DModel`` trained with the rectified-flow objective (Eq. 2 with target
   velocity ``eps - x``) on those latents, conditioned on one fixed prompt embedding, which is replaced
   by the null embedding with probability ``prompt_dropout`` so that classifier-free guidance means
   something; timesteps from SD3's logit-normal density with the shift of the scheduler.

Paper mode uses SD3-medium instead and skips this step.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import NifiError
from ..image_quality import psnr_from_mse
from ..io.atomic import atomic_write_json
from ..io.images import list_images, load_image
from .backbone import Backbone, build_tiny_backbone
from .flow import forward_noise
from .prompts import apply_prompt_dropout, dropout_mask
from .latents import encode_latents, transformer_velocity


class PriorError(NifiError):
    pass


@dataclass
class PriorConfig:
    resolution: int = 64
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    vae_lpips_weight: float = 0.5   # LPIPS (real AlexNet weights) in the VAE loss; 0 disables it
    transformer_steps: int = 2500
    transformer_batch: int = 32
    transformer_lr: float = 4e-4
    prompt_dropout: float = 0.1
    shift: float = 3.0
    seed: int = 0


def collect_images(sources: list[str | Path], resolution: int) -> torch.Tensor:
    """Every image of ``sources`` (image files or folders of images) as ``(N, 3, R, R)`` in [0, 1]
    (center-cropped, resized)."""
    imgs = []
    files = []
    for src in sources:
        files += list_images(src) if Path(src).is_dir() else [Path(src)]
    for f in files:
        img = load_image(f)
        h, w = img.shape[-2:]
        s = min(h, w)
        img = img[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        if s != resolution:
            img = F.interpolate(img[None], size=(resolution, resolution), mode="bilinear",
                                antialias=True, align_corners=False)[0]
        imgs.append(img)
    if not imgs:
        raise PriorError(f"no training images found in {[str(f) for f in sources]}")
    return torch.stack(imgs)


def augment(batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (scenes have a floor, so no rotations)."""
    flip = torch.rand(batch.shape[0], generator=g) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def train_vae(bb: Backbone, images: torch.Tensor, cfg: PriorConfig, progress: bool = True) -> list[dict]:
    """Stage 1: reconstruction training of the VAE; sets ``scaling_factor`` = 1 / std(latents)."""
    g = torch.Generator().manual_seed(cfg.seed)
    perceptual = None
    if cfg.vae_lpips_weight > 0:
        from ..metrics.metrics import lpips_loss_module

        perceptual = lpips_loss_module("alex")  # raises a clear error when no real weights can be had
    vae = bb.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.vae_steps, eta_min=cfg.vae_lr * 0.05)
    history = []
    for step in tqdm(range(cfg.vae_steps), desc="prior: vae", disable=not progress):
        idx = torch.randint(0, images.shape[0], (cfg.vae_batch,), generator=g)
        x = augment(images[idx], g) * 2 - 1
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator=g)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        kl = dist.kl().mean() / x[0].numel()
        loss = l1 + mse + cfg.kl_weight * kl * x[0].numel()
        if perceptual is not None:
            loss = loss + cfg.vae_lpips_weight * perceptual(rec, x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == cfg.vae_steps - 1:
            psnr = psnr_from_mse(F.mse_loss((rec + 1) / 2, (x + 1) / 2).item(), min_mse=1e-10)
            history.append({"step": step, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr})
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 64] * 2 - 1).latent_dist.sample(generator=g)
                         for i in range(0, images.shape[0], 64)])
    vae.register_to_config(scaling_factor=float(1.0 / lat.flatten().std()))
    return history


def sample_sigmas(n: int, shift: float, g: torch.Generator) -> torch.Tensor:
    """SD3's training density: logit-normal u, then the scheduler's shift sigma = s u / (1 + (s - 1) u)."""
    u = torch.sigmoid(torch.randn(n, generator=g))
    return shift * u / (1 + (shift - 1) * u)


def train_flow_transformer(bb: Backbone, images: torch.Tensor, cfg: PriorConfig, progress: bool = True) -> list[dict]:
    """Stage 2: rectified-flow training of the transformer on the frozen VAE's latents (Eq. 2)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    tr = bb.transformer.train().requires_grad_(True)
    opt = torch.optim.AdamW(tr.parameters(), lr=cfg.transformer_lr, weight_decay=1e-4)
    warm = max(cfg.transformer_steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / cfg.transformer_steps))))
    history = []
    for step in tqdm(range(cfg.transformer_steps), desc="prior: flow transformer", disable=not progress):
        idx = torch.randint(0, images.shape[0], (cfg.transformer_batch,), generator=g)
        with torch.no_grad():
            x0 = encode_latents(bb.vae, augment(images[idx], g) * 2 - 1, bb.scaling_factor, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        sigma = sample_sigmas(x0.shape[0], cfg.shift, g)
        x_t = forward_noise(x0, eps, sigma)
        drop = dropout_mask(x0.shape[0], cfg.prompt_dropout, g)
        pe, pp = apply_prompt_dropout(drop, *bb.prompt_batch(x0.shape[0]), *bb.prompt_batch(x0.shape[0], null=True))
        v = transformer_velocity(tr, x_t, sigma * 1000.0, pe, pp)
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == cfg.transformer_steps - 1:
            history.append({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0]})
    tr.eval().requires_grad_(False)
    return history


def train_prior(image_sources: list[str | Path], out_dir: str | Path, cfg: PriorConfig | None = None,
                progress: bool = True) -> Backbone:
    """Train both stages and save the backbone (diffusers layout + prompt embeddings + log) to ``out_dir``."""
    cfg = cfg or PriorConfig()
    torch.manual_seed(cfg.seed)
    images = collect_images(image_sources, cfg.resolution)
    bb = build_tiny_backbone(seed=cfg.seed, shift=cfg.shift)
    t0 = time.time()
    vae_hist = train_vae(bb, images, cfg, progress)
    t1 = time.time()
    tr_hist = train_flow_transformer(bb, images, cfg, progress)
    t2 = time.time()
    info = {"config": asdict(cfg), "num_images": int(images.shape[0]),
            "num_sources": len(image_sources), "vae_seconds": round(t1 - t0, 1),
            "transformer_seconds": round(t2 - t1, 1), "scaling_factor": bb.scaling_factor,
            "final_vae_psnr": vae_hist[-1]["psnr"], "final_flow_loss": tr_hist[-1]["loss"]}
    bb.info = info
    out_dir = Path(out_dir)
    bb.save_pretrained(out_dir, info=info, storage_dtype=torch.float16)  # < 5 MB in git
    atomic_write_json(out_dir / "prior_log.json", {"vae": vae_hist, "transformer": tr_hist, "info": info})
    return bb.freeze()


def load_prior_log(folder: str | Path) -> dict:
    path = Path(folder) / "prior_log.json"
    if not path.is_file():
        raise PriorError(f"{path}: no training log (train the prior with `nifi prior train`)")
    return json.loads(path.read_text())


@torch.no_grad()
def sample_images(bb: Backbone, n: int = 8, steps: int = 28, guidance_scale: float = 7.5, seed: int = 0,
                  resolution: int | None = None) -> torch.Tensor:
    """Text-free samples from the prior (Euler, Eq. 3, with CFG), images in [0, 1]."""
    from .flow import classifier_free_guidance, euler_step

    res = resolution or bb.vae.config.sample_size
    lat = res // bb.vae_scale_factor
    g = torch.Generator().manual_seed(seed)
    c = bb.transformer.config.in_channels
    dev, dt = bb.device, next(bb.transformer.parameters()).dtype
    z = torch.randn(n, c, lat, lat, generator=g).to(device=dev, dtype=dt)   # drawn on the CPU: same noise anywhere
    sh = bb.scheduler.config.shift
    ts = torch.linspace(1.0, 0.0, steps + 1)
    sig = sh * ts / (1 + (sh - 1) * ts)
    pe, pp = bb.prompt_batch(n, device=dev, dtype=dt)
    npe, npp = bb.prompt_batch(n, device=dev, dtype=dt, null=True)
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist()):
        v_c = transformer_velocity(bb.transformer, z, s * 1000, pe, pp)
        v_u = transformer_velocity(bb.transformer, z, s * 1000, npe, npp)
        v = classifier_free_guidance(v_u, v_c, guidance_scale)
        z = euler_step(z, v, s, s_next)                                                # Eq. 3
    z = z.to(next(bb.vae.parameters()).dtype)
    return ((bb.vae.decode(z / bb.scaling_factor).sample.float().cpu() + 1) / 2).clamp(0, 1)

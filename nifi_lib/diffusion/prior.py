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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import NifiError
from ..devices import default_device
from ..image_quality import psnr_from_mse
from ..io.atomic import atomic_write_json
from ..io.images import list_images, load_image
from .backbone import TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG, Backbone, build_tiny_backbone
from .flow import forward_noise
from .prompts import apply_prompt_dropout, dropout_mask
from .latents import encode_latents, transformer_velocity
from .vae_adversarial import (PatchDiscriminator, adaptive_adversarial_weight, generator_adversarial_loss,
                              hinge_discriminator_loss)


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
    # the adversarial patch term of latent-diffusion autoencoders (.vae_adversarial); 0 disables it
    vae_gan_weight: float = 0.0
    vae_gan_start: int = 0                                   # VAE step from which the term and D's training run
    vae_disc_lr: float = 1e-4
    vae_disc_channels: int = 64
    vae_disc_layers: int = 3
    vae_train_encoder: bool = True                           # False: decoder-only (the latent space, the scaling
                                                             # factor and a prior trained on it stay valid)
    transformer_steps: int = 2500
    transformer_batch: int = 32
    transformer_lr: float = 4e-4
    prompt_dropout: float = 0.1
    shift: float = 3.0
    seed: int = 0
    # architecture (defaults: the shipped data/embedded/backbone, i.e. TINY_VAE_CONFIG / TINY_TRANSFORMER_CONFIG)
    vae_block_out_channels: tuple[int, ...] = (32, 64, 64)   # one down/up block each; factor 2^(len - 1)
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 16
    vae_norm_num_groups: int = 16
    transformer_layers: int = 4
    transformer_heads: int = 4
    transformer_head_dim: int = 32                           # width = heads x head_dim (= caption projection)
    transformer_patch_size: int = 2
    joint_attention_dim: int = 64                            # the prompt embedding's width
    pooled_projection_dim: int = 32
    pos_embed_max_size: int = 48                             # >= resolution / vae factor / patch size
    # how it runs and is stored
    cache_latents: bool = False                              # stage 2 samples from cached posteriors (no encoder pass a step)
    amp: str = "no"                                          # "bf16": autocast on CUDA (the GPU run)
    vae_storage_dtype: str = "fp32"                          # dtype of the shipped weight files
    transformer_storage_dtype: str = "fp16"
    vae_max_seconds: float | None = None                     # wall-clock cap of a stage (stops early, logged)
    transformer_max_seconds: float | None = None


STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_prior_config(path: str | Path, **overrides) -> PriorConfig:
    """A :class:`PriorConfig` from a flat YAML file (``configs/prior_v3.yaml``); unknown keys are an error;
    ``overrides`` (not None) win over the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PriorError(f"{path}: prior config not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise PriorError(f"{path}: expected a mapping of PriorConfig fields")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(PriorConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PriorError(f"{path}: unknown prior config keys {unknown}; known: {sorted(known)}")
    if "vae_block_out_channels" in data:
        data["vae_block_out_channels"] = tuple(int(c) for c in data["vae_block_out_channels"])
    for key in ("vae_storage_dtype", "transformer_storage_dtype"):
        if key in data and data[key] not in STORAGE_DTYPES:
            raise PriorError(f"{path}: {key} must be one of {list(STORAGE_DTYPES)}")
    if data.get("amp", "no") not in ("no", "bf16"):
        raise PriorError(f"{path}: amp must be 'no' or 'bf16'")
    return PriorConfig(**data)


def vae_config(cfg: PriorConfig) -> dict:
    """The ``AutoencoderKL`` kwargs of ``cfg`` (defaults: exactly ``TINY_VAE_CONFIG``)."""
    n = len(cfg.vae_block_out_channels)
    return {**TINY_VAE_CONFIG, "latent_channels": cfg.vae_latent_channels,
            "down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": tuple(cfg.vae_block_out_channels), "layers_per_block": cfg.vae_layers_per_block,
            "norm_num_groups": cfg.vae_norm_num_groups, "sample_size": cfg.resolution}


def transformer_config(cfg: PriorConfig) -> dict:
    """The ``SD3Transformer2DModel`` kwargs of ``cfg`` (defaults: exactly ``TINY_TRANSFORMER_CONFIG``)."""
    factor = 2 ** (len(cfg.vae_block_out_channels) - 1)
    tokens = cfg.resolution // factor // cfg.transformer_patch_size
    if tokens > cfg.pos_embed_max_size:
        raise PriorError(f"pos_embed_max_size {cfg.pos_embed_max_size} < {tokens} tokens per side at "
                         f"{cfg.resolution} px")
    return {**TINY_TRANSFORMER_CONFIG, "sample_size": cfg.resolution // factor,
            "patch_size": cfg.transformer_patch_size, "in_channels": cfg.vae_latent_channels,
            "out_channels": cfg.vae_latent_channels, "num_layers": cfg.transformer_layers,
            "attention_head_dim": cfg.transformer_head_dim, "num_attention_heads": cfg.transformer_heads,
            "joint_attention_dim": cfg.joint_attention_dim, "caption_projection_dim": cfg.transformer_heads * cfg.transformer_head_dim,
            "pooled_projection_dim": cfg.pooled_projection_dim, "pos_embed_max_size": cfg.pos_embed_max_size}


def build_prior_backbone(cfg: PriorConfig) -> Backbone:
    """The randomly initialised backbone ``train_prior`` starts from."""
    return build_tiny_backbone(seed=cfg.seed, vae_config=vae_config(cfg), transformer_config=transformer_config(cfg),
                               shift=cfg.shift)


def parameter_counts(bb: Backbone) -> dict:
    """Parameters of the VAE and the transformer."""
    return {"vae": sum(p.numel() for p in bb.vae.parameters()),
            "transformer": sum(p.numel() for p in bb.transformer.parameters())}


def _autocast(cfg: PriorConfig, device: torch.device):
    enabled = cfg.amp == "bf16" and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


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
    """Random horizontal flips (scenes have a floor, so no rotations); the draw is on the CPU generator."""
    flip = (torch.rand(batch.shape[0], generator=g) < 0.5).to(batch.device)
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def _out_of_time(t_start: float, budget: float | None) -> bool:
    return budget is not None and time.time() - t_start > budget


def train_vae(bb: Backbone, images: torch.Tensor, cfg: PriorConfig, progress: bool = True,
              device: str | torch.device = "cpu") -> list[dict]:
    """Stage 1: reconstruction training of the VAE (L1 + MSE + KL, LPIPS with ``vae_lpips_weight``, the adversarial
    patch term of :mod:`.vae_adversarial` with ``vae_gan_weight``); sets ``scaling_factor`` = 1 / std(latents),
    unless ``vae_train_encoder`` is False (decoder-only: the encoder, its latents and their scale stay as they are).

    Random draws come from CPU generators (so a run's indices and noise are the same on any device)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed)
    perceptual = disc = opt_d = None
    if cfg.vae_gan_weight > 0:
        with torch.random.fork_rng(devices=[]):   # D's initialisation from the seed, the caller's RNG untouched
            torch.manual_seed(cfg.seed)
            disc = PatchDiscriminator(channels=cfg.vae_disc_channels, layers=cfg.vae_disc_layers)
        disc = disc.to(device).train()
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.vae_disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
    if cfg.vae_lpips_weight > 0:
        from ..metrics.metrics import lpips_loss_module

        perceptual = lpips_loss_module("alex").to(device)  # raises a clear error when no real weights can be had
    images = images.to(device)
    vae = bb.vae.to(device).train().requires_grad_(True)
    if not cfg.vae_train_encoder:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.vae_steps, eta_min=cfg.vae_lr * 0.05)
    history = []
    t_start = time.time()
    for step in tqdm(range(cfg.vae_steps), desc="prior: vae", disable=not progress):
        idx = torch.randint(0, images.shape[0], (cfg.vae_batch,), generator=g).to(device)
        x = augment(images[idx], g) * 2 - 1
        with _autocast(cfg, device):
            with torch.set_grad_enabled(cfg.vae_train_encoder):
                dist = vae.encode(x).latent_dist
            z = dist.sample(generator=g)
            rec = vae.decode(z).sample.float()
            kl = dist.kl().float().mean() / x[0].numel()
            lp = perceptual(rec, x).mean() if perceptual is not None else None
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        loss = l1 + mse + cfg.kl_weight * kl * x[0].numel()
        if lp is not None:
            loss = loss + cfg.vae_lpips_weight * lp
        adv = None
        if disc is not None and step >= cfg.vae_gan_start:
            with _autocast(cfg, device):
                adv = generator_adversarial_loss(disc(rec).float())
            adv_weight = adaptive_adversarial_weight(loss, adv, vae.decoder.conv_out.weight)
            loss = loss + cfg.vae_gan_weight * adv_weight * adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        d_loss = None
        if adv is not None:
            with _autocast(cfg, device):
                d_loss = hinge_discriminator_loss(disc(x).float(), disc(rec.detach()).float())
            opt_d.zero_grad(set_to_none=True)   # also drops what the decoder's adversarial loss left in D
            d_loss.backward()
            opt_d.step()
        last = step == cfg.vae_steps - 1 or _out_of_time(t_start, cfg.vae_max_seconds)
        if step % 10 == 0 or last:
            psnr = psnr_from_mse(F.mse_loss((rec.detach() + 1) / 2, (x + 1) / 2).item(), min_mse=1e-10)
            history.append({"step": step, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr,
                            "seconds": round(time.time() - t_start, 2),
                            **({"adv": adv.item(), "adv_weight": float(adv_weight), "d_loss": d_loss.item()}
                               if adv is not None else {})})
        if last:
            break
    vae.eval().requires_grad_(False)
    if not cfg.vae_train_encoder:   # the latents are unchanged: so is the scale a prior was trained with
        return history
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 64] * 2 - 1).latent_dist.sample(generator=g)
                         for i in range(0, images.shape[0], 64)])
    vae.register_to_config(scaling_factor=float(1.0 / lat.flatten().std()))
    return history


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor, batch: int = 32) -> float:
    """Mean PSNR (dB) of ``images`` (N, 3, H, W) in [0, 1] through the VAE (posterior mode, no sampling)."""
    dev = next(vae.parameters()).device
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].to(dev)
        rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample.float() + 1) / 2).clamp(0, 1)
        out += [psnr_from_mse(F.mse_loss(r, c).item(), min_mse=1e-10) for r, c in zip(rec, x)]
    return float(sum(out) / len(out))


def sample_sigmas(n: int, shift: float, g: torch.Generator) -> torch.Tensor:
    """SD3's training density: logit-normal u, then the scheduler's shift sigma = s u / (1 + (s - 1) u)."""
    u = torch.sigmoid(torch.randn(n, generator=g))
    return shift * u / (1 + (shift - 1) * u)


def train_flow_transformer(bb: Backbone, images: torch.Tensor, cfg: PriorConfig, progress: bool = True,
                           device: str | torch.device = "cpu") -> list[dict]:
    """Stage 2: rectified-flow training of the transformer on the frozen VAE's latents (Eq. 2)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    images = images.to(device)
    bb.vae.to(device)
    tr = bb.transformer.to(device).train().requires_grad_(True)
    cache = posterior_cache(bb.vae, images) if cfg.cache_latents else None
    opt = torch.optim.AdamW(tr.parameters(), lr=cfg.transformer_lr, weight_decay=1e-4)
    warm = max(cfg.transformer_steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / cfg.transformer_steps))))
    history = []
    t_start = time.time()
    for step in tqdm(range(cfg.transformer_steps), desc="prior: flow transformer", disable=not progress):
        idx = torch.randint(0, images.shape[0], (cfg.transformer_batch,), generator=g).to(device)
        if cache is not None:
            flip = (torch.rand(idx.shape[0], generator=g) < 0.5).to(device).long()
            mean, std = cache[0][flip, idx], cache[1][flip, idx]
            x0 = (mean + std * torch.randn(mean.shape, generator=g).to(device)) * bb.scaling_factor
        else:
            with torch.no_grad(), _autocast(cfg, device):
                x0 = encode_latents(bb.vae, augment(images[idx], g) * 2 - 1, bb.scaling_factor, generator=g).float()
        eps = torch.randn(x0.shape, generator=g).to(device)
        sigma = sample_sigmas(x0.shape[0], cfg.shift, g).to(device)
        x_t = forward_noise(x0, eps, sigma)
        drop = dropout_mask(x0.shape[0], cfg.prompt_dropout, g).to(device)
        pe, pp = apply_prompt_dropout(drop, *bb.prompt_batch(x0.shape[0], device=device),
                                      *bb.prompt_batch(x0.shape[0], device=device, null=True))
        with _autocast(cfg, device):
            v = transformer_velocity(tr, x_t, sigma * 1000.0, pe, pp).float()
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        sched.step()
        last = step == cfg.transformer_steps - 1 or _out_of_time(t_start, cfg.transformer_max_seconds)
        if step % 10 == 0 or last:
            history.append({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                            "seconds": round(time.time() - t_start, 2)})
        if last:
            break
    tr.eval().requires_grad_(False)
    return history


@torch.no_grad()
def posterior_cache(vae, images: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std of every image and of its mirror: two ``(2, N, C, h, w)`` tensors
    (index 0: as is, 1: flipped), so stage 2 draws latents without an encoder pass a step."""
    means, stds = [], []
    for view in (images, images.flip(-1)):
        m, s = [], []
        for i in range(0, view.shape[0], batch):
            dist = vae.encode(view[i:i + batch] * 2 - 1).latent_dist
            m.append(dist.mean.float())
            s.append(dist.std.float())
        means.append(torch.cat(m))
        stds.append(torch.cat(s))
    return torch.stack(means), torch.stack(stds)


def train_prior(image_sources: list[str | Path], out_dir: str | Path, cfg: PriorConfig | None = None,
                progress: bool = True, device: str | torch.device | None = None,
                heldout_sources: list[str | Path] | None = None) -> Backbone:
    """Train both stages and save the backbone (diffusers layout + prompt embeddings + log) to ``out_dir``.

    ``heldout_sources``: images the prior never sees (test views, a held-out scene); their VAE reconstruction
    PSNR is recorded as ``heldout_vae_psnr``. The saved weights use ``cfg``'s storage dtypes."""
    cfg = cfg or PriorConfig()
    device = torch.device(device or default_device())
    torch.manual_seed(cfg.seed)
    images = collect_images(image_sources, cfg.resolution)
    bb = build_prior_backbone(cfg)
    t0 = time.time()
    vae_hist = train_vae(bb, images, cfg, progress, device)
    t1 = time.time()
    tr_hist = train_flow_transformer(bb, images, cfg, progress, device)
    t2 = time.time()
    info = {"config": asdict(cfg), "num_images": int(images.shape[0]),
            "num_sources": len(image_sources), "vae_seconds": round(t1 - t0, 1),
            "transformer_seconds": round(t2 - t1, 1), "scaling_factor": bb.scaling_factor,
            "final_vae_psnr": vae_hist[-1]["psnr"], "final_flow_loss": tr_hist[-1]["loss"]}
    info.update({"device": str(device), "parameters": parameter_counts(bb),
                 "vae_steps_done": vae_hist[-1]["step"] + 1, "transformer_steps_done": tr_hist[-1]["step"] + 1})
    if heldout_sources:
        info["heldout_vae_psnr"] = reconstruction_psnr(bb.vae, collect_images(heldout_sources, cfg.resolution))
        info["num_heldout_images"] = len(heldout_sources)
    bb.vae.cpu()
    bb.transformer.cpu()
    bb.info = info
    out_dir = Path(out_dir)
    bb.save_pretrained(out_dir, info=info, storage_dtype=STORAGE_DTYPES[cfg.transformer_storage_dtype],
                       vae_storage_dtype=STORAGE_DTYPES[cfg.vae_storage_dtype])
    atomic_write_json(out_dir / "prior_log.json", {"vae": vae_hist, "transformer": tr_hist, "info": info})
    return bb.freeze()


def finetune_decoder(prior_dir: str | Path, image_sources: list[str | Path], out_dir: str | Path,
                     cfg: PriorConfig | None = None, progress: bool = True, device: str | torch.device | None = None,
                     heldout_sources: list[str | Path] | None = None) -> Backbone:
    """A decoder-only VAE fine-tune of the prior in ``prior_dir`` (``cfg``'s VAE settings, e.g. the adversarial
    term ``vae_gan_weight``; ``vae_train_encoder`` is forced off), saved as a new backbone in ``out_dir``.

    The encoder, the scaling factor, the transformer and the prompt embeddings are copied unchanged, so the
    flow prior and every NiFi checkpoint trained on ``prior_dir`` (phi- adapts the encoder and the transformer,
    never the decoder) restore through the new decoder as they are. ``prior_log.json`` keeps the source's log and
    adds ``decoder_finetune`` (the steps, and the held-out VAE PSNR before and after when ``heldout_sources``)."""
    from dataclasses import replace

    from .backbone import load_backbone

    cfg = replace(cfg or PriorConfig(), vae_train_encoder=False)
    prior_dir, out_dir = Path(prior_dir), Path(out_dir)
    if out_dir.resolve() == prior_dir.resolve():
        raise PriorError(f"{out_dir}: write the fine-tuned prior to a new folder, not over its source")
    device = torch.device(device or default_device())
    bb = load_backbone(str(prior_dir), kind="embedded")   # frozen; train_vae unfreezes what it trains
    source_log = load_prior_log(prior_dir) if (prior_dir / "prior_log.json").is_file() else {}
    images = collect_images(image_sources, cfg.resolution)
    held = collect_images(heldout_sources, cfg.resolution) if heldout_sources else None
    before = reconstruction_psnr(bb.vae, held) if held is not None else None
    t0 = time.time()
    hist = train_vae(bb, images, cfg, progress, device)
    bb.vae.cpu()
    run = {"source": str(prior_dir), "config": asdict(cfg), "num_images": int(images.shape[0]),
           "steps_done": hist[-1]["step"] + 1, "seconds": round(time.time() - t0, 1), "device": str(device)}
    if held is not None:
        run.update(heldout_vae_psnr_before=before, heldout_vae_psnr=reconstruction_psnr(bb.vae, held),
                   num_heldout_images=int(held.shape[0]))
    info = {**(bb.info or {}), "decoder_finetune": run}
    info.pop("kind", None)
    bb.info = info
    bb.save_pretrained(out_dir, info=info, storage_dtype=STORAGE_DTYPES[cfg.transformer_storage_dtype],
                       vae_storage_dtype=STORAGE_DTYPES[cfg.vae_storage_dtype])
    atomic_write_json(out_dir / "prior_log.json", {**source_log, "info": info, "decoder_finetune": hist})
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

"""A deliberately plain re-implementation of the authors' inference (PAPER.md), for ``nifi verify``.

It uses only diffusers/peft calls and the global torch RNG, in the authors' order (``torch.manual_seed``,
latent sample, ``randn_like`` noise), so that :class:`~nifi_lib.restoration.restorer.Restorer` can be
checked against it on a tiny random backbone with a random LoRA checkpoint.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict

from .lora import TRANSFORMER_TARGETS, vae_encoder_targets


@torch.no_grad()
def authors_reference_restore(bb, ckpt_path: str | Path, image: torch.Tensor, seed: int, t0: int = 199) -> torch.Tensor:
    """Eq. 7 as the authors' script does it, on backbone ``bb`` (adapters are added here)."""
    vae, transformer = bb.vae, bb.transformer
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    rank = next(v.shape[0] for k, v in ck["transformer"].items() if k.endswith("lora_A.weight"))
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=TRANSFORMER_TARGETS), adapter_name="default")
    vae.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                               target_modules=vae_encoder_targets(vae)), adapter_name="default")
    set_peft_model_state_dict(transformer, ck["transformer"], adapter_name="default")
    set_peft_model_state_dict(vae, ck["vae"], adapter_name="default")
    h, w = image.shape[-2:]
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    x = F.pad(image, (0, (-w) % f, 0, (-h) % f), mode="reflect")
    torch.manual_seed(seed)
    latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
    p = transformer.config.patch_size
    latents = F.pad(latents, (0, (-latents.shape[-1]) % p, 0, (-latents.shape[-2]) % p), mode="reflect")
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ts, sig = sched.timesteps.numpy(), sched.sigmas.numpy()
    sigma, sigma_end = float(sig[np.argmin(np.abs(ts - t0))]), float(sig[np.argmin(np.abs(ts - 0))])
    noise = torch.randn_like(latents)
    x_t0 = sigma * noise + (1 - sigma) * latents
    v = transformer(hidden_states=x_t0, encoder_hidden_states=bb.prompt.prompt_embeds,
                    pooled_projections=bb.prompt.pooled_prompt_embeds, timestep=torch.tensor([float(t0)]),
                    return_dict=False)[0]
    out = vae.decode((x_t0 - (sigma - sigma_end) * v) / vae.config.scaling_factor).sample
    return out[..., :h, :w].clamp(-1, 1)


def check_eq7():
    """``nifi verify`` row: Restorer vs the reference on a tiny random backbone and random LoRA."""
    from ..diffusion.backbone import build_tiny_backbone
    from ..verify import CheckResult
    from .checkpoint import save_authors_checkpoint
    from .io import load_restorer_weights
    from .lora import RESTORER, add_restorer_adapters
    from .restorer import Restorer

    vae_cfg = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
                   norm_num_groups=4, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609)
    tr_cfg = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
                  pos_embed_max_size=32)
    make = lambda: build_tiny_backbone(seed=0, vae_config=vae_cfg, transformer_config=tr_cfg).freeze()  # noqa: E731
    src = make()
    add_restorer_adapters(src, rank=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in (src.transformer, src.vae):
            for n, prm in m.named_parameters():
                if "lora_" in n:
                    prm.copy_(torch.randn(prm.shape, generator=g) * 0.05)
    image = torch.rand(1, 3, 37, 45, generator=g) * 2 - 1
    with tempfile.TemporaryDirectory() as d:
        ck = Path(d) / "r.ckpt"
        save_authors_checkpoint(ck, src)
        ref = authors_reference_restore(make(), ck, image, seed=7)
        bb = make()
        load_restorer_weights(ck, bb)
        out = Restorer(bb, adapter=RESTORER).restore(image, seed=7)
    err = float((out - ref).abs().max())
    return CheckResult("Eq. 7", "restoration.restorer.Restorer.restore",
                       "equals a plain re-implementation of the authors' inference (fp32, 37x45 input)",
                       err < 1e-5, f"max abs difference {err:.2e}")

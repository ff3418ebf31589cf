"""The adversarial term of a latent-diffusion autoencoder, for the embedded prior's VAE (issue 17).

Not part of NiFi itself: SD3's VAE arrives pretrained. The embedded default trains its own small VAE
(:mod:`.prior`), and one trained on L1 + MSE + LPIPS alone decodes blurred images: the clean view through the v3
VAE keeps 0.38 of its high-frequency energy (docs/embedded_assets.md, GPU run 3), and every diffusion method of the
notebooks decodes through that frozen decoder. Latent-diffusion autoencoders add a patch discriminator for that
reason (Esser et al. 2021, "Taming Transformers", Sec. 3.1; Rombach et al. 2022, Sec. 3 and App. G):

    L_VAE = L_rec + lambda * L_adv,   L_adv = -E[D(x_hat)],
    lambda = ||grad_w L_rec|| / (||grad_w L_adv|| + 1e-4)   (w: the decoder's last layer),

and the discriminator D minimises the hinge loss 1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """The N-layer patch discriminator of pix2pix / taming: strided 4x4 convolutions, one logit per patch
    (``(N, 1, h, w)``); GroupNorm instead of BatchNorm so that a batch of any size behaves the same."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3, norm_groups: int = 16):
        super().__init__()
        if layers < 1 or channels < 1:
            raise ValueError(f"a patch discriminator needs layers >= 1 and channels >= 1, got {layers}, {channels}")
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            nxt = channels * min(2 ** i, 8)
            mods += [nn.Conv2d(width, nxt, 4, 2 if i < layers else 1, 1, bias=False),
                     nn.GroupNorm(min(norm_groups, nxt), nxt), nn.LeakyReLU(0.2)]
            width = nxt
        mods.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: ``1/2 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial loss ``L_adv = -mean D(x_hat)``."""
    return -fake_logits.mean()


def adaptive_adversarial_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                                max_weight: float = 1e4) -> torch.Tensor:
    """``lambda = ||grad_w L_rec|| / (||grad_w L_adv|| + 1e-4)`` at the decoder's last layer ``w``, clamped to
    ``[0, max_weight]`` and detached: the adversarial gradient is scaled to the size of the reconstruction one."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.float().norm() / (g_adv.float().norm() + 1e-4)).clamp(0.0, max_weight).detach()

"""Figures for the prior notebook (02): training curves, reconstructions, samples."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .restoration_plots import to_display
from .style import PANEL_INCH


def plot_prior_curves(log: dict):
    """VAE reconstruction PSNR and flow-matching loss against the step (from ``prior_log.json``)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    vae, tr = log["vae"], log["transformer"]
    axes[0].plot([r["step"] for r in vae], [r["psnr"] for r in vae])
    axes[0].set(xlabel="step", ylabel="PSNR (dB)", title="stage 1: VAE reconstruction")
    steps = np.array([r["step"] for r in tr])
    loss = np.array([r["loss"] for r in tr])
    axes[1].plot(steps, loss, alpha=0.35, label="batch loss")
    k = max(len(loss) // 25, 1)
    if len(loss) > k:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        axes[1].plot(steps[k - 1:], smooth, label=f"moving mean ({k})")
    axes[1].set(xlabel="step", ylabel="MSE(v, eps - x)", title="stage 2: rectified-flow loss (Eq. 2)")
    axes[1].legend()
    fig.tight_layout()
    return fig


def image_rows(rows: list[tuple[str, torch.Tensor]], ncols: int | None = None):
    """One row per (label, batch of images in [0, 1] or [-1, 1])."""
    ncols = ncols or max(r[1].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * PANEL_INCH * 0.6, len(rows) * PANEL_INCH * 0.62),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c < imgs.shape[0]:
                ax.imshow(to_display(imgs[c]), interpolation="nearest")
        axes[r, 0].set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    return fig

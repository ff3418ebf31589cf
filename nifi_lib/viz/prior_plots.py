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


def plot_guidance_probe(probe, paper_scale: float = 7.5):
    """The CFG probe (:func:`nifi_lib.evaluation.guidance.guidance_probe`): the guided velocity's error to the
    flow target per noise level for each scale (left), and the error of the denoised estimate averaged over
    the teacher's timestep range against the scale (right; the chosen scale marked)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for s in probe.scales:
        axes[0].plot(probe.sigmas, probe.mse[s], marker="o", ms=3, label=f"w = {s:g}",
                     lw=2.0 if s in (probe.best, paper_scale) else 1.0)
    axes[0].set(xlabel="noise level sigma", ylabel="MSE(v_cfg, eps - x)",
                title="guided velocity vs the flow target")
    axes[0].legend(fontsize=7, ncol=2)
    xs = list(probe.scales)
    axes[1].plot(xs, [probe.mean_denoised[s] for s in xs], marker="o")
    axes[1].axvline(probe.best, ls="--", color="C2", label=f"lowest error: w = {probe.best:g}")
    axes[1].axvline(paper_scale, ls=":", color="gray", label=f"paper (SD3): w = {paper_scale:g}")
    axes[1].set(xlabel="CFG scale w", ylabel="mean sigma^2 MSE (denoised estimate)",
                title=f"score error over the teacher's t range ({probe.n_images} views)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def format_guidance_probe(probe, configured: float | None = None, config_name: str = "the config") -> str:
    """The CFG probe as text: the mean denoised-estimate error per scale and the scale with the lowest one
    (beside the ``configured`` scale when given)."""
    lines = [f"w = {row['scale']:>4g}: mean denoised-estimate MSE {row['mean_denoised_mse']:.4f}" for row in probe.table()]
    best = f"lowest error at w = {probe.best:g}"
    lines.append(best if configured is None else f"{best}; {config_name} uses w = {configured:g}")
    return "\n".join(lines)

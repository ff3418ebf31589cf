"""Figures for the restoration notebook (03): the sigma schedule and Eq. 7 at several t0."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..config import DEFAULT_T0
from ..diffusion.flow import make_scheduler, schedule_tables, sigma_at
from .style import PANEL_INCH


def to_display(img: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [-1, 1] or [0, 1] (detected) -> ``(H, W, 3)`` float array in [0, 1]."""
    img = img.detach().float().cpu()
    if img.min() < -0.01:
        img = (img + 1) / 2
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


def plot_sigma_schedule(shifts=(1.0, 3.0), t0: int = DEFAULT_T0, num_train_timesteps: int = 1000):
    """sigma(t) of the flow scheduler for each shift, with t0 and its sigma marked (Eq. 2, Eq. 7)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for sh in shifts:
        s = make_scheduler(num_train_timesteps, sh)
        ts, sig = schedule_tables(s)
        ax.plot(ts.numpy(), sig.numpy(), label=f"shift {sh:g}")
        st = sigma_at(s, t0)
        ax.scatter([t0], [st], zorder=3)
        ax.annotate(f"t0={t0}: sigma={st:.3f}", (t0, st), textcoords="offset points", xytext=(8, -12))
    ax.set_xlabel("timestep t")
    ax.set_ylabel("sigma_t")
    ax.set_title("Flow-matching noise schedule")
    ax.legend()
    return fig


def plot_projection_grid(image: torch.Tensor, traces: list[dict]):
    """Rows: t0 values. Columns: input, x~_t0 decoded (Eq. 2), one-step restoration (Eq. 7)."""
    n = len(traces)
    fig, axes = plt.subplots(n, 3, figsize=(3 * PANEL_INCH, n * PANEL_INCH), squeeze=False)
    for r, tr in enumerate(traces):
        panels = [(image, "input I~"), (tr["projected"][0], f"x~_t0 decoded (t0={tr['t0']:.0f}, sigma={tr['sigma_t0']:.2f})"),
                  (tr["restored"][0], "one step (Eq. 7)")]
        for c, (img, title) in enumerate(panels):
            axes[r, c].imshow(to_display(img), interpolation="nearest")
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    return fig


def format_trace_distances(traces: list[dict], distances: dict[str, float]) -> str:
    """One line per trace (t0, sigma(t0), mean |restored - input|) and the VAE round trip alone, from
    :func:`nifi_lib.experiments.latent_checks.trace_distances`."""
    from ..experiments.latent_checks import L1_KEY, VAE_L1_KEY

    lines = [f"t0={tr['t0']:>5.0f}  sigma={tr['sigma_t0']:.3f}  mean |restored - input| = "
             f"{distances[L1_KEY.format(t0=int(tr['t0']))]:.4f}" for tr in traces]
    return "\n".join(lines + [f"VAE reconstruction alone: {distances[VAE_L1_KEY]:.4f}"])

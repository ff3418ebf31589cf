"""Figures for the training notebook (05): loss curves, before/after grids per rate, a run's summary as text."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .restoration_plots import to_display
from .style import PANEL_INCH


def read_train_log(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if len(y) < k or k < 2:
        return y
    pad = np.concatenate([np.full(k - 1, y[0]), y])
    return np.convolve(pad, np.ones(k) / k, mode="valid")


def plot_training_log(log: dict[str, np.ndarray], validation: list[dict] | None = None, metric: str = "lpips"):
    """Eq. 6 terms, the critic's Eq. 8 loss, gradient norms, and the validation metric."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3))
    s = log["step"]
    k = max(len(s) // 20, 1)
    for key, label in (("loss_kl", "L_KL (Eq. 4/5 surrogate)"), ("loss_l2", "l2(x, x^)"), ("loss_lpips", "LPIPS(D(x^), I)")):
        if key in log and np.isfinite(log[key]).any():
            axes[0].plot(s, _smooth(log[key], k), label=label)
    axes[0].set(title="phi- loss terms (Eq. 6)", xlabel="step")
    axes[0].legend(fontsize=7)
    axes[1].plot(s, _smooth(log["loss_critic"], k), color="#9467bd")
    axes[1].set(title="critic phi+ loss (Eq. 8)", xlabel="step")
    axes[2].plot(s, log["grad_norm_minus"], label="phi-", alpha=0.7)
    axes[2].plot(s, log["grad_norm_plus"], label="phi+", alpha=0.7)
    axes[2].set(title="gradient norms (before clipping)", xlabel="step", yscale="log")
    axes[2].legend(fontsize=7)
    if validation:
        axes[3].plot([v["step"] for v in validation], [v[metric] for v in validation], marker="o")
    axes[3].set(title=f"validation {metric} (held-out views)", xlabel="step")
    fig.tight_layout()
    return fig


def plot_run_comparison(runs: dict[str, tuple[dict[str, np.ndarray], list[dict] | None]], metric: str = "lpips"):
    """Several runs of one config on one step axis: the phi- objective (Eq. 6, smoothed over a twentieth of the
    longest run) and the validation metric. Notebook 05: the short CPU run it trains beside the long run it ships."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    k = max(max(len(log["step"]) for log, _ in runs.values()) // 20, 1)
    for name, (log, validation) in runs.items():
        line, = axes[0].plot(log["step"], _smooth(log["loss_total"], min(k, max(len(log["step"]) // 5, 1))),
                             label=name)
        if validation:
            axes[1].plot([v["step"] for v in validation], [v[metric] for v in validation], marker="o",
                         color=line.get_color(), label=name)
    axes[0].set(title="phi- objective (Eq. 6), smoothed", xlabel="step")
    axes[1].set(title=f"validation {metric} (held-out views)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def before_after_grid(rows: list[dict], columns: tuple[str, ...] = ("degraded", "base", "nifi", "clean"),
                      titles: dict[str, str] | None = None, crop_frac: float | None = None):
    """One row per example (dicts of column -> image (3, H, W)), one column per method. ``crop_frac``: show
    only the centred square of that fraction of the shorter side (:meth:`~nifi_lib.viz.compare.CropBox.centered`)."""
    titles = titles or {}
    if crop_frac is not None:
        rows = [{k: _center_crop(v, crop_frac) if torch.is_tensor(v) else v for k, v in r.items()} for r in rows]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(len(columns) * PANEL_INCH * 0.75,
                                                               len(rows) * PANEL_INCH * 0.8), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(to_display(row[col]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles.get(col, col), fontsize=8)
            if c == 0 and "label" in row:
                ax.set_ylabel(row["label"], fontsize=7)
    fig.tight_layout()
    return fig


def _center_crop(img: torch.Tensor, frac: float) -> torch.Tensor:
    from .compare import CropBox

    ys, xs = CropBox.centered(img.shape[-1], img.shape[-2], frac).slices()
    return img[..., ys, xs]


def format_train_summary(summary: dict, name: str | None = None) -> str:
    """A run's ``train_summary.json`` in two lines: steps, time, t0 and perceptual term; the best validation
    metric, its step and the held-out training views it was chosen on."""
    best, data = summary["best_metric"], summary.get("data", {})
    t0 = (summary.get("config") or {}).get("diffusion", {}).get("t0")
    value = f"{best['value']:.4f}" if best.get("value") is not None else "n/a"
    return (f"{name + ': ' if name else ''}{summary['steps']} steps in {summary['seconds']:.0f} s (t0 = {t0}, perceptual "
            f"term: {summary.get('weights', {}).get('perceptual')})\n"
            f"    best validation {best['name']} = {value} at step {best['step']} on {data.get('val_pairs')} pairs of "
            f"{len(summary.get('heldout_views') or ())} held-out views ({summary.get('val_split')}; "
            f"{data.get('train_pairs')} training pairs)")


def format_checkpoint(ckpt, name: str) -> str:
    """:func:`format_train_summary` of the run a checkpoint belongs to (its ``train_summary.json``), or, for one
    without a run folder (an export, the authors' ``.ckpt``), the restore settings it records."""
    from ..experiments.paper_inputs import run_summary
    from ..restoration.io import checkpoint_settings

    summary = run_summary(ckpt)
    if summary is not None:
        return format_train_summary(summary, name)
    settings = {k: v for k, v in checkpoint_settings(ckpt).items() if v is not None}
    return f"{name}: {ckpt} (no train_summary.json beside it; records {settings or 'no settings'})"

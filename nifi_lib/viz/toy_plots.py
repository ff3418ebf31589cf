"""Figures of notebook 04 (the NiFi objectives on the analytic Gaussian toy). Style: :mod:`nifi_lib.viz.style`."""
from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.patches import Circle

from .style import METHOD_COLORS

FORM_COLORS = {"corrected": "#2ca02c", "printed": "#d62728", "tsdsr": "#1f77b4"}
FORM_LABELS = {"corrected": "ours: D_real(x^_t) - D_real(x_t)",
               "printed": "paper as printed: s_real(x) - s_real(x^)",
               "tsdsr": "TSD-SR: sigma^2 (v_real(x^_t) - v_real(x_t))"}


def plot_gt_rates(sigma_grid, rates: dict, measured: dict | None = None, sigma_range=None, threshold=None):
    """Contraction rate of ``x^ - x`` per unit step for each reading of Eq. 5's ground-truth term.

    ``rates[form]`` are closed-form curves over ``sigma_grid``; ``measured[form]`` a list of
    ``(sigma, rate)`` points from the toy steps. Positive = pulls x^ toward x.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if sigma_range is not None:
        ax.axvspan(*sorted(sigma_range), color="0.9", zorder=0, label="TSD-SR / NiFi sigma range")
    ax.axhline(0, color="0.3", lw=0.8)
    for form, r in rates.items():
        ax.plot(sigma_grid, r, color=FORM_COLORS[form], label=FORM_LABELS[form])
        if measured and form in measured:
            s, m = zip(*measured[form])
            ax.plot(s, m, "o", color=FORM_COLORS[form], ms=5)
    if threshold is not None:
        ax.axvline(threshold, color=FORM_COLORS["tsdsr"], ls=":", lw=1)
        ax.annotate(f"s^2/(1+s^2) = {threshold:.2f}", (threshold, ax.get_ylim()[1] * 0.85), fontsize=8,
                    ha="left", xytext=(4, 0), textcoords="offset points")
    ax.set_xlabel("sigma")
    ax.set_ylabel("pull of x^ toward x per unit step\n(> 0: toward, < 0: away)")
    ax.set_title("Eq. 5 ground-truth term: three readings on Gaussian data (dots: measured steps)")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_particle_flow(result: dict, real_mean, real_std: float, fake_mean, fake_std: float, max_points: int = 400):
    """Samples moved by Eq. 4 steps with a tracking critic: snapshots, mean trajectory, mean distance and std."""
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0), gridspec_kw={"width_ratios": [1.15, 1]})
    ax = axes[0]
    snaps, steps = result["snapshots"], result["snapshot_steps"]
    cmap = plt.get_cmap("viridis")
    for i, (x, st) in enumerate(zip(snaps, steps)):
        x = x[:max_points].numpy()
        ax.scatter(x[:, 0], x[:, 1], s=4, alpha=0.5, color=cmap(i / max(1, len(snaps) - 1)), label=f"step {st}")
    for mean, std, color, name in ((real_mean, real_std, METHOD_COLORS["uncompressed"], "p_real"),
                                   (fake_mean, fake_std, METHOD_COLORS["nifi"], "initial p_restore")):
        for k in (1, 2):
            ax.add_patch(Circle(tuple(np.asarray(mean, dtype=float)), k * std, fill=False, color=color, lw=1.2,
                                ls="-" if k == 1 else "--", label=name if k == 1 else None))
    m = result["means"].numpy()
    ax.plot(m[:, 0], m[:, 1], color="k", lw=1.2, label="batch mean")
    ax.set_aspect("equal")
    ax.set_title("samples under Eq. 4 (critic refit each step)")
    ax.legend(fontsize=7, loc="upper right", markerscale=2)
    ax2 = axes[1]
    it = np.arange(len(m))
    ax2.plot(it, result["mean_dist_to_real"].numpy(), color="k", label="|batch mean - mu_real|")
    ax2.plot(it, result["stds"].numpy(), color=METHOD_COLORS["nifi"], label="batch std")
    ax2.axhline(real_std, color=METHOD_COLORS["uncompressed"], ls="--", lw=1, label="s_real")
    ax2.set_xlabel("step")
    ax2.set_title("convergence to p_real")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_tradeoff(results: list[dict], landmarks: dict):
    """Eq. 5's alpha: distance to the ground truth (MSE to x) vs distribution match (output std / real std, KL)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    a = np.array([r["alpha"] for r in results])
    mse = np.array([r["mse_to_x"] for r in results])
    ratio = np.array([r["std_ratio"] for r in results])
    kl = np.array([r["kl_to_real"] for r in results])
    ax = axes[0]
    ax.plot(ratio, mse, "-o", color=METHOD_COLORS["nifi"])
    for ai, x, y in zip(a, ratio, mse):
        ax.annotate(f"alpha={ai:g}", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
    for name, lm, mk in (("least squares (Wiener)", landmarks["wiener"], "s"), ("distribution matched", landmarks["matched"], "D")):
        ax.plot(lm["std_ratio"], lm["mse_to_x"], mk, color="0.3", ms=7, mfc="none", label=f"closed form: {name}")
    ax.set_xlabel("output std / real std (1 = distribution matched)")
    ax.set_ylabel("MSE to the clean x")
    ax.set_title("perception-distortion trade-off of Eq. 5")
    ax.legend(fontsize=7, loc="upper left")
    ax2 = axes[1]
    ax2.plot(a, mse, "-o", color=METHOD_COLORS["nifi"], label="MSE to x")
    ax2.set_xlabel("alpha (Eq. 5)")
    ax2.set_ylabel("MSE to x", color=METHOD_COLORS["nifi"])
    ax3 = ax2.twinx()
    ax3.plot(a, kl, "-s", color=METHOD_COLORS["uncompressed"], label="KL(p_restore || p_real)")
    ax3.set_ylabel("KL(p_restore || p_real)", color=METHOD_COLORS["uncompressed"])
    ax3.grid(False)
    ax2.axvline(0.7, color="0.5", ls=":", lw=1)
    ax2.set_title("alpha = 0.7 (paper) marked")
    fig.tight_layout()
    return fig


def plot_kl_gradient_check(results: list[dict]):
    """Parity of the Monte-Carlo Eq. 4 gradient and the closed-form KL gradient, per sigma and parameter."""
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ex, mc, lab = [], [], []
    for r in results:
        for j, name in enumerate(("mu", "s")):
            ex.append(r["exact"][j])
            mc.append(r["mc"][j])
            lab.append(f"{name}, sigma={r['sigma']}")
    ex, mc = np.array(ex), np.array(mc)
    lo, hi = min(ex.min(), mc.min()), max(ex.max(), mc.max())
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
    ax.scatter(ex, mc, color=METHOD_COLORS["nifi"], zorder=3)
    for x, y, t in zip(ex, mc, lab):
        ax.annotate(t, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("d KL(p_fake,t || p_real,t) / d phi (closed form)")
    ax.set_ylabel("((1-s)^2/s^2) E[(D_fake - D_real) dx^/dphi]")
    ax.set_title("Eq. 4 is the KL gradient")
    return fig

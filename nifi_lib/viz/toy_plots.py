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


def plot_gt_rates(sigma_grid=None, rates: dict | None = None, measured: dict | None = None, sigma_range=None,
                  threshold=None):
    """Contraction rate of ``x^ - x`` per unit step for each reading of Eq. 5's ground-truth term.

    ``rates[form]`` are closed-form curves over ``sigma_grid`` (default: 200 sigmas in [0.02, 0.99] and
    :func:`~nifi_lib.training.verify.gt_displacement_rates`); ``measured[form]`` a list of ``(sigma, rate)``
    points from the toy steps. Positive = pulls x^ toward x.
    """
    if sigma_grid is None:
        sigma_grid = np.linspace(0.02, 0.99, 200)
    if rates is None:
        from ..training.verify import gt_displacement_rates

        rates = gt_displacement_rates(sigma_grid)
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


# ------------------------------------------------------------------------------------------------
# The toy measurements as text (one line per sigma; results of nifi_lib.experiments.toy_checks.sweep)
# ------------------------------------------------------------------------------------------------
def _r3(t) -> np.ndarray:
    return np.round(t.numpy(), 3)


def format_denoiser_checks(results: list[dict]) -> str:
    """``verify.toy_denoiser_vs_mc`` per sigma: closed-form vs Monte-Carlo ``E[x | x_t]`` and the largest error."""
    return "\n".join(f"sigma={r['sigma']:<5} closed {_r3(r['closed'])}  MC {_r3(r['mc'])}  max err {r['max_abs_err']:.3f}"
                     for r in results)


def format_kl_gradient_checks(results: list[dict]) -> str:
    """``verify.toy_kl_gradient`` per sigma: the exact KL gradient and Eq. 4's Monte-Carlo estimate (with its se)."""
    return "\n".join(f"sigma={r['sigma']:<5} dKL/dmu exact {r['exact'][0]:+.4f}  MC {r['mc'][0]:+.4f} (se {r['se'][0]:.4f})"
                     f" | dKL/ds exact {r['exact'][1]:+.4f}  MC {r['mc'][1]:+.4f} (se {r['se'][1]:.4f})" for r in results)


def format_kl_steps(results: list[dict]) -> str:
    """``verify.toy_kl_step`` per sigma: distance of the batch mean to the real and the fake mean, before -> after."""
    return "\n".join(f"one descent step at sigma={r['sigma']}: |mean - mu_real| {r['dist_real'][0]:.3f} -> "
                     f"{r['dist_real'][1]:.3f}, |mean - mu_fake| {r['dist_fake'][0]:.3f} -> {r['dist_fake'][1]:.3f}"
                     for r in results)


def format_surrogate_checks(results: list[dict]) -> str:
    """``verify.surrogate_grad_check`` per normalisation: autograd vs ``g_n / B`` and whether the loss has a graph."""
    return "\n".join(f"normalize={r['normalize']:<7} max |autograd - g_n/B| = {r['max_abs_err']:.1e}   "
                     f"grad_fn: {r['has_grad_fn']}" for r in results)


def format_gt_steps(by_form: dict[str, list[dict]]) -> str:
    """``verify.toy_gt_step`` per reading (one line) and sigma: mean ``|x^ - x|`` before -> after one step."""
    return "\n".join(f"{form:<10} " + "  ".join(f"s={r['sigma']}: {r['dist_x'][0]:.4f}->{r['dist_x'][1]:.4f}" for r in rs)
                     for form, rs in by_form.items())


def format_blend(results: list[dict]) -> str:
    """``verify.toy_blend_objective`` per sigma: the objective J, the mean's distance to mu_real and |x^ - x|."""
    return "\n".join(f"sigma={r['sigma']:<5} J {r['objective'][0]:.4f} -> {r['objective'][1]:.4f}   |mean - mu_real| "
                     f"{r['dist_real_mean'][0]:.3f} -> {r['dist_real_mean'][1]:.3f}   mean |x^ - x| "
                     f"{r['dist_x'][0]:.4f} -> {r['dist_x'][1]:.4f}" for r in results)


def format_critic(results: list[dict]) -> str:
    """``verify.toy_critic_minimiser`` per sigma: the learned critic velocity beside the restored and real ones."""
    return "\n".join(f"sigma={r['sigma']:<5} learned {_r3(r['learned'])}  v_restore {_r3(r['fake_velocity'])}"
                     f"  v_real {_r3(r['real_velocity'])}" for r in results)


def format_tradeoff(results: list[dict], landmarks: dict) -> str:
    """``toy.restorer_tradeoff`` per alpha (slope a, MSE to x, std ratio, KL) and the closed-form landmarks."""
    lines = [f"alpha={r['alpha']:.1f}  a={r['a']:.3f}  MSE to x={r['mse_to_x']:.3f}  std ratio={r['std_ratio']:.3f}  "
             f"KL={r['kl_to_real']:.4f}" for r in results]
    closed = {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in landmarks.items()}
    return "\n".join(lines + [f"closed form: {closed}"])

"""Notebook 04's experiments on the analytic Gaussian toy: the measurements of :mod:`nifi_lib.training.verify`
swept over the toy's noise levels and Eq. 5's three readings, and the numbers the notebook records."""
from __future__ import annotations

from typing import Callable, Iterable

from ..training.verify import TOY_SIGMAS

GT_FORMS = ("corrected", "printed", "tsdsr")   # Eq. 5's ground-truth term: ours, as printed, TSD-SR's


def sweep(check: Callable[..., dict], values: Iterable = TOY_SIGMAS, **kw) -> list[dict]:
    """``[check(v, **kw) for v in values]``: one toy measurement (e.g. ``verify.toy_kl_gradient``) at each
    sigma of the toy (or each normalisation mode, ...)."""
    return [check(v, **kw) for v in values]


def gt_steps_by_form(forms: Iterable[str] = GT_FORMS, sigmas: Iterable[float] = TOY_SIGMAS) -> dict[str, list[dict]]:
    """One descent step on Eq. 5's ground-truth term (``verify.toy_gt_step``) per reading and sigma."""
    from ..training.verify import toy_gt_step

    return {form: [toy_gt_step(s, form) for s in sigmas] for form in forms}


def measured_gt_rates(forms: Iterable[str] = GT_FORMS, sigmas: Iterable[float] = TOY_SIGMAS
                      ) -> dict[str, list[tuple[float, float]]]:
    """``(sigma, measured pull toward x per unit step)`` (``verify.toy_gt_rate``) per reading: the dots of
    :func:`nifi_lib.viz.toy_plots.plot_gt_rates`."""
    from ..training.verify import toy_gt_rate

    sigmas = list(sigmas)
    return {form: [(s, toy_gt_rate(s, form)) for s in sigmas] for form in forms}


def toy_numbers(kl_checks: list[dict], gt_steps: dict[str, list[dict]], flow: dict, tradeoff: list[dict]) -> dict:
    """Notebook 04's key numbers from its results: the Eq. 4 gradient (exact vs Monte Carlo, d/dmu), the
    change of ``|x^ - x|`` after one ground-truth step per reading, the particle flow's first and last mean
    distance and final std, and the alpha trade-off (MSE to x, std ratio)."""
    return {
        "eq4_kl_grad_mu_exact_vs_mc": {str(r["sigma"]): [round(r["exact"][0], 4), round(r["mc"][0], 4)]
                                       for r in kl_checks},
        "eq5_gt_dist_after_step": {form: {str(r["sigma"]): round(r["dist_x"][1] - r["dist_x"][0], 5) for r in rs}
                                   for form, rs in gt_steps.items()},
        "particle_flow_mean_dist": [float(flow["mean_dist_to_real"][0]), float(flow["mean_dist_to_real"][-1])],
        "particle_flow_std_final": float(flow["stds"][-1]),
        "tradeoff": {f"alpha={r['alpha']:g}": {"mse_to_x": round(r["mse_to_x"], 4), "std_ratio": round(r["std_ratio"], 4)}
                     for r in tradeoff},
    }


__all__ = ["GT_FORMS", "sweep", "gt_steps_by_form", "measured_gt_rates", "toy_numbers"]

"""The NiFi training objectives (paper Eq. 4, 5, 6, 8) as pure functions.

Conventions (SD3 rectified flow, :mod:`nifi_lib.diffusion.flow`): ``x_t = (1 - sigma) x + sigma eps``
(Eq. 2); the network predicts the velocity ``v ~ eps - x``; the paper's ``s(.)`` in Eq. 4/5 is the
denoised estimate ``D(x_t) = x_t - sigma v`` (:func:`~nifi_lib.diffusion.flow.denoised_estimate`).
``D_real`` comes from the frozen base, ``D_fake`` (the paper's ``s_restore``) from the base plus the
critic LoRA phi+; both with CFG 7.5, computed by the caller. The same noise ``eps`` noises the restored
latent ``x^`` and the clean latent ``x`` at the same ``sigma``.

Signs (derived in ``docs/derivations.md`` and notebook 04, proved on an analytic toy in
``tests/test_objectives.py`` / :mod:`nifi_lib.training.verify`):

* Eq. 4: ``grad_{x^} KL(p_restore,t || p_real,t) = ((1 - sigma)^2 / sigma^2) (D_fake(x^_t) - D_real(x^_t))``,
  so ``g_KL = D_fake - D_real`` (paper: ``s_restore - s_real``); descending moves x^ toward the real
  distribution and away from the fake one.
* Eq. 5 ground-truth term: ``g_GT = D_real(x^_t) - D_real(x_t)``. ``D`` is the gradient of a convex
  function (its Jacobian ``(1 - sigma) Cov[x | x_t] / sigma^2`` is PSD), hence monotone, and with shared
  noise ``x^_t - x_t = (1 - sigma)(x^ - x)``, so ``<g_GT, x^ - x> >= 0``: descending moves x^ toward x.
  The paper prints ``s_real(x) - s_real(x^)``, which read with Eq. 4's convention pushes x^ away from x;
  we use the opposite sign. (:func:`eq5_gt_term_as_printed` and :func:`tsdsr_velocity_gt_term` keep the
  rejected readings for the proofs only; never train with them.)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..diffusion.flow import forward_noise

NORMALIZE_MODES = ("dmd", "sigma2", "none")
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(sigma, like: torch.Tensor) -> torch.Tensor:
    """Scalar or ``(B,)`` sigma as a tensor broadcastable against ``like`` ``(B, ...)``."""
    if not torch.is_tensor(sigma):
        sigma = torch.tensor(float(sigma))
    sigma = sigma.to(device=like.device, dtype=torch.float32)
    if sigma.ndim == 1 and like.ndim > 1:
        sigma = sigma.view(-1, *([1] * (like.ndim - 1)))
    return sigma


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


# ------------------------------------------------------------------------------------------------
# Eq. 4 and Eq. 5: the distillation gradient w.r.t. the restored latent
# ------------------------------------------------------------------------------------------------
def distribution_matching_grad(d_fake_xhat: torch.Tensor, d_real_xhat: torch.Tensor,
                               d_real_x: torch.Tensor | None = None, alpha: float = 0.7) -> torch.Tensor:
    """Eq. 4 and Eq. 5 (denoised-estimate form): the per-element gradient ``g`` w.r.t. ``x^`` (no graph).

    ``g = alpha (D_fake(x^_t) - D_real(x^_t)) + (1 - alpha) (D_real(x^_t) - D_real(x_t))``

    * first term, Eq. 4 (DMD / VSD): ``grad_{x^} KL(p_restore,t || p_real,t)`` up to the positive weight
      ``(1 - sigma)^2 / sigma^2``, since ``grad log p_t(z) = ((1 - sigma) D(z) - z) / sigma^2``;
      descent moves x^ toward the real distribution, away from the fake one.
    * second term, Eq. 5 (TSD): the ground-truth term with the sign CORRECTED w.r.t. the paper's print
      ``(s_real(x) - s_real(x^))``: ``D_real(x^_t) - D_real(x_t)`` (shared noise) satisfies
      ``<g_GT, x^ - x> >= 0``, so descent moves x^ toward x.

    ``d_real_x = None`` returns the Eq. 4 term alone (``alpha`` is then not applied). The result is
    float32 and detached: the scores are stop-gradient quantities.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if d_fake_xhat.shape != d_real_xhat.shape:
        raise ValueError(f"D_fake(x^_t) {tuple(d_fake_xhat.shape)} and D_real(x^_t) {tuple(d_real_xhat.shape)} differ")
    with torch.no_grad():
        d_fake = d_fake_xhat.detach().float()
        d_real = d_real_xhat.detach().float()
        g_kl = d_fake - d_real
        if d_real_x is None:
            return g_kl
        if d_real_x.shape != d_real_xhat.shape:
            raise ValueError(f"D_real(x_t) {tuple(d_real_x.shape)} and D_real(x^_t) {tuple(d_real_xhat.shape)} differ")
        g_gt = d_real - d_real_x.detach().float()
        return float(alpha) * g_kl + (1.0 - float(alpha)) * g_gt


def eq5_gt_term_as_printed(d_real_xhat: torch.Tensor, d_real_x: torch.Tensor) -> torch.Tensor:
    """REJECTED reading, for the proofs only: Eq. 5's second term as printed, ``s_real(x) - s_real(x^)``.

    Read with Eq. 4's convention (it is a gradient; training descends along it) it is ``-g_GT`` and
    pushes x^ AWAY from the clean latent x. Never train with it.
    """
    return (d_real_x.detach() - d_real_xhat.detach()).float()


def tsdsr_velocity_gt_term(v_real_xhat: torch.Tensor, v_real_x: torch.Tensor, sigma) -> torch.Tensor:
    """REJECTED reading, for the proofs only: TSD-SR's velocity-space term ``sigma^2 (v_real(x^_t) - v_real(x_t))``.

    With ``v = (z - D(z)) / sigma`` and shared noise it equals
    ``sigma [(1 - sigma)(x^ - x) - (D_real(x^_t) - D_real(x_t))]``, i.e. ``sigma (1 - sigma) (I - J_D)(x^ - x)``
    to first order with ``J_D = (1 - sigma) Cov[x | x_t] / sigma^2``. ``I - J_D`` is indefinite: it pulls x^
    toward x only where ``(1 - sigma) Var[x | x_t] < sigma^2`` and pushes it away elsewhere (Gaussian data
    of variance s^2: toward x iff ``sigma > s^2 / (1 + s^2)``, 0.5 for unit-variance latents). TSD-SR's
    script computes it inside ``no_grad`` so it never acted. Never train with it.
    """
    s = _per_sample(sigma, v_real_xhat)
    return (s ** 2 * (v_real_xhat.detach().float() - v_real_x.detach().float()))


# ------------------------------------------------------------------------------------------------
# The surrogate loss that applies the gradient (DMD trick)
# ------------------------------------------------------------------------------------------------
def gradient_weight(normalize: str, x_hat: torch.Tensor | None = None, d_real_xhat: torch.Tensor | None = None,
                    sigma=None, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample factor ``c`` such that the applied gradient is ``g_n = c * g`` (detached, broadcastable).

    * ``"dmd"``: ``c = 1 / max(mean_{C,H,W} |x^ - D_real(x^_t)|, eps)`` (DMD, Yin et al. 2024, Sec. 3.2).
      The raw gradient of Eq. 4 scales like the real denoiser's error, which varies by orders of magnitude
      across t (and across images); dividing by it makes the step size roughly invariant to t and to the
      latent's scale. Detached and clamped by ``eps``.
    * ``"sigma2"``: TSD-SR's weighting. TSD-SR multiplies the VELOCITY-space difference by ``sigma^2``;
      since ``v = (z - D)/sigma`` gives ``sigma^2 (v_real - v_fake) = sigma (D_fake - D_real)``, the same
      gradient in our denoised-estimate form is ``c = sigma``.
    * ``"none"``: ``c = 1``.
    """
    if normalize == "none":
        ref = x_hat if x_hat is not None else d_real_xhat
        return torch.ones((), device=ref.device if ref is not None else None)
    if normalize == "sigma2":
        if sigma is None or x_hat is None:
            raise ValueError("normalize='sigma2' needs sigma and x_hat")
        return _per_sample(sigma, x_hat)
    if normalize == "dmd":
        if x_hat is None or d_real_xhat is None:
            raise ValueError("normalize='dmd' needs x_hat and D_real(x^_t)")
        with torch.no_grad():
            w = (x_hat.detach().float() - d_real_xhat.detach().float()).abs().mean(dim=_reduce_dims(x_hat), keepdim=True)
            return 1.0 / w.clamp_min(eps)
    raise ValueError(f"unknown normalize '{normalize}' (use one of {', '.join(NORMALIZE_MODES)})")


def distribution_matching_loss(x_hat: torch.Tensor, grad: torch.Tensor, normalize: str = "dmd", *,
                               d_real_xhat: torch.Tensor | None = None, sigma=None,
                               eps: float = 1e-5, reduction: str = "sum") -> torch.Tensor:
    """Surrogate applying the Eq. 4/5 gradient: ``mean_b 0.5 ||x^_b - stopgrad(x^_b - g_n,b)||^2``.

    ``g_n = c * grad`` with ``c`` from :func:`gradient_weight` (``"dmd"`` needs ``d_real_xhat``,
    ``"sigma2"`` needs ``sigma``). The squared norm is summed per sample and averaged over the batch, so
    ``d loss / d x^ = g_n / B`` exactly and the loss value is ``mean_b 0.5 ||g_n,b||^2`` (not meaningful
    by itself; the gradient is). Computed in float32 and as ``(x^ - sg(x^)) + g_n`` (same value and
    gradient as ``x^ - sg(x^ - g_n)``, without the cancellation that would eat a small ``g_n`` next to a
    large ``x^``, in bf16 or even fp32); the gradient flows back to ``x_hat`` in its own dtype. Never call
    this under ``torch.no_grad()``: the result must have a ``grad_fn``.

    ``reduction="mean"`` instead averages over every element (DMD's and TSD-SR's
    ``0.5 * F.mse_loss(x^, sg(x^ - g), reduction="mean")``), so ``d loss / d x^ = g_n / numel``: on the same
    per-element scale as the mean-squared l2 term of Eq. 6, which is what the trainer uses so that Eq. 6's unit
    weights mean what they mean in those codebases.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got '{reduction}'")
    if not torch.is_grad_enabled():
        raise RuntimeError("distribution_matching_loss called with grad disabled: the loss would not reach x^")
    if grad.shape != x_hat.shape:
        raise ValueError(f"grad {tuple(grad.shape)} and x^ {tuple(x_hat.shape)} differ in shape")
    c = gradient_weight(normalize, x_hat=x_hat, d_real_xhat=d_real_xhat, sigma=sigma, eps=eps)
    x32 = x_hat.float()
    g_n = (c * grad.detach().float()).to(x32.device)
    # x^ - stopgrad(x^ - g_n), written so that no cancellation happens: (x^ - sg(x^)) is exactly 0 in value
    # and the identity in gradient, so the residual's value is g_n bit for bit.
    residual = (x32 - x32.detach()) + g_n
    if reduction == "mean":
        return 0.5 * (residual ** 2).mean()
    per_sample = 0.5 * (residual ** 2).sum(dim=_reduce_dims(x32)) if x32.ndim > 1 else 0.5 * residual ** 2
    return per_sample.mean()


def restoration_distribution_matching_loss(x_hat: torch.Tensor, x_clean: torch.Tensor | None,
                                           real_denoise: Denoiser, fake_denoise: Denoiser, sigma,
                                           noise: torch.Tensor, alpha: float = 0.7, normalize: str = "dmd",
                                           eps: float = 1e-5, reduction: str = "sum", joint_real: bool = False,
                                           sync: bool = True) -> tuple[torch.Tensor, dict]:
    """Eq. 5 (Eq. 4 when ``alpha = 1``) end to end: noise with Eq. 2, score, surrogate.

    ``x^_t = (1 - sigma) x^ + sigma eps`` and ``x_t = (1 - sigma) x + sigma eps`` with the SAME ``noise``
    (shared noise is what makes ``x^_t - x_t = (1 - sigma)(x^ - x)`` and the ground-truth term point at x).
    ``real_denoise(z_t, sigma)`` / ``fake_denoise(z_t, sigma)`` return denoised estimates (frozen base /
    base + critic phi+, CFG inside) and are called under ``torch.no_grad()`` (stop-gradient scores); the
    real denoiser is called separately on ``x^_t`` and ``x_t`` (callables may hold per-sample prompt
    embeddings of batch size B). ``x_clean`` may be ``None`` when ``alpha == 1``. ``sigma``: float or ``(B,)``.

    ``joint_real``: the real denoiser is called ONCE on ``cat([x^_t, x_t])`` (batch 2B, ``sigma`` repeated; the
    trainer's choice: one transformer call) instead of twice; same values. ``reduction``: of
    :func:`distribution_matching_loss` (the trainer uses ``"mean"``, DMD/TSD-SR's scale). ``sync=False``
    returns ``info`` as 0-dim device tensors (nothing waits for the device).

    Returns ``(loss, info)``; ``loss`` has a ``grad_fn`` reaching ``x_hat`` only, with
    ``d loss / d x^ = g_n / B`` (``"sum"``). ``info`` (python floats): ``loss``, ``grad_norm`` and
    ``grad_norm_normalized`` (mean per-sample L2 norm of g and g_n), ``kl_term`` and ``gt_term`` (mean
    absolute value of ``D_fake - D_real`` and ``D_real(x^_t) - D_real(x_t)``), ``weight`` (mean of c),
    ``sigma`` (mean).
    """
    if float(alpha) < 1.0 and x_clean is None:
        raise ValueError("alpha < 1 needs the clean latent x for Eq. 5's ground-truth term")
    with torch.no_grad():
        x_hat_d = x_hat.detach()
        xh_t = forward_noise(x_hat_d, noise.to(x_hat_d.dtype), sigma)                  # Eq. 2
        d_real_x = None
        if float(alpha) < 1.0:
            x_d = x_clean.detach().to(x_hat_d.dtype)
            x_t = forward_noise(x_d, noise.to(x_d.dtype), sigma)
            if joint_real:
                s2 = sigma.repeat(2) if torch.is_tensor(sigma) and sigma.ndim == 1 else sigma
                d_real_xhat, d_real_x = real_denoise(torch.cat([xh_t, x_t]), s2).chunk(2)
            else:
                d_real_xhat, d_real_x = real_denoise(xh_t, sigma), real_denoise(x_t, sigma)
        else:
            d_real_xhat = real_denoise(xh_t, sigma)
        d_fake_xhat = fake_denoise(xh_t, sigma)
        g = distribution_matching_grad(d_fake_xhat, d_real_xhat, d_real_x, alpha=alpha if d_real_x is not None else 1.0)
        c = gradient_weight(normalize, x_hat=x_hat_d, d_real_xhat=d_real_xhat, sigma=sigma, eps=eps)
    loss = distribution_matching_loss(x_hat, g, normalize, d_real_xhat=d_real_xhat, sigma=sigma, eps=eps,
                                      reduction=reduction)
    with torch.no_grad():
        dims = _reduce_dims(g)
        g_n = c * g
        kl = (d_fake_xhat.float() - d_real_xhat.float()).abs().mean()
        gt = (d_real_xhat.float() - d_real_x.float()).abs().mean() if d_real_x is not None else torch.zeros(())
        info = {
            "loss": loss.detach(),
            "grad_norm": g.pow(2).sum(dim=dims).sqrt().mean() if g.ndim > 1 else g.abs().mean(),
            "grad_norm_normalized": g_n.pow(2).sum(dim=dims).sqrt().mean() if g.ndim > 1 else g_n.abs().mean(),
            "kl_term": kl,
            "gt_term": gt,
            "weight": torch.as_tensor(c).float().mean(),
            "sigma": torch.as_tensor(sigma).float().mean(),
        }
    return loss, ({k: float(v) for k, v in info.items()} if sync else info)


# ------------------------------------------------------------------------------------------------
# Eq. 6: the restorer's (phi-) total loss
# ------------------------------------------------------------------------------------------------
def perceptual_matching_loss(l_kl: torch.Tensor, x_hat: torch.Tensor, x_clean: torch.Tensor,
                             img_hat: torch.Tensor | None, img_clean: torch.Tensor | None,
                             lpips_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                             w_kl: float = 1.0, w_l2: float = 1.0, w_lpips: float = 1.0
                             ) -> tuple[torch.Tensor, dict]:
    """Eq. 6: ``L_phi- = w_kl L_KL + w_l2 mse(x^, x) + w_lpips mean LPIPS(D(x^), D(x))`` (paper: weights 1).

    ``l_kl`` is the Eq. 4/5 surrogate (:func:`restoration_distribution_matching_loss`); the l2 term is
    the mean squared error over all latent elements with the clean latent detached; ``lpips_fn(img_hat,
    img_clean)`` returns per-image distances (any perceptual callable; the trainer plugs in LPIPS) and
    is skipped when ``w_lpips == 0``. Returns ``(total, terms)`` with detached 0-dim tensors
    ``kl``, ``l2``, ``lpips``, ``total`` (unweighted terms, weighted total).
    """
    l2 = F.mse_loss(x_hat.float(), x_clean.detach().float())
    total = float(w_kl) * l_kl + float(w_l2) * l2
    if float(w_lpips) != 0.0:
        if lpips_fn is None or img_hat is None or img_clean is None:
            raise ValueError("w_lpips != 0 needs lpips_fn, img_hat and img_clean")
        lp = lpips_fn(img_hat, img_clean).float().mean()
        total = total + float(w_lpips) * lp
    else:
        lp = torch.zeros((), device=l2.device)
    terms = {"kl": l_kl.detach(), "l2": l2.detach(), "lpips": lp.detach(), "total": total.detach()}
    return total, terms


# ------------------------------------------------------------------------------------------------
# Eq. 8: the critic (phi+) learns the distribution of restored latents
# ------------------------------------------------------------------------------------------------
def critic_inputs(x_hat: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """Eq. 8's input ``x^_t = (1 - sigma) sg(x^) + sigma eps`` (Eq. 2 on the DETACHED restored latent)."""
    x = x_hat.detach()
    return forward_noise(x, noise.to(x.dtype), sigma)


def critic_loss(v_pred: torch.Tensor, noise: torch.Tensor, x_hat_detached: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``L_phi+ = mse(v_{theta,phi+}(x^_t, t), eps - sg(x^))`` (flow matching on restored latents).

    The paper writes ``l2(eps, eps_{theta,phi+}(x^_t, t))``, naming the network output eps_theta; for
    SD3 that output is the velocity. The parameterisations are the same regression up to a per-t weight:
    ``eps = x_t + (1 - sigma) v`` and ``x = x_t - sigma v``, so ``||eps - eps^||^2 = (1 - sigma)^2 ||v - v^||^2``
    and ``||x - x^0||^2 = sigma^2 ||v - v^||^2`` (TSD-SR's x0-prediction loss). All are minimised by
    ``v^(z) = E[eps - x^ | x^_t = z] = (z - D_restore(z)) / sigma``, i.e. the critic's denoised estimate
    becomes the ideal one of ``p_restore`` and ``s_restore`` is its score. ``x_hat_detached`` is
    detached again here, so only the module producing ``v_pred`` receives gradients.
    """
    target = noise.float() - x_hat_detached.detach().float()
    return F.mse_loss(v_pred.float(), target)

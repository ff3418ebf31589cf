"""GoDe-style pruning scores (Sec. 3: "gradient magnitude of the rendering loss w.r.t. each primitive's attributes").

For every training view v with ground truth I_v, the rendering loss is the mean L1 error
``L_v = mean |render(G, v) - I_v|``. The importance of primitive i is the L2 norm of the gradient of
L_v with respect to *all* of its attributes (mean, log-scales, quaternion, opacity logit, SH
coefficients, concatenated), accumulated over the views:

    s_i = sum_v || d L_v / d theta_i ||_2 .

A primitive that no view sees (outside every frustum) or that is transparent (alpha below the 1/255
cut-off everywhere) gets exactly zero. Pruning keeps the ``k`` primitives with the largest scores
(:func:`top_k_indices`; ties broken by the lower index, so the result is deterministic).
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import NifiError


class PruningError(NifiError, ValueError):
    """Pruning cannot proceed (mismatched views and images, bad k...)."""


def rendering_loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss whose gradient scores primitives: mean absolute error between render and ground truth."""
    return (image - target).abs().mean()


def per_primitive_grad_norm(grads: dict[str, torch.Tensor] | Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """``||g_i||_2`` over all attributes of primitive i, from per-attribute gradients with leading dim N."""
    values = grads.values() if isinstance(grads, dict) else grads
    sq = torch.zeros(n, dtype=torch.float64)
    for g in values:
        if g is not None:
            sq += g.detach().reshape(n, -1).double().pow(2).sum(dim=1).cpu()
    return sq.sqrt()


def gode_importance(model, cameras: Sequence, images: torch.Tensor, background=None, backend: str = "auto",
                    progress: bool = True, desc: str = "importance") -> torch.Tensor:
    """``s_i = sum_v ||d L_v / d theta_i||_2`` over the given views (module docstring). Returns (N,) float64."""
    from ..gs.render import render

    if len(cameras) == 0:
        raise PruningError("importance needs at least one training view")
    if len(cameras) != len(images):
        raise PruningError(f"{len(cameras)} cameras but {len(images)} images")
    n = model.num_gaussians
    params = model.detach().clone().requires_grad_(True)
    leaves = list(params.tensors().values())
    score = torch.zeros(n, dtype=torch.float64)
    for cam, img in tqdm(list(zip(cameras, images)), desc=desc, disable=not progress, leave=False):
        out = render(params, cam, backend=backend, background=background)
        loss = rendering_loss(out.image, img.to(out.image))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        score += per_primitive_grad_norm(list(grads), n)
    return score


def top_k_indices(importance: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` largest scores; equal scores are taken in index order."""
    imp = torch.as_tensor(importance).detach().cpu()
    n = int(imp.numel())
    if not 1 <= int(k) <= n:
        raise PruningError(f"cannot keep k = {k} of {n} primitives")
    if not bool(torch.isfinite(imp).all()):
        raise PruningError("importance scores contain NaN/inf")
    order = torch.argsort(-imp.double(), stable=True)
    return torch.sort(order[: int(k)]).values


def prune_top_k(model, importance: torch.Tensor, k: int):
    """``(pruned_model, kept_indices)``: the ``k`` most important primitives, in their original order."""
    if torch.as_tensor(importance).numel() != model.num_gaussians:
        raise PruningError(f"{torch.as_tensor(importance).numel()} scores for {model.num_gaussians} primitives")
    idx = top_k_indices(importance, k)
    return model.detach().subset(idx.to(model.device)), idx

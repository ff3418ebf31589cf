"""Fine-tuning of a pruned level (Sec. 3: "Then fine-tune each pruned model").

A small loop around the differentiable renderer, without densification or pruning (the number of
primitives of a level is fixed by the schedule): Adam on every attribute with the learning rates of
3DGS (Kerbl et al. 2023; means 1.6e-4 x scene extent decaying exponentially to 1.6e-6 x extent,
SH DC 2.5e-3, SH rest 2.5e-3 / 20, opacity 2.5e-2, log-scales 5e-3, quaternions 1e-3) and the 3DGS
loss ``0.8 L1 + 0.2 (1 - SSIM)`` on one random training view per iteration.

Quantization-aware fine-tuning: with ``quantizer`` (e.g. :class:`nifi_lib.synthesis.compact.StraightThrough`)
each iteration renders ``quantizer(params)``, the values the coded file will decode to with the identity as their
gradient (straight-through estimator), so what is optimised is what is decoded. A quantizer with a ``finalize``
method (the learned SH-rest codebook of version 3) maps the tuned parameters at the end (the SH rest set to the
learned rows, so that the file's encoder stores exactly them).
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..image_quality import gs_photometric_loss

LR = {"sh_dc": 2.5e-3, "sh_rest": 2.5e-3 / 20.0, "opacity_logits": 2.5e-2, "log_scales": 5e-3, "quats": 1e-3}
MEANS_LR_INIT, MEANS_LR_FINAL = 1.6e-4, 1.6e-6
LAMBDA_DSSIM = 0.2


def finetune_loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """3DGS Eq. 7: ``(1 - 0.2) L1 + 0.2 (1 - SSIM)`` (:func:`nifi_lib.image_quality.gs_photometric_loss`, with the
    float rounding this loop was written with, so that the synthesised levels stay bit-identical)."""
    return gs_photometric_loss(image, target, LAMBDA_DSSIM, rounding="finetune")


def finetune(model, cameras: Sequence, images: torch.Tensor, iterations: int, background=None,
             backend: str = "auto", seed: int = 0, extent: float | None = None, progress: bool = True,
             desc: str = "fine-tune", quantizer=None) -> tuple[object, dict]:
    """Fine-tune ``model`` for ``iterations`` steps; returns ``(model, history)`` (input is not modified).

    ``history`` holds the loss per step and the seconds taken. ``iterations = 0`` returns a copy.
    ``quantizer``: a callable model -> model applied before rendering (quantization-aware fine-tuning).
    """
    from ..gs.cameras import cameras_extent
    from ..gs.render import render

    params = model.detach().clone()
    hist = {"loss": [], "seconds": 0.0, "iterations": int(iterations)}
    if iterations <= 0:
        return params, hist
    t0 = time.perf_counter()
    extent = float(extent) if extent is not None else cameras_extent(cameras)
    params.requires_grad_(True)
    groups = [{"params": [params.means], "lr": MEANS_LR_INIT * extent, "name": "means"}]
    groups += [{"params": [getattr(params, k)], "lr": lr, "name": k} for k, lr in LR.items()]
    opt = torch.optim.Adam(groups, lr=0.0, eps=1e-15)
    gen = torch.Generator().manual_seed(int(seed))
    for it in tqdm(range(int(iterations)), desc=desc, disable=not progress, leave=False):
        frac = it / max(1, iterations - 1)
        opt.param_groups[0]["lr"] = extent * math.exp((1 - frac) * math.log(MEANS_LR_INIT)
                                                      + frac * math.log(MEANS_LR_FINAL))
        v = int(torch.randint(len(cameras), (1,), generator=gen))
        out = render(params if quantizer is None else quantizer(params), cameras[v], backend=backend,
                     background=background)
        loss = finetune_loss(out.image, images[v].to(out.image))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist["loss"].append(float(loss.detach()))
    hist["seconds"] = time.perf_counter() - t0
    finalize = getattr(quantizer, "finalize", None)
    return (finalize(params.detach()) if finalize is not None else params.detach()), hist

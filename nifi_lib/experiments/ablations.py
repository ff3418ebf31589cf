"""Sec. 4.2 ablations: the t0 sweep (incl. t0 = T without noise), the alpha sweep, high-frequency energy
(and its ratio to the ground truth per method)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..paths import repo_path


def t0_sweep(pairs_root: str | Path, ckpt: str, base_model: str, t0s: list[int], split: str = "test",
             limit: int | None = None, include_T: bool = True, ckpt_wo_t0: str | None = None,
             **method_options) -> dict[str, dict]:
    """LPIPS/DISTS after restoration with the same phi- (``ckpt``) at several t0 < T (Eq. 7), plus the row
    ``"t0=T (no noise)"``: NiFi w/o t0, i.e. the phi- TRAINED with ``diffusion.t0: 1000`` (``ckpt_wo_t0``) fed
    the un-noised latent at t = T. Without ``ckpt_wo_t0`` that row is omitted (with a warning): evaluating
    ``ckpt`` at t = T would borrow a phi- trained for another t0, which is not the paper's ablation.
    ``method_options`` go to every method (``embeddings``, ``device``, ``dtype``)."""
    import warnings

    from ..evaluation.baselines import WO_T0_T, create_method
    from ..evaluation.evaluate import evaluate_items, mean_of, metric_keys
    from ..synthesis.pairs import read_pairs

    if any(int(t) >= WO_T0_T for t in t0s):
        raise ValueError(f"t0_sweep: t0 = T ({WO_T0_T}) is the 'w/o t0' ablation with its own trained phi-; "
                         "pass that checkpoint as ckpt_wo_t0 instead of listing T in t0s")
    items = read_pairs(pairs_root, split, layout="scene")[: limit or None]
    methods = {f"t0={t}": create_method("nifi", ckpt=ckpt, base_model=base_model, t0=t, **method_options)
               for t in t0s}
    if include_T and ckpt_wo_t0:
        methods["t0=T (no noise)"] = create_method("nifi_wo_t0", ckpt_wo_t0=ckpt_wo_t0, base_model=base_model,
                                                   **method_options)
    elif include_T:
        warnings.warn("t0_sweep: no ckpt_wo_t0 (a phi- trained with diffusion.t0: 1000) given; the t0 = T row is "
                      "omitted", RuntimeWarning, stacklevel=2)
    for name, m in methods.items():
        m.name = name
    records = evaluate_items(items, methods, ("lpips", "dists"), progress=False)
    keys = metric_keys(("lpips", "dists"))
    return {name: mean_of([r for r in records if r["method"] == name], keys) for name in methods}


def alpha_sweep(pairs_root: str | Path, run_dir: str | Path, alphas: list[float], max_steps: int,
                base_cfg, split: str = "test", limit: int | None = None, eval_root: str | Path | None = None,
                base_model: str | None = None, **method_options) -> dict[float, dict]:
    """Train one short phi- per alpha (Eq. 5's blend) on ``pairs_root`` and evaluate it on ``split`` of
    ``eval_root`` (a ``<scene>/`` root; default ``<pairs_root>/embedded``, the embedded default's); resumable per
    alpha. ``base_model`` (default ``base_cfg.model.backbone``) and ``method_options`` (``embeddings``,
    ``device``, ``dtype``) are what the restorer is evaluated with."""
    import copy

    from ..evaluation.baselines import create_method
    from ..evaluation.evaluate import evaluate_items, mean_of, metric_keys
    from ..synthesis.pairs import read_pairs
    from ..training.trainer import train

    out = {}
    items = read_pairs(Path(eval_root) if eval_root is not None else Path(pairs_root) / "embedded", split,
                       layout="scene")[: limit or None]
    keys = metric_keys(("lpips", "dists"))
    for a in alphas:
        cfg = copy.deepcopy(base_cfg)
        cfg.loss_weights.alpha = float(a)
        cfg.train.max_steps = int(max_steps)
        cfg.train.val_every = int(max_steps)
        exp = repo_path(run_dir) / f"alpha_{a:g}"
        if not (exp / "train_summary.json").is_file():
            train(cfg, pairs_root, exp, progress=False, resume=(exp / "latest.pt").is_file())
        m = create_method("nifi", ckpt=str(exp / "latest.pt"),
                          base_model=base_model or str(repo_path(cfg.model.backbone)), **method_options)
        recs = evaluate_items(items, {"nifi": m}, ("lpips", "dists"), progress=False)
        out[float(a)] = mean_of(recs, keys)
    return out


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared response of a 3x3 Laplacian on the luma, per image (images in [0, 1], NCHW)."""
    y = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=y.dtype).view(1, 1, 3, 3)
    return F.conv2d(y, k).pow(2).mean(dim=(1, 2, 3))


def high_frequency_ratios(rows: list[dict], keys=("degraded", "base", "nifi"), reference: str = "clean") -> dict[str, float]:
    """Per ``key``: the mean over ``rows`` (dicts of name -> image ``(3, H, W)``, e.g.
    :func:`~nifi_lib.experiments.embedded.before_after_examples`) of :func:`high_frequency_energy` of that image
    divided by the energy of the ``reference`` image of the same row (> 1: more fine detail than the ground truth)."""
    def stack(name: str) -> torch.Tensor:
        return torch.stack([r[name].float().clamp(0, 1) for r in rows])

    ref = high_frequency_energy(stack(reference))
    return {k: float((high_frequency_energy(stack(k)) / ref).mean()) for k in keys}

"""Sec. 4.2 ablations: the t0 sweep (incl. t0 = T without noise), the alpha sweep, and the sharpness of every
method's restorations (:mod:`nifi_lib.metrics.sharpness`: high-frequency energy relative to the ground truth and
the patch-grid artefact, per rate)."""
from __future__ import annotations

from pathlib import Path

import torch

# high_frequency_energy lives in metrics.sharpness (one home) and stays importable from here
from ..metrics.sharpness import high_frequency_energy, high_frequency_ratio, patch_grid_artefact  # noqa: F401
from ..paths import repo_path


def t0_sweep(pairs_root: str | Path, ckpt: str, base_model: str, t0s: list[int], split: str = "test",
             limit: int | None = None, include_T: bool = True, ckpt_wo_t0: str | None = None,
             metrics=("lpips", "dists"), **method_options) -> dict[str, dict]:
    """LPIPS/DISTS after restoration with the same phi- (``ckpt``) at several t0 < T (Eq. 7), plus the row
    ``"t0=T (no noise)"``: NiFi w/o t0, i.e. the phi- TRAINED with ``diffusion.t0: 1000`` (``ckpt_wo_t0``) fed
    the un-noised latent at t = T. Without ``ckpt_wo_t0`` that row is omitted (with a warning): evaluating
    ``ckpt`` at t = T would borrow a phi- trained for another t0, which is not the paper's ablation.
    ``metrics``: what each row scores (default LPIPS and DISTS); ``method_options`` go to every method
    (``embeddings``, ``device``, ``dtype``)."""
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
    records = evaluate_items(items, methods, tuple(metrics), progress=False)
    keys = metric_keys(tuple(metrics))
    return {name: mean_of([r for r in records if r["method"] == name], keys) for name in methods}


def alpha_sweep(pairs_root: str | Path, run_dir: str | Path, alphas: list[float], max_steps: int,
                base_cfg, split: str = "test", limit: int | None = None, eval_root: str | Path | None = None,
                base_model: str | None = None, metrics=("lpips", "dists"), **method_options) -> dict[float, dict]:
    """Train one short phi- per alpha (Eq. 5's blend) on ``pairs_root`` and evaluate it on ``split`` of
    ``eval_root`` (a ``<scene>/`` root; default ``<pairs_root>/embedded``, the embedded default's); resumable per
    alpha. ``base_model`` (default ``base_cfg.model.backbone``) and ``method_options`` (``embeddings``,
    ``device``, ``dtype``) are what the restorer is evaluated with, on ``metrics`` (default LPIPS and DISTS)."""
    import copy

    from ..evaluation.baselines import create_method
    from ..evaluation.evaluate import evaluate_items, mean_of, metric_keys
    from ..synthesis.pairs import read_pairs
    from ..training.trainer import train

    out = {}
    items = read_pairs(Path(eval_root) if eval_root is not None else Path(pairs_root) / "embedded", split,
                       layout="scene")[: limit or None]
    keys = metric_keys(tuple(metrics))
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
        recs = evaluate_items(items, {"nifi": m}, tuple(metrics), progress=False)
        out[float(a)] = mean_of(recs, keys)
    return out


def high_frequency_ratios(rows: list[dict], keys=("degraded", "base", "nifi"), reference: str = "clean") -> dict[str, float]:
    """Per ``key``: the mean over ``rows`` (dicts of name -> image ``(3, H, W)``, e.g.
    :func:`~nifi_lib.experiments.embedded.before_after_examples`) of
    :func:`~nifi_lib.metrics.sharpness.high_frequency_ratio` of that image to the ``reference`` image of the
    same row (> 1: more fine detail than the ground truth)."""
    ref = _stack(rows, reference)
    return {k: float(high_frequency_ratio(_stack(rows, k), ref).mean()) for k in keys}


def _stack(rows: list[dict], name: str) -> torch.Tensor:
    return torch.stack([r[name].float().clamp(0, 1) for r in rows])


def image_keys(rows: list[dict]) -> list[str]:
    """The names of the images every row holds (``(C, H, W)`` tensors), in the first row's order."""
    if not rows:
        return []
    return [k for k, v in rows[0].items()
            if torch.is_tensor(v) and v.ndim == 3 and all(torch.is_tensor(r.get(k)) for r in rows)]


def grid_periods(stride: int) -> list[int]:
    """The periods a grid at ``stride`` may come from: every divisor of ``stride`` from 2 up (8: 2, 4, 8). A grid
    of period d also shows at every multiple of d, so the smallest period that fires is its origin (2: the VAE
    decoder's last 2x upsampling; the VAE factor: one latent pixel; the patch stride: one transformer token)."""
    return [d for d in range(2, int(stride) + 1) if int(stride) % d == 0]


def sharpness_by_rate(rows: list[dict], stride: int, keys=None, reference: str = "clean") -> dict:
    """Both sharpness measures of :mod:`nifi_lib.metrics.sharpness` for every image kind of ``rows`` (dicts
    with a ``"rate"`` and images ``(3, H, W)``, e.g. :func:`~nifi_lib.experiments.embedded.before_after_examples`:
    the compressed input ``degraded``, the frozen ``base``, ``nifi`` and the ``clean`` ground truth), per rate.

    ``keys``: the image kinds (None: every image of the rows, the reference included, so that the ground
    truth's own patch-grid level sits beside the methods'); ``stride``: the grid period in pixels
    (:func:`~nifi_lib.diffusion.backbone.patch_stride` of the backbone). Returns
    ``{"stride", "rates", "count": {rate: n}, "hf_ratio": {key: {rate: mean}}, "patch_grid": {key: {rate: mean}},
    "patch_grid_by_period": {period: {key: mean over all rows}}}`` with the rates as strings in ascending order
    and an ``"all"`` entry (the mean over every row); the periods are :func:`grid_periods` of ``stride``. A
    patch-grid value is None where the frames are smaller than three periods a side (no grid is measurable)."""
    if not rows:
        raise ValueError("no rows to measure")
    keys = list(keys) if keys is not None else image_keys(rows)
    missing = [k for k in [*keys, reference] if any(k not in r for r in rows)]
    if missing:
        raise ValueError(f"rows lack image(s) {sorted(set(missing))} (have {image_keys(rows)})")
    rates = sorted({str(r["rate"]) for r in rows}, key=_rate_order)
    groups = {rate: [r for r in rows if str(r["rate"]) == rate] for rate in rates}
    groups["all"] = rows
    out = {"stride": int(stride), "rates": rates, "count": {g: len(v) for g, v in groups.items()},
           "hf_ratio": {k: {} for k in keys}, "patch_grid": {k: {} for k in keys}}
    side = min(min(r[reference].shape[-2:]) for r in rows)

    def grid(img: torch.Tensor, period: int) -> float | None:
        # None: frames under three periods a side have no measurable grid (the tiny rehearsal's 32 px at SD3's 16)
        return float(patch_grid_artefact(img, period).mean()) if side >= 3 * period else None

    for g, group in groups.items():
        ref = _stack(group, reference)
        for k in keys:
            img = _stack(group, k)
            out["hf_ratio"][k][g] = float(high_frequency_ratio(img, ref).mean())
            out["patch_grid"][k][g] = grid(img, int(stride))
    out["patch_grid_by_period"] = {str(d): {k: grid(_stack(rows, k), d) for k in keys} for d in grid_periods(stride)}
    return out


def restored_rows(pairs_root: str | Path, methods: dict, split: str = "test", per_rate: int | None = None,
                  ) -> list[dict]:
    """The test pairs of a scene root ``pairs_root`` (``<scene>/rate_<label>/``, as :func:`t0_sweep` reads it)
    restored by every method of ``methods`` (name -> :class:`~nifi_lib.evaluation.baselines.RestorationMethod`):
    one row per pair, ``{"label", "rate", "degraded", "clean", <name>: restored}`` (images ``(3, H, W)`` in
    [0, 1], on the CPU). ``per_rate``: that many views per rate, evenly spread over the rate's pairs (None: all)."""
    from ..evaluation.baselines import run_method
    from ..synthesis.pairs import load_pair, read_pairs

    items = read_pairs(pairs_root, split, layout="scene")
    chosen = []
    for rate in sorted({it.rate for it in items}, key=_rate_order):
        of_rate = [it for it in items if it.rate == rate]
        step = max(len(of_rate) // per_rate, 1) if per_rate else 1
        chosen += of_rate[::step][: per_rate or None]
    rows = []
    for item in chosen:
        clean, deg = load_pair(item)
        row = {"label": f"{item.scene} / rate {item.rate} / {item.name}", "rate": item.rate, "degraded": deg}
        with torch.no_grad():
            for name, m in methods.items():
                row[name] = run_method(m, deg[None].float(), [item.key])[0].float().cpu()
        row["clean"] = clean
        rows.append(row)
    return rows


def ablation_sharpness(pairs_root: str | Path, ckpt: str, base_model: str, t0s=(), ckpt_wo_t0: str | None = None,
                       split: str = "test", per_rate: int | None = None, stride: int | None = None,
                       **method_options) -> dict:
    """:func:`sharpness_by_rate` of the methods notebook 07 compares, on the test pairs of ``pairs_root``: the
    compressed input (``degraded``), the frozen base with Eq. 7 at the default t0 (``base``, no phi-), NiFi at its
    checkpoint's t0 (``nifi``), NiFi at every other t0 of the t0 sweep (``nifi t0=<t>``), NiFi w/o t0 with its
    own phi- (``nifi_wo_t0``, when ``ckpt_wo_t0`` is given), the ground truth through the frozen VAE alone
    (``clean_vae``, :func:`~.latent_checks.vae_reconstruction`: what decoding the clean view's own latent keeps;
    every diffusion method here decodes through that same frozen decoder) and the ground truth (``clean``).
    ``stride``: the patch grid's period (None: :func:`~nifi_lib.diffusion.backbone.patch_stride` of ``base_model``);
    ``method_options`` go to every method (``embeddings``, ``device``, ``dtype``)."""
    from ..diffusion.backbone import patch_stride
    from ..evaluation.baselines import create_method
    from .latent_checks import vae_reconstruction

    methods = {"base": create_method("base_t0", base_model=base_model, **method_options),
               "nifi": create_method("nifi", ckpt=ckpt, base_model=base_model, **method_options)}
    for t in t0s:
        if int(t) != int(methods["nifi"].t0):
            methods[f"nifi t0={int(t)}"] = create_method("nifi", ckpt=ckpt, base_model=base_model, t0=int(t),
                                                        **method_options)
    if ckpt_wo_t0:
        methods["nifi_wo_t0"] = create_method("nifi_wo_t0", ckpt_wo_t0=ckpt_wo_t0, base_model=base_model,
                                              **method_options)
    rows = restored_rows(pairs_root, methods, split=split, per_rate=per_rate)
    bb = methods["base"].restorer.backbone
    with torch.no_grad():
        rows = [{**{k: v for k, v in r.items() if k != "clean"},
                 "clean_vae": vae_reconstruction(bb, r["clean"][None].float())[0][0], "clean": r["clean"]} for r in rows]
    return sharpness_by_rate(rows, stride if stride is not None else patch_stride(base_model))


def _rate_order(rate: str):
    try:
        return (0, float(rate), rate)
    except ValueError:
        return (1, 0.0, rate)

"""The embedded default end to end, as library calls the notebooks share (idempotent, resumable).

``make run`` executes the notebooks in order; each one that needs an earlier stage's output calls the
``ensure_*`` function here, which reuses complete outputs and builds missing ones, so every notebook also
runs on its own (nbval, JupyterLab).
"""
from __future__ import annotations

from pathlib import Path

from ..config import DEFAULT_T0, Config, load_config, merge_overrides
from ..paths import EMBEDDED_DIR, repo_path

EMBEDDED_SCENES = EMBEDDED_DIR / "scenes"


def embedded_scene_dirs(names: list[str] | None = None) -> list[Path]:
    dirs = sorted(p for p in EMBEDDED_SCENES.iterdir() if (p / "cameras.json").is_file())
    if names:
        dirs = [d for d in dirs if d.name in names]
    return dirs


def ensure_embedded_pairs(run_dir: str | Path = "runs/embedded", scenes: list[str] | None = None,
                          c_min: int = 64, n_top: int = 300, finetune_iterations: int = 300,
                          splits=("train", "test"),
                          progress: bool = False) -> Path:
    """Artifact synthesis for the embedded scenes: ``<run_dir>/artifacts/<scene>`` (pruned, coded levels)
    and ``<run_dir>/pairs/embedded/<scene>/rate_<label>/<split>/{clean,degraded}`` (Sec. 3; the benchmark
    layout with "embedded" as the dataset). Returns the pairs root ``<run_dir>/pairs``."""
    from .shipped_run import seed_artifacts

    run_dir = repo_path(run_dir)
    seed_artifacts(run_dir, [d.name for d in embedded_scene_dirs(scenes)])   # data/embedded/run, where unset
    # The embedded default's schedule: |G_0| = 64, |G_2| = 300 of the ~3000 dense primitives (the paper's
    # c_min = 4096 scaled to these small scenes), i.e. about 10x to 50x fewer primitives than the dense model.
    return scene_pairs(embedded_scene_dirs(scenes), run_dir / "artifacts", run_dir / "pairs", c_min=c_min,
                       n_top=n_top, finetune_iterations=finetune_iterations, splits=splits, progress=progress)


def scene_pairs(scene_dirs: list[Path], artifacts_root: str | Path, pairs_root: str | Path, c_min: int = 64,
                n_top: int = 300, finetune_iterations: int = 300, splits=("train", "test"), device: str = "cpu",
                progress: bool = False) -> Path:
    """Artifact synthesis of any scene folders: ``<artifacts_root>/<scene>`` (pruned, coded levels) and
    ``<pairs_root>/embedded/<scene>/rate_<label>/<split>/{clean,degraded}``; returns ``pairs_root``."""
    from ..synthesis.pipeline import SynthesisSettings, codec_pairs, synthesize_scene

    settings = SynthesisSettings(c_min=c_min, n_top=n_top, finetune_iterations=finetune_iterations, device=device)
    pairs_root = repo_path(pairs_root)
    for scene in scene_dirs:
        art = repo_path(artifacts_root) / scene.name
        synthesize_scene(scene, art, settings, progress=progress, log=lambda *_: None)
        for split in splits:
            codec_pairs(art, split, pairs_root / "embedded" / scene.name, progress=progress, log=lambda *_: None,
                        device=device)
    return pairs_root


def embedded_image_paths(split: str = "train", per_scene: int | None = None,
                         scenes: list[str] | None = None) -> list[Path]:
    """Ground-truth image files of the embedded scenes' ``split`` views (per scene: the first ``per_scene``
    in the scene's camera order; None: all), scenes in name order."""
    from ..data.scenes import load_scene

    return [c.image_path for scene in embedded_scene_dirs(scenes)
            for c in load_scene(scene, split=split)[:per_scene]]


def embedded_views(split: str = "test", per_scene: int | None = None, scenes: list[str] | None = None):
    """The images of :func:`embedded_image_paths` as one batch ``(N, 3, H, W)`` in [0, 1]."""
    import torch

    from ..io.images import load_image

    return torch.stack([load_image(p) for p in embedded_image_paths(split, per_scene, scenes)])


def train_summary(run: str | Path) -> dict:
    """The ``train_summary.json`` of a run, given its folder or one of its checkpoints (``best.pt``)."""
    import json

    path = repo_path(run)
    return json.loads(((path if path.is_dir() else path.parent) / "train_summary.json").read_text())


def embedded_validation_views(every: int = 8, scenes: list[str] | None = None):
    """Clean images ``(N, 3, H, W)`` in [0, 1] of the embedded scenes' held-out *training* views: per scene,
    every ``every``-th of its sorted training views, the views :func:`~nifi_lib.training.data.holdout_views`
    keeps out of the gradient steps (never a test view)."""
    import torch

    from ..data.scenes import load_scene
    from ..io.images import load_image

    views = []
    for scene in embedded_scene_dirs(scenes):
        cams = sorted(load_scene(scene, split="train"), key=lambda c: c.name)
        views += [load_image(c.image_path) for c in cams[::every]]
    return torch.stack(views)


def embedded_config(overrides: dict | None = None, path: str | Path = "configs/embedded.yaml") -> Config:
    return load_config(repo_path(path), overrides=overrides)


def _run_is_current(out: Path, cfg) -> bool:
    """``out`` holds a finished run of ``cfg`` whose ``best.pt`` was chosen on held-out training views."""
    import json

    try:
        summary = json.loads((out / "train_summary.json").read_text())
        if not isinstance(summary, dict):
            return False
    except (OSError, ValueError):
        return False
    if not (out / "best.pt").is_file() or summary.get("val_split") in (None, "test"):
        return False
    if hasattr(cfg, "train") and int(summary.get("steps", 0)) < int(cfg.train.max_steps):
        return False
    if hasattr(cfg, "diffusion"):
        trained_t0 = (summary.get("config") or {}).get("diffusion", {}).get("t0")
        if trained_t0 is not None and float(trained_t0) != float(cfg.diffusion.t0):
            return False
    return True


def ensure_trained(run_dir: str | Path = "runs/embedded", cfg: Config | None = None, exp: str = "nifi",
                   progress: bool = False, use_shipped: bool = True, **pairs_kw) -> Path:
    """A trained phi- for the embedded pairs: ``<run_dir>/<exp>/best.pt`` (trains if missing).

    ``best.pt`` is chosen on held-out *training* views (``train_summary.json`` ``"val_split"``), never on the
    test split that notebooks 06/07 score. A run is reused only when it is finished for ``cfg`` (its steps and
    t0) and recorded a held-out ``val_split``; a run that selected its checkpoint on the test pairs (no
    ``"val_split"`` or ``"test"``), an unreadable summary, or a shorter run is stale and trained again. An
    interrupted run (``latest.pt`` without a summary) is resumed. ``use_shipped``: an empty ``<run_dir>/<exp>``
    first receives the run shipped in ``data/embedded/run`` when that was trained with exactly ``cfg``
    (:func:`~.shipped_run.seed_run`)."""
    from .shipped_run import seed_run

    run_dir = repo_path(run_dir)
    out = run_dir / exp
    cfg = cfg or embedded_config()
    if use_shipped:
        seed_run(run_dir, exp, cfg)
    if not _run_is_current(out, cfg):
        run_training(cfg, ensure_embedded_pairs(run_dir, **pairs_kw), out, progress=progress)
    return out / "best.pt"


def run_training(cfg: Config, pairs_root: str | Path, out: str | Path, progress: bool = False,
                 device: str | None = None) -> Path:
    """``<out>/best.pt`` of ``cfg`` trained on ``pairs_root`` (any pair root, not only the embedded one): a
    finished current run (:func:`_run_is_current`) is reused, an interrupted one (``latest.pt`` without a
    summary) resumed, anything else trained from scratch."""
    from ..training.trainer import train

    out = repo_path(out)
    if not _run_is_current(out, cfg):
        if (out / "latest.pt").is_file() and not (out / "train_summary.json").is_file():
            train(cfg, pairs_root, out, progress=progress, resume=True, device=device)
        else:
            train(cfg, pairs_root, out, progress=progress, device=device)
    return out / "best.pt"


def embedded_wo_t0_config(overrides: dict | None = None) -> Config:
    """The "NiFi w/o t0" ablation (Sec. 4.2) trained the way it is evaluated: the embedded config with
    ``diffusion.t0: 1000`` (the un-noised degraded latent at t = T, sigma 1 in the step), same steps as NiFi."""
    return embedded_config(merge_overrides({"diffusion": {"t0": 1000}}, overrides or {}))


def validation_items(pairs_root: str | Path, exp_dir: str | Path) -> list:
    """The held-out *training* views a run validated on (its ``train_summary.json`` ``heldout_views``), as
    :class:`~nifi_lib.synthesis.pairs.PairItem` of the training pair root ``pairs_root`` (read as ``nifi train``
    reads it, :func:`~nifi_lib.training.data.find_pairs`: a benchmark root or a ``<scene>/`` root): what
    baselines' settings are chosen on (never the test split)."""
    from ..synthesis.pairs import read_pairs

    summary = train_summary(exp_dir)
    held = set(summary.get("heldout_views") or ())
    if summary.get("val_split") != "train_holdout" or not held:
        raise ValueError(f"{repo_path(exp_dir)}: run has no held-out training views (val_split "
                         f"{summary.get('val_split')!r})")
    root = repo_path(pairs_root)
    items = [it for it in read_pairs(root, "train", dataset=root.name)
             if f"{it.dataset}/{it.scene}/{it.name}" in held]
    if not items:
        raise ValueError(f"{repo_path(pairs_root)}: none of the {len(held)} held-out views of {exp_dir} found")
    return items


SIGMA_METHODS = ("bm3d", "ffdnet")


def benchmark_methods(methods, ckpt: str, base_model: str, ckpt_wo_t0: str | None = None,
                      validation: list | None = None, sigmas=None, max_items: int = 4,
                      **options) -> tuple[dict, dict]:
    """The restoration methods of Table 1, created for one run: ``nifi``/``base_t0``/``img2img`` on ``ckpt``'s
    backbone, ``nifi_wo_t0`` on its own ``ckpt_wo_t0`` (trained with t0 = T), and BM3D/FFDNet with their sigma
    chosen per rate on the ``validation`` items (:func:`~nifi_lib.evaluation.evaluate.choose_sigma`; never the
    test split). ``options`` go to every method (``embeddings``, ``device``, ``dtype``). Returns
    ``(instances, sigma_sweeps)``, the sweeps keyed by method."""
    from ..evaluation.baselines import create_method
    from ..evaluation.evaluate import DEFAULT_SIGMA_SWEEP, choose_sigma

    sweeps: dict = {}
    instances: dict = {}
    for name in methods:
        opts = {**options, "ckpt": ckpt, "base_model": base_model, "ckpt_wo_t0": ckpt_wo_t0}
        if name in SIGMA_METHODS:
            if not validation:
                raise ValueError(f"{name}: its sigma is chosen on validation views; pass validation items")
            sweeps[name] = choose_sigma(name, validation, sigmas=sigmas or DEFAULT_SIGMA_SWEEP, max_items=max_items)
            opts.update(sigma_by_rate=sweeps[name]["sigma_by_rate"], sigma_sweep=sweeps[name])
        m = create_method(name, **opts)
        instances[m.name] = m
    return instances, sweeps


def before_after_examples(ckpt: str | Path, pairs_root: str | Path, backbone: str = "data/embedded/backbone",
                          per_rate: int = 2, split: str = "test", seed: int = 0, t0: int = DEFAULT_T0,
                          embeddings: str | None = None, device: str = "cpu", dtype: str = "fp32") -> list[dict]:
    """For a few held-out views per rate: degraded, frozen base at t0 (no phi-), NiFi, clean ([0, 1]).
    ``backbone``: a folder or a hub id; ``embeddings``: its prompt .npz (None: the folder's own)."""
    import torch

    from ..diffusion.latents import to_model_range, to_unit_range
    from ..io.images import load_image
    from ..paths import resolve_model_ref
    from ..restoration.restorer import Restorer
    from ..synthesis.pairs import read_pairs

    pairs = read_pairs(repo_path(pairs_root), split, check_sizes=True)
    model = resolve_model_ref(backbone)
    kw = {"embeddings": embeddings, "device": device, "dtype": dtype, "t0": t0}
    nifi = Restorer.from_pretrained(model, ckpt=str(repo_path(ckpt)), **kw)
    base = Restorer.from_pretrained(model, ckpt=None, **kw)
    rows = []
    for rate in sorted({p.rate for p in pairs}):
        chosen = [p for p in pairs if p.rate == rate]
        step = max(len(chosen) // per_rate, 1)
        for p in chosen[::step][:per_rate]:
            deg = load_image(p.degraded)
            x = to_model_range(deg)[None]
            with torch.no_grad():
                rows.append({"label": f"{p.scene} / rate {rate} / {p.name}", "rate": rate, "degraded": deg,
                             "base": to_unit_range(base.restore(x, seed=seed).float().cpu())[0],
                             "nifi": to_unit_range(nifi.restore(x, seed=seed).float().cpu())[0],
                             "clean": load_image(p.clean)})
    return rows

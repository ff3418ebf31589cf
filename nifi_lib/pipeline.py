"""The embedded default end to end, as library calls the notebooks share (idempotent, resumable).

``make run`` executes the notebooks in order; each one that needs an earlier stage's output calls the
``ensure_*`` function here, which reuses complete outputs and builds missing ones, so every notebook also
runs on its own (nbval, JupyterLab).
"""
from __future__ import annotations

from pathlib import Path

from .config import Config, load_config
from .paths import EMBEDDED_DIR, repo_path

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
    from .synthesis.pipeline import SynthesisSettings, codec_pairs, synthesize_scene

    run_dir = repo_path(run_dir)
    # The embedded default's schedule: |G_0| = 64, |G_2| = 300 of the ~3000 dense primitives (the paper's
    # c_min = 4096 scaled to these small scenes), i.e. about 10x to 50x fewer primitives than the dense model.
    settings = SynthesisSettings(c_min=c_min, n_top=n_top, finetune_iterations=finetune_iterations, device="cpu")
    pairs_root = run_dir / "pairs"
    for scene in embedded_scene_dirs(scenes):
        art = run_dir / "artifacts" / scene.name
        synthesize_scene(scene, art, settings, progress=progress, log=lambda *_: None)
        for split in splits:
            codec_pairs(art, split, pairs_root / "embedded" / scene.name, progress=progress, log=lambda *_: None,
                        device="cpu")
    return pairs_root


def embedded_validation_views(every: int = 8, scenes: list[str] | None = None):
    """Clean images ``(N, 3, H, W)`` in [0, 1] of the embedded scenes' held-out *training* views: per scene,
    every ``every``-th of its sorted training views, the views :func:`~nifi_lib.training.data.holdout_views`
    keeps out of the gradient steps (never a test view)."""
    import torch

    from .data.scenes import load_scene
    from .io.images import load_image

    views = []
    for scene in embedded_scene_dirs(scenes):
        cams = sorted(load_scene(scene, split="train"), key=lambda c: c.name)
        views += [load_image(c.image_path) for c in cams[::every]]
    return torch.stack(views)


def embedded_config(overrides: dict | None = None, path: str | Path = "configs/embedded.yaml") -> Config:
    return load_config(repo_path(path), overrides=overrides)


def ensure_trained(run_dir: str | Path = "runs/embedded", cfg: Config | None = None, exp: str = "nifi",
                   progress: bool = False, **pairs_kw) -> Path:
    """A trained phi- for the embedded pairs: ``<run_dir>/<exp>/best.pt`` (trains if missing).

    ``best.pt`` is chosen on held-out *training* views (``train_summary.json`` ``"val_split"``), never on the
    test split that notebooks 06/07 score. A run whose summary lacks ``"val_split"`` or has ``"test"`` (an
    older run that selected its checkpoint on the test pairs), or is unreadable, is stale: it is retrained."""
    import json

    from .training.trainer import train

    run_dir = repo_path(run_dir)
    out = run_dir / exp
    try:
        val_split = json.loads((out / "train_summary.json").read_text()).get("val_split")
    except (OSError, ValueError, AttributeError):
        val_split = None
    if not (out / "best.pt").is_file() or val_split in (None, "test"):
        pairs = ensure_embedded_pairs(run_dir, **pairs_kw)
        train(cfg or embedded_config(), pairs, out, progress=progress)
    return out / "best.pt"


def before_after_examples(ckpt: str | Path, pairs_root: str | Path, backbone: str = "data/embedded/backbone",
                          per_rate: int = 2, split: str = "test", seed: int = 0, t0: int = 199) -> list[dict]:
    """For a few held-out views per rate: degraded, frozen base at t0 (no phi-), NiFi, clean ([0, 1])."""
    import torch

    from .io.images import load_image
    from .restoration.restorer import Restorer, to_model_range, to_unit_range
    from .training.data import find_pairs

    pairs = find_pairs(repo_path(pairs_root), split)
    nifi = Restorer.from_pretrained(str(repo_path(backbone)), ckpt=str(repo_path(ckpt)), t0=t0)
    base = Restorer.from_pretrained(str(repo_path(backbone)), ckpt=None, t0=t0)
    rows = []
    for rate in sorted({p.rate for p in pairs}):
        chosen = [p for p in pairs if p.rate == rate]
        step = max(len(chosen) // per_rate, 1)
        for p in chosen[::step][:per_rate]:
            deg = load_image(p.degraded)
            x = to_model_range(deg)[None]
            with torch.no_grad():
                rows.append({"label": f"{p.scene} / rate {rate} / {p.name}", "rate": rate, "degraded": deg,
                             "base": to_unit_range(base.restore(x, seed=seed))[0],
                             "nifi": to_unit_range(nifi.restore(x, seed=seed))[0], "clean": load_image(p.clean)})
    return rows

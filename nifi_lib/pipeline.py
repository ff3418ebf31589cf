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
                          c_min: int = 128, finetune_iterations: int = 300, splits=("train", "test"),
                          progress: bool = False) -> Path:
    """Artifact synthesis for the embedded scenes: ``<run_dir>/artifacts/<scene>`` (pruned, coded levels)
    and ``<run_dir>/pairs/<scene>/rate_<label>/<split>/{clean,degraded}`` (Sec. 3). Returns the pairs root."""
    from .synthesis.pipeline import SynthesisSettings, codec_pairs, synthesize_scene

    run_dir = repo_path(run_dir)
    settings = SynthesisSettings(c_min=c_min, finetune_iterations=finetune_iterations, device="cpu")
    pairs_root = run_dir / "pairs"
    for scene in embedded_scene_dirs(scenes):
        art = run_dir / "artifacts" / scene.name
        synthesize_scene(scene, art, settings, progress=progress, log=lambda *_: None)
        for split in splits:
            codec_pairs(art, split, pairs_root / scene.name, progress=progress, log=lambda *_: None, device="cpu")
    return pairs_root


def embedded_config(overrides: dict | None = None, path: str | Path = "configs/embedded.yaml") -> Config:
    return load_config(repo_path(path), overrides=overrides)


def ensure_trained(run_dir: str | Path = "runs/embedded", cfg: Config | None = None, exp: str = "nifi",
                   progress: bool = False, **pairs_kw) -> Path:
    """A trained phi- for the embedded pairs: ``<run_dir>/<exp>/best.pt`` (trains if missing)."""
    from .training.trainer import train

    run_dir = repo_path(run_dir)
    out = run_dir / exp
    if not (out / "best.pt").is_file() or not (out / "train_summary.json").is_file():
        pairs = ensure_embedded_pairs(run_dir, **pairs_kw)
        train(cfg or embedded_config(), pairs, out, progress=progress)
    return out / "best.pt"

"""Where things live. Relative paths in configs and notebook parameters resolve against the repo root."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"
DATA_DIR = REPO_ROOT / "data"
EMBEDDED_DIR = DATA_DIR / "embedded"
FIGURES_DIR = REPO_ROOT / "figures"
RUNS_DIR = REPO_ROOT / "runs"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# Where save_figure() writes when a notebook passes no folder: $NIFI_FIGURES_DIR if set, else figures/.
# `nifi run-notebooks` sets it per profile (configs/notebooks/_profiles.yaml: figures_dir); the tests'
# profile writes under runs/, so only `make run` refreshes the committed figures/.
ENV_FIGURES_DIR = "NIFI_FIGURES_DIR"


def repo_path(p: str | Path) -> Path:
    """Absolute paths stay; relative ones are taken from the repo root (so notebooks run from any cwd)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def resolve_model_ref(ref: str | Path) -> str:
    """A model argument that is either a local folder or a Hugging Face hub id ("owner/name"): the absolute
    local path when ``ref`` exists (relative paths from the repo root, as :func:`repo_path`), else ``ref``
    unchanged, to be looked up on the hub."""
    local = repo_path(ref)
    return str(local) if local.exists() else str(ref)


def figures_dir(folder: str | Path | None = None) -> Path:
    """The figure folder: ``folder`` if given, else ``$NIFI_FIGURES_DIR``, else ``figures/`` (repo-relative)."""
    import os

    chosen = folder if folder not in (None, "") else (os.environ.get(ENV_FIGURES_DIR) or FIGURES_DIR)
    return repo_path(chosen)

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


def repo_path(p: str | Path) -> Path:
    """Absolute paths stay; relative ones are taken from the repo root (so notebooks run from any cwd)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p

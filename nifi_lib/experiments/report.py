"""Key numbers that notebooks record for the run report (runs/report.md)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_json
from ..paths import RUNS_DIR

ENV_NUMBERS_DIR = "NIFI_NUMBERS_DIR"   # another folder for the numbers (nifi rehearse: never the repo's runs/)
NUMBERS_DIR = Path(os.environ[ENV_NUMBERS_DIR]) if os.environ.get(ENV_NUMBERS_DIR) else RUNS_DIR / "report_numbers"


def record_numbers(notebook: str, numbers: dict[str, Any], folder: str | Path | None = None) -> Path:
    """Merge ``numbers`` into ``runs/report_numbers/<notebook>.json`` (``$NIFI_NUMBERS_DIR`` if set; atomic)."""
    folder = Path(folder) if folder is not None else NUMBERS_DIR
    path = folder / f"{notebook}.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update({k: _plain(v) for k, v in numbers.items()})
    atomic_write_json(path, current)
    return path


def _plain(v: Any) -> Any:
    try:
        import numpy as np
        import torch

        if torch.is_tensor(v):
            v = v.detach().cpu().numpy()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v

"""The one default device of the project: the given one, else CUDA when available, else the CPU."""
from __future__ import annotations


def default_device(device: object | None = None) -> str:
    """``str(device)`` when one is given (``"auto"`` counts as none), else ``"cuda"`` when available, else ``"cpu"``."""
    if device is not None and str(device) not in ("", "auto"):
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["default_device"]

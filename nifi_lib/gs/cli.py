"""``nifi scenes build``: the embedded procedural scenes (``nifi fit``, which reads every scene format, is
registered by :mod:`nifi_lib.data.fit_cli`, one layer up)."""
from __future__ import annotations

import argparse
import importlib


def register(subparsers: argparse._SubParsersAction) -> None:
    try:  # the embedded procedural scenes (optional module)
        scenes = importlib.import_module(f"{__package__}.scenes")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.scenes":
            raise
    else:
        scenes.register(subparsers)

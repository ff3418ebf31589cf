"""``nifi bench``: GPU benchmark of the training step and the restorer (:mod:`nifi_lib.bench.gpu`)."""
from __future__ import annotations


def cmd_bench(args) -> int:
    from .gpu import run

    return run(args)


def register(sub) -> None:
    from .gpu import build_parser

    p = sub.add_parser("bench", help="time the NiFi training step and restoration (SD3-medium-shaped random weights)",
                       description="Time NiFiTrainer.train_step (batch 4, 512x512) and Restorer.restore "
                                   "(512/1024/1920x1080, batch 1 and 4), eager vs the fast paths; see "
                                   "docs/performance.md.")
    build_parser(p)
    p.set_defaults(func=cmd_bench)

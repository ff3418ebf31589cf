"""The ``nifi`` command line: one subcommand per pipeline step.

Each area registers its own subcommands (``register(subparsers)`` in its ``cli`` module), so this file
only assembles them and turns the project's errors into clear one-line messages (exit code 2).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import NifiError

COMMAND_MODULES = [
    "nifi_lib.data.cli",            # download, prompts
    "nifi_lib.gs.cli",              # scenes build, fit
    "nifi_lib.synthesis.cli",       # synthesize, pairs, prepare-benchmark
    "nifi_lib.training.cli",        # prior train, train, verify
    "nifi_lib.restoration.cli",     # restore, ckpt import/export
    "nifi_lib.evaluation.cli",      # weights, eval, benchmark
    "nifi_lib.notebook_runner",     # run-notebooks
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nifi", description="NiFi: Nix and Fix (arXiv 2602.04549) reproduction.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # area not present in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except NifiError as e:
        print(f"nifi {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nifi {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

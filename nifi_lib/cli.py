"""The ``nifi`` command line: one subcommand per pipeline step.

Each area registers its own subcommands (``register(subparsers)`` in its ``cli`` module), so this file
only assembles them and turns the project's errors into clear one-line messages (exit code 2).

With ``$NIFI_STATS_FILE`` set, the command writes a small JSON there when it exits (``peak_host_mb``: this
process' peak RSS; ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` summed over the devices, null when CUDA
was never used; ``rc``): how ``nifi rehearse`` measures each stage.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import NifiError

COMMAND_MODULES = [
    "nifi_lib.data.cli",            # download, prompts
    "nifi_lib.data.fit_cli",        # fit (reads every scene format: data layer, above gs)
    "nifi_lib.gs.cli",              # scenes build
    "nifi_lib.diffusion.cli",       # embed-prompts, backbone build-random
    "nifi_lib.synthesis.cli",       # synthesize, pairs, prepare-benchmark
    "nifi_lib.training.cli",        # prior train, train, verify
    "nifi_lib.restoration.cli",     # restore, ckpt import/export
    "nifi_lib.evaluation.cli",      # weights, eval, benchmark, render-path
    "nifi_lib.bench.cli",           # bench (GPU performance)
    "nifi_lib.experiments.notebook_runner",  # run-notebooks
    "nifi_lib.experiments.rehearse",         # rehearse (the paper path on a random SD3, end to end)
    "nifi_lib.experiments.embedded_assets",  # embedded-assets (rebuild scenes, prior, checkpoint; GPU)
    "nifi_lib.experiments.shipped_run",      # ship-run (the embedded run make run reuses: data/embedded/run)
]
ENV_STATS_FILE = "NIFI_STATS_FILE"


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
    stats = os.environ.get(ENV_STATS_FILE)
    if not stats:
        return _main(argv)
    rc: int | None = None
    try:
        rc = _main(argv)
        return rc
    except SystemExit as e:   # argparse errors and --help
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        raise
    finally:
        _write_stats(stats, rc)


def _write_stats(path: str, rc: int | None) -> None:
    """Peak host RSS and peak CUDA memory of this process, to ``path`` (best effort: never masks the result)."""
    try:
        import json
        import resource

        peak_gpu = None
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            peak_gpu = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2 ** 20
        host_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
        with open(path, "w") as f:
            json.dump({"peak_host_mb": round(host_kb / 1024, 1),
                       "peak_gpu_mb": None if peak_gpu is None else round(peak_gpu, 1), "rc": rc}, f)
    except Exception as e:  # noqa: BLE001 - measurement only
        print(f"nifi: could not write {path}: {e}", file=sys.stderr)


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except NifiError as e:
        _close_progress_bars()
        print(f"nifi {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment, not a bug: disk full, permissions, a vanished file...
        _close_progress_bars()
        print(f"nifi {args.command}: error: {_os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"nifi {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _close_progress_bars() -> None:
    """Close the tqdm bars an exception left open, so that the error starts on its own line."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


def _os_error_message(e: OSError) -> str:
    """``<file>: <reason>`` for an OSError (its file name first, as the project's own errors)."""
    reason = e.strerror or str(e) or e.__class__.__name__
    files = [f for f in (e.filename, e.filename2) if f]
    return f"{' -> '.join(map(str, files))}: {reason}" if files else f"{e.__class__.__name__}: {reason}"


if __name__ == "__main__":
    sys.exit(main())

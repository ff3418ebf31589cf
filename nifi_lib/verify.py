"""The registry of ``nifi verify``'s executable checks (core: every layer may add checks, none imports upwards).

A check is a function without arguments returning a :class:`CheckResult` or a list of them. Each stage keeps
its checks next to what they check (the training objectives in :mod:`nifi_lib.training.verify`, the Eq. 7
restorer in :mod:`nifi_lib.restoration.reference`) and adds them with :func:`register_check`;
:func:`run_check_functions` runs a list of them, :func:`print_table` prints the results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class CheckResult:
    equation: str
    function: str
    check: str
    passed: bool
    detail: str = ""


_REGISTRY: list[Callable[[], "CheckResult | list[CheckResult]"]] = []


def register_check(fn: Callable[[], "CheckResult | list[CheckResult]"]) -> Callable:
    """Add a check to :func:`nifi_lib.training.verify.run_checks` (usable as a decorator). Registering the same
    function twice is a no-op."""
    if fn not in _REGISTRY:
        _REGISTRY.append(fn)
    return fn


def run_check_functions(fns) -> list[CheckResult]:
    """Run every check of ``fns``. An exception becomes a failed result naming it."""
    results: list[CheckResult] = []
    for fn in fns:
        try:
            r = fn()
            results.extend(r if isinstance(r, list) else [r])
        except Exception as e:  # a broken check must show up as a failure, not abort the table
            results.append(CheckResult("?", getattr(fn, "__name__", str(fn)), "raised", False, f"{type(e).__name__}: {e}"))
    return results


def print_table(results: list[CheckResult], width: int = 110) -> None:
    """One line per check: status, equation, function, what was checked, detail (truncated to ``width``)."""
    for r in results:
        line = f"{'PASS' if r.passed else 'FAIL'}  {r.equation:<18} {r.function:<55} {r.check}"
        print(line)
        if r.detail:
            print(f"      {r.detail[:width]}")
    n_ok = sum(r.passed for r in results)
    print(f"{n_ok}/{len(results)} checks passed")

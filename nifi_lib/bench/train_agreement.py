"""Issue 18's quality check of the training fast path: "the loss after N identical steps agrees to 1e-3 relative".

One number in bf16 says little: bf16's own rounding compounds over the steps, so the eager path differs from itself
computed more precisely by about as much. :func:`loss_check` therefore runs ``N`` :meth:`NiFiTrainer.train_step`
on the same batch from fresh trainers built the same way (backbone from the same seed; ``train.seed`` seeds the
adapters' initialisation and the trainer's noise generator, so every trainer draws the same dropout masks,
timesteps and noise), whose trainable parameters are checked equal (SHA-256) before step 1:

- ``eager``: the eager path in the run's precision (bf16 autocast on CUDA; float32 on the CPU), the issue's reference;
- ``optimised``: the fast path (torch.compile + CUDA graphs on CUDA, torch.compile on the CPU; channels_last alone
  when compiling is off);
- ``fp32``: the eager path in float32 (no autocast; on CUDA without TF32), on the same bf16-representable base
  weights: the precision reference.

:func:`agreement_report` (a pure function of the three ``loss_total`` curves) gives the issue's number (optimised
vs eager at step N, and its 1e-3 verdict), its maximum over the steps, and the floor: eager vs fp32 at the same
step (bf16's own error). A fast path whose deviation is within that floor computes the same thing as the eager
path up to rounding.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

TOLERANCE = 1e-3                       # issue 18: relative agreement of the loss after N identical steps
MODES = ("optimised", "eager", "fp32")  # the order loss_check runs them in (a reused trainer goes first)
DEFAULT_STEPS = 8                       # on CUDA; off elsewhere unless asked for


def check_steps(requested: int | None, device: torch.device) -> int:
    """Steps of the check (``nifi bench --loss-check``): as requested, else :data:`DEFAULT_STEPS` on CUDA and 0 (off)
    elsewhere."""
    if requested is None:
        return DEFAULT_STEPS if device.type == "cuda" else 0
    return max(int(requested), 0)


def rel_diff(a: float, ref: float) -> float:
    """``|a - ref| / |ref|`` (NaN if either is not finite)."""
    if not (math.isfinite(a) and math.isfinite(ref)):
        return float("nan")
    return abs(a - ref) / max(abs(ref), 1e-12)


def run_precision(cfg, device: torch.device) -> str:
    """What :class:`NiFiTrainer` computes in with ``cfg`` on ``device``: its autocast dtype (CUDA only), else fp32."""
    mp = cfg.train.mixed_precision
    return mp if device.type == "cuda" and mp in ("bf16", "fp16") else "fp32"


def optimised_paths(device: torch.device, compile: bool = True) -> dict:
    """``enable_fast_paths`` arguments of the optimised trainer: compile + CUDA graphs on CUDA, compile on the CPU,
    channels_last alone without compile."""
    if not compile:
        return {"compile": False, "channels_last": True}
    return {"compile": True, "cuda_graphs": device.type == "cuda"}


def optimised_name(device: torch.device, compile: bool = True) -> str:
    """The bench's name of the optimised path (``+compile+cuda_graphs``, ``+compile``, ``+channels_last``)."""
    p = optimised_paths(device, compile)
    return ("+compile" + ("+cuda_graphs" if p["cuda_graphs"] else "")) if p["compile"] else "+channels_last"


def params_checksum(trainer) -> str:
    """SHA-256 of the trainable parameters (phi- then phi+, float32, contiguous, in order): equal before step 1,
    equal starting weights."""
    h = hashlib.sha256()
    for p in trainer.phi_minus + trainer.phi_plus:
        h.update(p.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """float32 matmuls and cuDNN convolutions without TF32 on CUDA (the legacy flags, restored on exit)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def release(device: torch.device) -> None:
    """Free what dropped trainers held (on CUDA also the CUDA-graph trees' memory pools)."""
    gc.collect()
    if device.type == "cuda":
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()
        torch.cuda.empty_cache()


def build_trainer(mode: str, cfg, make_backbone: Callable, device: torch.device, perceptual=None,
                  perceptual_name: str = "lpips", compile: bool = True, fp32_checkpointing: bool = False):
    """A fresh :class:`NiFiTrainer` of ``mode`` (see :data:`MODES`) on ``make_backbone()`` with a copy of ``cfg``.
    ``fp32``: mixed precision off and the base cast to float32 after the adapters are added (the same bf16-rounded
    weights and adapter initialisation as the other modes); ``fp32_checkpointing`` adds gradient checkpointing
    (the same function, for a float32 step that would not fit otherwise). Call it under :func:`full_fp32`."""
    from ..training.trainer import NiFiTrainer

    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    cfg = copy.deepcopy(cfg)
    if mode == "fp32":
        cfg.train.mixed_precision = "no"
        cfg.train.gradient_checkpointing = bool(cfg.train.gradient_checkpointing or fp32_checkpointing)
    trainer = NiFiTrainer(cfg, make_backbone(), device=str(device), perceptual=perceptual,
                          perceptual_name=perceptual_name, compile=False)
    if mode == "fp32":
        trainer.bb.to(dtype=torch.float32)
    elif mode == "optimised":
        trainer.enable_fast_paths(**optimised_paths(device, compile))
    return trainer


def run_steps(trainer, clean: torch.Tensor, degraded: torch.Tensor, steps: int,
              time_left: Callable[[], float] | None = None) -> list[dict]:
    """Up to ``steps`` train steps on the same batch (fewer if ``time_left()`` drops to 0); their infos as python
    numbers (one synchronisation at the end; the 0-dim outputs are copied, so a CUDA graph's replay cannot
    overwrite them)."""
    from ..training.trainer import info_to_python

    rows = []
    for _ in range(steps):
        if time_left is not None and rows and time_left() <= 0:
            break
        info = trainer.train_step(clean, degraded)
        rows.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in info.items()})
    return info_to_python(rows)


@dataclass
class Recorded:
    """Steps a bench variant already ran from a fresh trainer built as :func:`build_trainer` builds that mode's:
    its infos (python numbers, step 1 first), the :func:`params_checksum` before step 1, and the trainer itself if
    nothing but those steps has touched it (then it may go on to N steps)."""

    rows: list[dict]
    checksum: str
    source: str
    trainer: object | None = None


def _max(values: list[float]) -> float:
    """The maximum, NaN if any value is NaN (a non-finite loss must not hide behind the finite steps)."""
    return float("nan") if any(v != v for v in values) else max(values)


def agreement_report(curves: dict[str, list[float]], tolerance: float = TOLERANCE, precision: str = "bf16") -> dict:
    """The check's verdict from the ``loss_total`` curves (step 1 first) of ``eager``, ``optimised`` and (optional)
    ``fp32``, compared over the steps all given curves have (N).

    ``rel_diff``: optimised vs eager at step N (the issue's number) against ``tolerance`` (``within_tolerance``);
    ``rel_diff_max``: its maximum over steps 1..N; ``floor_rel_diff``: eager vs fp32 at step N (``precision``'s own
    error after the same steps: the noise floor); ``within_floor``: ``rel_diff <= floor_rel_diff``;
    ``within_floor_all_steps``: ``rel_diff_max <= floor_rel_diff_max`` (the single step N can fall where the curves
    happen to cross). Step 1 (identical weights, nothing updated yet) isolates the forward pass's rounding from the
    trajectory's. ``steps`` is ``[N, N]`` (steps of the eager and of the optimised curve compared, as the bench's
    earlier field)."""
    e, o, f = curves.get("eager") or [], curves.get("optimised") or [], curves.get("fp32") or []
    n = min(len(e), len(o), len(f)) if f else min(len(e), len(o))
    rep: dict = {"steps": [n, n], "tolerance": tolerance, "precision": precision,
                 "curves": {k: list(v) for k, v in curves.items() if v}}
    if n == 0:
        missing = [k for k in ("eager", "optimised") if not curves.get(k)]
        rep.update(rel_diff=None, within_tolerance=None, floor_rel_diff=None, within_floor=None,
                   verdict=f"not compared: no {' / '.join(missing) or 'common'} steps")
        return rep
    per_step = [rel_diff(o[i], e[i]) for i in range(n)]
    rel = per_step[-1]
    rep.update(rel_diff=rel, rel_diff_max=_max(per_step), rel_diff_per_step=per_step, within_tolerance=rel <= tolerance)
    text = (f"optimised vs eager {precision} after {n} steps: {rel:.2e} relative (max {rep['rel_diff_max']:.2e} over "
            f"the steps): issue 18's {tolerance:g} {'holds' if rep['within_tolerance'] else 'FAILS'}")
    if not f:
        rep.update(floor_rel_diff=None, within_floor=None)
        rep["verdict"] = text + f"; no fp32 reference, so no {precision} floor to compare with"
        return rep
    floor_steps = [rel_diff(e[i], f[i]) for i in range(n)]
    floor = floor_steps[-1]
    ratio = float("nan") if not (math.isfinite(rel) and math.isfinite(floor)) else \
        rel / floor if floor > 0 else (0.0 if rel == 0 else math.inf)
    rep.update(floor_rel_diff=floor, floor_rel_diff_max=_max(floor_steps), floor_per_step=floor_steps,
               optimised_vs_fp32_rel_diff=rel_diff(o[n - 1], f[n - 1]), within_floor=rel <= floor, ratio_to_floor=ratio)
    rep["within_floor_all_steps"] = rep["rel_diff_max"] <= rep["floor_rel_diff_max"]
    own = f"{precision}'s own error" if precision != "fp32" else "the fp32 reference's reproducibility"
    rep["verdict"] = (text + f"; {own} at step {n} (eager {precision} vs eager fp32): {floor:.2e}: the fast path's "
                      f"deviation is {'WITHIN' if rep['within_floor'] else 'ABOVE'} it ({ratio:.2g}x; optimised vs "
                      f"fp32 {rep['optimised_vs_fp32_rel_diff']:.2e}); over steps 1..{n} "
                      f"{'within' if rep['within_floor_all_steps'] else 'above'} it (max {rep['rel_diff_max']:.2e} vs "
                      f"{rep['floor_rel_diff_max']:.2e}); step 1 (same weights, no update yet): {per_step[0]:.2e} vs "
                      f"{floor_steps[0]:.2e}")
    return rep


def loss_check(steps: int, clean: torch.Tensor, degraded: torch.Tensor, cfg, make_backbone: Callable,
               device: torch.device, perceptual=None, perceptual_name: str = "lpips", compile: bool = True,
               fp32_checkpointing: bool = False, recorded: dict[str, Recorded] | None = None,
               time_left: Callable[[], float] | None = None, compile_estimate_s: float = 0.0) -> dict:
    """Run the check (module docstring) for ``steps`` steps and return :func:`agreement_report` plus, per mode
    (``runs``), where its curve came from (``source``: a fresh trainer, or a bench variant's curve in ``recorded``,
    continued to ``steps`` when shorter and its trainer is given), precision, seconds and skipped steps;
    ``checksum``: the trainable parameters' SHA-256 before step 1, the same for every mode (else
    :class:`AssertionError`, before a differing trainer steps).

    ``time_left()`` (seconds): a mode that needs a fresh trainer is skipped when it is not positive, or, for a
    compiled optimised trainer, below ``compile_estimate_s``; steps stop when it runs out. A mode that fails (e.g.
    out of memory) is reported in ``runs`` and ``notes``; the others still are."""
    left = time_left or (lambda: math.inf)
    recorded = dict(recorded or {})
    prec = run_precision(cfg, device)
    curves: dict[str, list[float]] = {}
    runs: dict[str, dict] = {}
    notes: list[str] = []
    checksum = None

    def same_start(mode: str, start: str) -> None:
        nonlocal checksum
        if checksum is not None and start != checksum:
            raise AssertionError(f"loss check: the {mode} trainer starts from other weights (trainable parameters' "
                                 f"SHA-256 {start[:12]} != {checksum[:12]})")
        checksum = start

    for mode in MODES:
        rec = recorded.pop(mode, None)
        run = runs[mode] = {"precision": prec if mode != "fp32" else
                            "fp32" + (" (TF32 off)" if device.type == "cuda" else "")}
        if mode == "optimised":
            run["paths"] = optimised_name(device, compile)
        t, trainer = time.perf_counter(), None
        try:
            if rec is not None and (len(rec.rows) >= steps or rec.trainer is not None):
                same_start(mode, rec.checksum)
                rows = list(rec.rows[:steps])
                run["source"] = f"{rec.source}: its first {len(rows)} steps"
                if len(rows) < steps:
                    rows += run_steps(rec.trainer, clean, degraded, steps - len(rows), left)
                    run["source"] = f"{rec.source}: its {len(rec.rows)} steps, continued to {len(rows)}"
            else:
                need = compile_estimate_s if mode == "optimised" and compile else 0.0
                if left() <= need:
                    notes.append(f"{mode} skipped (time budget: {left():.0f} s left, a fresh trainer needs "
                                 f"~{need:.0f} s more than its steps)")
                    run["source"] = "skipped (time budget)"
                    continue
                with full_fp32(device) if mode == "fp32" else contextlib.nullcontext():
                    trainer = build_trainer(mode, cfg, make_backbone, device, perceptual, perceptual_name, compile,
                                            fp32_checkpointing)
                    same_start(mode, params_checksum(trainer))
                    rows = run_steps(trainer, clean, degraded, steps, left)
                run["gradient_checkpointing"] = bool(trainer.cfg.train.gradient_checkpointing)
                run["source"] = "fresh trainer"
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - one failed mode leaves the others' report
            run["error"] = repr(e)
            notes.append(f"{mode} failed: {e!r}")
            continue
        finally:   # no trainer outlives its mode (the next one may need all the memory)
            trainer = None
            if rec is not None:
                rec.trainer = None
            release(device)
        curves[mode] = [r["loss_total"] for r in rows]
        run.update(seconds=round(time.perf_counter() - t, 2), steps=len(rows),
                   skipped=sum(int(r["skipped"]) for r in rows))
    notes += [f"{m}: {len(curves[m])} of {steps} steps (time budget)" for m in curves if len(curves[m]) < steps]
    rep = agreement_report(curves, precision=prec)
    return {**rep, "requested_steps": steps, "optimised": optimised_name(device, compile), "checksum": checksum,
            "same_start": len(curves) > 1, "runs": runs, "notes": notes}

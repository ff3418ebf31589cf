"""Faults during ``nifi train``: a loss that turns NaN (``train.nan_policy`` skip / stop), a full disk while a
checkpoint is written, a SIGKILL mid-run followed by ``--resume``, a log row torn by a kill. The guarantee:
``latest.pt`` always holds a loadable, finite state of a step that was logged, a failed write never replaces
it, a resumed run loses at most ``train.save_every`` steps and continues ``train_log.csv`` without duplicates."""
from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import NIFI_BIN
from faultkit import assert_cli_error, copytree, leftovers, snapshot


def _rows(exp: Path) -> list[dict]:
    with open(exp / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _steps(exp: Path) -> list[int]:
    return [int(r["step"]) for r in _rows(exp)]


def _ckpt(exp: Path, name: str = "latest.pt") -> dict:
    from nifi_lib.restoration.io import safe_torch_load

    return safe_torch_load(exp / name)


def _finite(ck: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ck["adapters"].values())


def _train(nifi, cfg, pairs, exp, *sets, resume=False):
    return nifi("train", "--config", cfg, "--data_root", pairs, "--exp", exp, "--device", "cpu",
                *(["--resume"] if resume else []), "--set", *sets)


@pytest.fixture
def nan_from_call(monkeypatch):
    """``nan_from_call(k)``: the phi- loss is NaN from its k-th evaluation on (of this process)."""
    import nifi_lib.training.trainer as T

    real = T.perceptual_matching_loss

    def arm(k: int):
        calls = [0]

        def loss(*a, **kw):
            total, terms = real(*a, **kw)
            calls[0] += 1
            return (total * float("nan") if calls[0] >= k else total), terms

        monkeypatch.setattr(T, "perceptual_matching_loss", loss)
    return arm


# ------------------------------------------------------------------------------------------- NaN

def test_nan_loss_policy_skip(train_config, pairs_root, exp_copy, nifi, nan_from_call):
    """skip: the non-finite steps update nothing (adapters, moments, step counts); the run finishes, counts
    them in train_summary.json and marks them in the log."""
    at_step_2 = _ckpt(exp_copy)
    nan_from_call(1)  # every step of the resumed run (steps 3, 4) is non-finite
    res = _train(nifi, train_config, pairs_root, exp_copy, "train.max_steps=4", "train.nan_policy=skip", resume=True)
    assert res.rc == 0, res.err[-2000:]
    ck = _ckpt(exp_copy)
    assert ck["step"] == 4 and _finite(ck)
    assert all(torch.equal(ck["adapters"][k], at_step_2["adapters"][k]) for k in ck["adapters"])
    rows = _rows(exp_copy)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["skipped"]) for r in rows] == [0, 0, 1, 1]
    import json
    assert json.loads((exp_copy / "train_summary.json").read_text())["skipped_steps"] == 2
    assert not leftovers(exp_copy)


def test_nan_loss_policy_stop(train_config, pairs_root, exp_copy, nifi, nan_from_call):
    """stop: a one-line error naming the step and latest.pt; latest.pt is the last good (finite) state and the
    log ends at its step; `--resume` continues from it once the cause is gone."""
    nan_from_call(3)  # resumed at step 2: steps 3 and 4 are fine, step 5 is not
    res = _train(nifi, train_config, pairs_root, exp_copy, "train.max_steps=6", "train.nan_policy=stop", resume=True)
    assert_cli_error(res, "train", "non-finite loss at step 5", str(exp_copy / "latest.pt"), "step 4")
    ck = _ckpt(exp_copy)
    assert ck["step"] == 4 and _finite(ck)
    assert _steps(exp_copy) == [1, 2, 3, 4]
    assert not leftovers(exp_copy)


# ------------------------------------------------------------------------------------------- disk full

def _full_disk(monkeypatch, kind: str) -> list:
    """Every ``torch.save`` writes half its bytes, then fails as on a full disk: ``OSError(ENOSPC)``, or what
    torch really raises there (a RuntimeError from its zip writer) while the file system reports 0 bytes free."""
    import nifi_lib.io.atomic as atomic

    real, calls = torch.save, []

    def save(obj, f, *a, **kw):
        buf = io.BytesIO()
        real(obj, buf, *a, **kw)
        data = buf.getvalue()
        Path(f).write_bytes(data[: len(data) // 2])
        calls.append(str(f))
        if kind == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save)
    if kind == "torch_runtimeerror":
        monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 0)
    return calls


@pytest.mark.parametrize("kind", ["oserror", "torch_runtimeerror"])
def test_disk_full_while_writing_checkpoint(kind, train_config, pairs_root, exp_copy, nifi, monkeypatch):
    """The write of latest.pt fails half-way: a one-line error naming latest.pt and the full disk; the previous
    latest.pt is byte-identical and loadable, no temporary file is left; after space is freed, `--resume`
    continues from it and the log has each step once."""
    latest = exp_copy / "latest.pt"
    before = snapshot(latest)
    calls = _full_disk(monkeypatch, kind)
    res = _train(nifi, train_config, pairs_root, exp_copy, "train.max_steps=4", resume=True)
    assert calls, "the checkpoint writer was never called"
    assert_cli_error(res, "train", str(latest), "No space left on device")
    assert snapshot(latest) == before and _ckpt(exp_copy)["step"] == 2
    assert not leftovers(exp_copy)
    monkeypatch.undo()   # space freed
    res = _train(nifi, train_config, pairs_root, exp_copy, "train.max_steps=4", resume=True)
    assert res.rc == 0, res.err[-2000:]
    assert _ckpt(exp_copy)["step"] == 4 and _steps(exp_copy) == [1, 2, 3, 4]


def test_disk_full_while_appending_the_log(train_config, pairs_root, exp_copy, nifi, monkeypatch):
    """The durable append of train_log.csv fails (ENOSPC at fsync): a one-line error naming the log; latest.pt
    (written after the append) is unchanged; `--resume` after space is freed drops the unsynced rows."""
    latest = exp_copy / "latest.pt"
    before = snapshot(latest)
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("train_log.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    res = _train(nifi, train_config, pairs_root, exp_copy, "train.max_steps=4", resume=True)
    monkeypatch.undo()
    assert snapshot(latest) == before
    assert_cli_error(res, "train", str(exp_copy / "train_log.csv"), "No space left on device")
    res = _train(nifi, train_config, pairs_root, exp_copy, "train.max_steps=4", resume=True)
    assert res.rc == 0, res.err[-2000:]
    assert _steps(exp_copy) == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------- SIGKILL

N_STEPS, SAVE_EVERY = 120, 5


def _run_sets(n=N_STEPS):
    return [f"train.max_steps={n}", f"train.save_every={SAVE_EVERY}", "train.val_every=100000"]


def test_sigkill_mid_run_then_resume(train_config, pairs_root, nifi, tmp_path):
    """A real `nifi train` process is killed with SIGKILL once it has saved twice; `--resume` loses at most
    save_every steps, ends at max_steps, and train_log.csv holds each step exactly once, with the same losses
    as an uninterrupted run (resume is exact)."""
    exp = tmp_path / "killed"
    stderr = tmp_path / "stderr.txt"
    cmd = [str(NIFI_BIN), "train", "--config", str(train_config), "--data_root", str(pairs_root), "--exp", str(exp),
           "--device", "cpu", "--set", *_run_sets()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            latest, deadline, seen = exp / "latest.pt", time.time() + 120, set()
            while time.time() < deadline and proc.poll() is None:
                if latest.exists():
                    seen.add(latest.stat().st_mtime_ns)
                    if len(seen) >= 2:   # at least two saves: mid-run, with a checkpoint to resume from
                        break
                time.sleep(0.005)
            assert proc.poll() is None, f"the run ended before it could be killed:\n{stderr.read_text()[-2000:]}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    progress = [int(m) for m in re.findall(r"(\d+)/%d" % N_STEPS, stderr.read_text())]
    reached = max(progress, default=0)            # last step the progress bar showed (<= the real one)
    k = _ckpt(exp)["step"]                        # loadable: atomic writes, even under SIGKILL
    assert 0 < k < N_STEPS and k % SAVE_EVERY == 0
    assert reached - k <= SAVE_EVERY, f"killed at step >= {reached}, checkpoint at {k}"
    logged = _steps(exp)
    assert logged[:k] == list(range(1, k + 1)) and len(logged) <= k + SAVE_EVERY

    res = _train(nifi, train_config, pairs_root, exp, *_run_sets(), resume=True)
    assert res.rc == 0, res.err[-2000:]
    assert _ckpt(exp)["step"] == N_STEPS
    assert _steps(exp) == list(range(1, N_STEPS + 1)), "train_log.csv must hold each step once, in order"
    stale = [p for p in leftovers(exp) if not re.search(r"/\.(latest|best)\.pt\.\w+\.pt$", p)]
    assert not stale, stale  # only a checkpoint temporary of the killed process may remain (never read)

    ref = tmp_path / "uninterrupted"
    assert _train(nifi, train_config, pairs_root, ref, *_run_sets()).rc == 0
    assert [r["loss_total"] for r in _rows(exp)] == [r["loss_total"] for r in _rows(ref)]


def test_log_row_torn_by_a_kill_is_dropped_on_resume(train_config, pairs_root, nifi, tmp_path):
    """A kill (or a full disk) in the middle of the log append (rows 13-16, written before latest.pt of step
    16) leaves a partial last row: here "1", the first byte of "13,...". `--resume` from step 12 must drop it,
    not keep it as a second step 1 with empty values."""
    exp = tmp_path / "exp"
    sets = ["train.save_every=4", "train.val_every=100000"]
    assert _train(nifi, train_config, pairs_root, exp, "train.max_steps=12", *sets).rc == 0
    with open(exp / "train_log.csv", "a") as f:
        f.write("1")
    res = _train(nifi, train_config, pairs_root, exp, "train.max_steps=14", *sets, resume=True)
    assert res.rc == 0, res.err[-2000:]
    rows = _rows(exp)
    assert [int(r["step"]) for r in rows] == list(range(1, 15))
    assert all(r["loss_total"] and math.isfinite(float(r["loss_total"])) for r in rows)

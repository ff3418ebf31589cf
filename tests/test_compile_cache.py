"""Inductor's compile cache (issue 18: a warm first step): the file format, its errors, the trainer's wiring.

The real round trip compiles a two-op function with inductor on the CPU, saves its artifacts, and loads them
into a fresh process with an empty inductor cache (the situation of a fresh GPU machine); the trainer test
stubs the compiler (compiling the tiny backbone on 2 CPU cores takes minutes) and checks when the cache is
loaded and written.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer_helpers import make_backbone_dir, make_pairs, tiny_config
from nifi_lib.diffusion import fast_paths
from nifi_lib.diffusion.fast_paths import COMPILE_CACHE_MAGIC, CompileCacheError, load_compile_cache, save_compile_cache

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, torch
from nifi_lib.diffusion.fast_paths import load_compile_cache, save_compile_cache
mode, path = sys.argv[1], sys.argv[2]
loaded = load_compile_cache(path) if mode == "load" else None
f = torch.compile(lambda x: torch.sin(x) * 2 + torch.cos(x))
x = torch.linspace(-1, 1, 33)
y = f(x)
saved = save_compile_cache(path) if mode == "save" else None
print(json.dumps({"loaded": loaded, "saved": saved, "err": float((y - (torch.sin(x) * 2 + torch.cos(x))).abs().max())}))
"""


def _child(mode: str, path: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_compile_cache_round_trip_into_a_fresh_inductor_cache(tmp_path):
    path = tmp_path / "cc.bin"
    saved = _child("save", path, tmp_path / "inductor_a")
    assert saved["err"] < 1e-6 and saved["saved"] == path.stat().st_size > len(COMPILE_CACHE_MAGIC)
    assert path.read_bytes().startswith(COMPILE_CACHE_MAGIC)
    loaded = _child("load", path, tmp_path / "inductor_b")   # an empty inductor cache: a fresh machine
    assert loaded["err"] < 1e-6
    assert loaded["loaded"]["bytes"] == saved["saved"] and loaded["loaded"]["artifacts"].get("inductor", 0) >= 1
    # the fresh cache was populated from the file: inductor's FX graph cache holds the compiled graph
    assert any((tmp_path / "inductor_b").rglob("*")), "load_compile_cache must populate the local inductor cache"


def test_compile_cache_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_compile_cache(tmp_path / "missing.bin")
    bad = tmp_path / "not_a_cache.bin"
    bad.write_bytes(b"PK\x03\x04 a zip, not a cache")
    with pytest.raises(CompileCacheError, match="not_a_cache.bin.*header"):
        load_compile_cache(bad)
    trunc = tmp_path / "truncated.bin"
    trunc.write_bytes(COMPILE_CACHE_MAGIC + b"\x00\x01garbage")
    with pytest.raises(CompileCacheError, match="truncated.bin"):
        load_compile_cache(trunc)


def test_save_without_compiled_artifacts_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    assert save_compile_cache(tmp_path / "cc.bin") is None and not (tmp_path / "cc.bin").exists()


def test_trainer_loads_the_cache_first_and_writes_it_after_step_3_and_at_the_end(tmp_path, monkeypatch):
    import nifi_lib.training.trainer as T

    events = []
    monkeypatch.setattr(T, "optimize_backbone", lambda bb, **kw: events.append(("compile", kw["compile"])))
    monkeypatch.setattr(T, "load_compile_cache", lambda p: events.append(("load", Path(p).name)) or {"bytes": 1})

    def fake_save(p):
        events.append(("save", Path(p).name))
        Path(p).write_bytes(COMPILE_CACHE_MAGIC + b"x")
        return len(COMPILE_CACHE_MAGIC) + 1
    monkeypatch.setattr(T, "save_compile_cache", fake_save)
    bb_dir, pairs = make_backbone_dir(tmp_path / "bb"), make_pairs(tmp_path / "pairs")
    cache = tmp_path / "cc.bin"
    cfg = tiny_config(bb_dir)
    cfg.train.max_steps, cfg.train.compile, cfg.train.compile_cache = 5, True, str(cache)
    s = T.train(cfg, pairs, tmp_path / "exp", progress=False, device="cpu")
    # no file yet: nothing loaded; written after step 3 (the compiled steps) and again at the end
    assert events == [("compile", True), ("save", "cc.bin"), ("save", "cc.bin")]
    assert s["compile_cache"] == {"path": str(cache), "loaded": None, "saved_bytes": len(COMPILE_CACHE_MAGIC) + 1}
    events.clear()
    s = T.train(cfg, pairs, tmp_path / "exp2", progress=False, device="cpu")
    assert events[0] == ("load", "cc.bin") and events[1] == ("compile", True)   # loaded before anything compiles
    assert s["compile_cache"]["loaded"] == {"bytes": 1}
    events.clear()
    cfg.train.compile = False   # without compile the cache is neither read nor written
    T.train(cfg, pairs, tmp_path / "exp3", progress=False, device="cpu")
    assert events == []

"""``nifi ship-run`` and the seeding of a run folder from ``data/embedded/run`` (experiments.shipped_run).

A shipped synthesis is seeded only where the run folder has none and is then reused only with the same settings;
a shipped run only when it was trained with exactly the requested config; nothing else changes.
"""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from nifi_lib.cli import main
from nifi_lib.experiments import embedded, shipped_run as S
from nifi_lib.io.hashing import sha256_file
from nifi_lib.synthesis.pipeline import SynthesisSettings, synth_complete, synthesize_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SETTINGS = SynthesisSettings(c_min=30, finetune_iterations=2)


def _fake_run(folder, cfg, val_split="train_holdout"):
    """The files of a finished run (what ensure_trained checks), without training: the copying is under test."""
    folder.mkdir(parents=True)
    torch.save({"step": cfg.train.max_steps, "marker": torch.arange(3), "adapters": {"a": torch.ones(2)},
                "optim_minus": {"state": torch.zeros(5)}, "optim_plus": {}}, folder / "best.pt")
    (folder / "train_summary.json").write_text(json.dumps({
        "steps": cfg.train.max_steps, "seconds": 1.0, "val_split": val_split, "config": cfg.to_dict(),
        "best_metric": {"name": "lpips", "value": 0.1, "step": 2}}))
    with open(folder / "train_log.csv", "w", newline="") as f:
        csv.writer(f).writerows([["step", "loss_total"], [1, 0.5]])


@pytest.fixture(scope="module")
def made(toy, tmp_path_factory):
    """A run folder with one synthesized scene and two finished runs, and what `ship-run` made of it."""
    base = tmp_path_factory.mktemp("shipped")
    run = base / "run"
    synthesize_scene(toy, run / "artifacts" / "toy", SETTINGS, progress=False, log=lambda *_: None)
    cfg = embedded.embedded_config()
    _fake_run(run / "nifi", cfg)
    _fake_run(run / "nifi_wo_t0", embedded.embedded_wo_t0_config())
    out = base / "shipped"
    assert main(["ship-run", "--run", str(run), "--out", str(out)]) == 0
    return run, out, cfg


def test_ship_copies_levels_and_runs_and_records_the_dense_ply(made, toy):
    run, out, _ = made
    doc = json.loads((out / "shipped.json").read_text())
    meta = synth_complete(run / "artifacts" / "toy")
    shipped = sorted(p.name for p in (out / "artifacts" / "toy").iterdir())
    assert shipped == sorted(["synth.json", *[lv["file"] for lv in meta["levels"]]])      # no full.ply
    entry = doc["artifacts"]["toy"]
    assert entry["sha256"] == sha256_file(run / "artifacts" / "toy" / "full.ply")
    assert set(doc["runs"]) == {"nifi", "nifi_wo_t0"} and doc["runs"]["nifi"]["val_split"] == "train_holdout"
    for exp in S.EXPS:
        for f in S.RUN_FILES[1:]:
            assert (out / exp / f).read_bytes() == (run / exp / f).read_bytes()
        full = torch.load(run / exp / "best.pt", weights_only=True)
        shipped = torch.load(out / exp / "best.pt", weights_only=True)     # without the optimizer moments
        assert set(shipped) == set(full) - {"optim_minus", "optim_plus"}
        assert shipped["marker"].tolist() == [0, 1, 2] and shipped["adapters"]["a"].tolist() == [1.0, 1.0]
    assert not (out.parent / "shipped.part").exists()


def test_seeded_synthesis_is_complete_and_reused_with_the_same_settings(made, toy, tmp_path):
    _, out, _ = made
    assert S.seed_artifacts(tmp_path, ["toy", "not_shipped"], root=out) == ["toy"]
    art = tmp_path / "artifacts" / "toy"
    meta = synth_complete(art)
    assert meta is not None
    assert sha256_file(art / "full.ply") == json.loads((out / "shipped.json").read_text())["artifacts"]["toy"]["sha256"]
    logs = []
    again = synthesize_scene(toy, art, SETTINGS, progress=False, log=logs.append)
    assert any("same settings found, skipping" in line for line in logs) and again["levels"] == meta["levels"]
    # a folder that already has a synthesis is left alone
    (art / "synth.json").write_text(json.dumps({"mine": True}))
    assert S.seed_artifacts(tmp_path, ["toy"], root=out) == []
    assert json.loads((art / "synth.json").read_text()) == {"mine": True}


def test_a_changed_dense_ply_is_not_seeded(made, toy, tmp_path):
    _, out, _ = made
    doc = json.loads((out / "shipped.json").read_text())
    other = tmp_path / "copy"
    shutil.copytree(out, other)
    ply = tmp_path / "changed.ply"
    ply.write_bytes((toy / "point_cloud.ply").read_bytes() + b"\0")
    doc["artifacts"]["toy"]["from"] = str(ply)
    (other / "shipped.json").write_text(json.dumps(doc))
    assert S.seed_artifacts(tmp_path / "run", ["toy"], root=other) == []
    assert not (tmp_path / "run" / "artifacts" / "toy").exists()


def test_a_run_is_seeded_only_for_exactly_its_config(made, tmp_path):
    _, out, cfg = made
    other = embedded.embedded_config({"train": {"max_steps": 3}})
    assert not S.seed_run(tmp_path, "nifi", other, root=out)
    assert not (tmp_path / "nifi").exists()
    assert S.seed_run(tmp_path, "nifi", cfg, root=out)
    assert torch.load(tmp_path / "nifi" / "best.pt", weights_only=True)["marker"].tolist() == [0, 1, 2]
    assert not S.seed_run(tmp_path, "nifi", cfg, root=out)                   # best.pt there: nothing copied
    assert not S.seed_run(tmp_path, "nifi_wo_t0", cfg, root=out)             # trained with t0 = 1000, not cfg
    assert S.seed_run(tmp_path, "nifi_wo_t0", embedded.embedded_wo_t0_config(), root=out)


def test_ensure_trained_takes_the_shipped_run_unless_told_not_to(made, tmp_path, monkeypatch):
    _, out, cfg = made
    monkeypatch.setattr(S, "SHIPPED_RUN", out)
    trained = []
    monkeypatch.setattr(embedded, "run_training", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(embedded, "ensure_embedded_pairs", lambda *a, **k: tmp_path / "pairs")
    best = embedded.ensure_trained(tmp_path / "a", cfg)
    assert best.is_file() and trained == []                                  # shipped, finished: no training
    embedded.ensure_trained(tmp_path / "b", cfg, use_shipped=False)
    assert len(trained) == 1 and not (tmp_path / "b" / "nifi" / "best.pt").exists()


def test_ship_refuses_what_it_cannot_vouch_for(made, tmp_path):
    run, _, cfg = made
    with pytest.raises(S.ShipError, match="no synthesis"):
        S.ship_run(tmp_path / "empty", tmp_path / "o1")
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    shutil.rmtree(bad / "nifi")
    _fake_run(bad / "nifi", cfg, val_split="test")
    with pytest.raises(S.ShipError, match="held-out training views"):
        S.ship_run(bad, tmp_path / "o2")
    shutil.rmtree(bad / "nifi_wo_t0")
    (bad / "nifi" / "train_summary.json").unlink()
    with pytest.raises(S.ShipError, match="no finished run"):
        S.ship_run(bad, tmp_path / "o3")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("o")]   # nothing half-written

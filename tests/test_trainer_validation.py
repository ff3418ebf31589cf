"""Checkpoint selection never uses the test split: held-out training views (``holdout_views``), recorded in
``train_summary.json``; ``ensure_trained`` retrains a run that selected ``best.pt`` on the test split."""
import json
import random
from pathlib import Path

import pytest

from trainer_helpers import make_backbone_dir, make_pairs, tiny_config
from nifi_lib.synthesis.pairs import PairItem
from nifi_lib.training.data import PairError, holdout_views
from nifi_lib.training.trainer import TrainingError, train


def _pairs(views: dict[str, int], rates=("0.1", "0.5", "1.0"), dataset="d") -> list[PairItem]:
    return [PairItem(sc, r, "train", f"{j:03d}.png", Path(f"{sc}/rate_{r}/train/clean/{j:03d}.png"),
                     Path(f"{sc}/rate_{r}/train/degraded/{j:03d}.png"), dataset)
            for sc, n in views.items() for r in rates for j in range(n)]


def _views(pairs):
    return {(p.dataset, p.scene, p.name) for p in pairs}


def test_holdout_views_rule():
    pairs = _pairs({"one": 1, "two": 2, "three": 3, "nine": 9, "seventeen": 17})
    train, val = holdout_views(pairs, every=8)
    assert len(train) + len(val) == len(pairs) and not (_views(train) & _views(val))
    held = {sc: sorted(n for _, s, n in _views(val) if s == sc) for sc in ("one", "two", "three", "nine", "seventeen")}
    # sorted view names at positions 0, 8, 16, ...; a single-view scene keeps its view for training
    assert held == {"one": [], "two": ["000"], "three": ["000"], "nine": ["000", "008"],
                    "seventeen": ["000", "008", "016"]}
    # a held-out view leaves training with ALL its rates; every scene keeps >= 1 training view
    for p in val:
        assert sum(q.scene == p.scene and q.name == p.name for q in val) == 3
    assert {p.scene for p in train} == {"one", "two", "three", "nine", "seventeen"}
    # input order is kept; the split does not depend on it (deterministic, by name)
    assert train == [p for p in pairs if p in set(train)]
    shuffled = list(pairs)
    random.Random(0).shuffle(shuffled)
    t2, v2 = holdout_views(shuffled, every=8)
    assert set(t2) == set(train) and set(v2) == set(val)
    assert holdout_views(pairs, every=2)[1] and all(len(holdout_views(_pairs({"s": n}), every=2)[0]) > 0
                                                    for n in range(1, 6))


@pytest.mark.parametrize("every", [1, 0, -3, 2.5, True])
def test_holdout_views_rejects_a_bad_period(every):
    with pytest.raises(PairError, match="val_holdout_every"):
        holdout_views(_pairs({"s": 4}), every=every)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainval")
    return make_backbone_dir(root / "bb"), make_pairs(root / "pairs")


def test_train_validates_on_held_out_train_views_not_test(setup, tmp_path, monkeypatch):
    import nifi_lib.training.trainer as T

    bb_dir, pairs = setup
    samplers, validated = [], []

    class Spy(T.PairSampler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            samplers.append(self)
    real_validate = T.NiFiTrainer.validate

    def validate(self, sampler, max_images, metric_fn):
        validated.append([sampler.pairs[i] for i in T.validation_indices(len(sampler.pairs), max_images)])
        return real_validate(self, sampler, max_images, metric_fn)
    monkeypatch.setattr(T, "PairSampler", Spy)
    monkeypatch.setattr(T.NiFiTrainer, "validate", validate)
    s = train(tiny_config(bb_dir, val_max_images=8), pairs, tmp_path / "exp", progress=False)
    train_sampler, val_sampler = samplers
    assert train_sampler.resolution == 32 and val_sampler.resolution is None
    assert {p.name for p in train_sampler.pairs} == {"001", "002"}         # never a held-out view
    assert {p.name for p in val_sampler.pairs} == {"000"} and len(val_sampler.pairs) == 4
    assert all("/train/" in str(p.clean) for p in val_sampler.pairs)       # never the test split
    assert validated and all(v == validated[0] for v in validated)
    js = json.loads((tmp_path / "exp" / "train_summary.json").read_text())
    assert js == json.loads(json.dumps(s))
    assert js["val_split"] == "train_holdout" and js["val_holdout_every"] == 8
    assert js["validation_images"] == [str(p.clean.relative_to(pairs).as_posix()) for p in validated[0]]
    assert js["heldout_views"] == ["pairs/s1/000", "pairs/s2/000"]
    assert js["data"]["train_pairs"] == 8 and js["data"]["val_pairs"] == 4
    assert js["best_metric"]["step"] in (2, 4) and (tmp_path / "exp" / "best.pt").is_file()


def test_train_refuses_to_validate_on_test(setup, tmp_path):
    bb_dir, pairs = setup
    for split in ("test", "train"):
        with pytest.raises(TrainingError, match=f"val_split='{split}'"):
            train(tiny_config(bb_dir), pairs, tmp_path / split, progress=False, val_split=split)
        assert not (tmp_path / split).exists()
    with pytest.raises(TrainingError, match="val_holdout_every"):
        train(tiny_config(bb_dir, val_holdout_every=1), pairs, tmp_path / "k1", progress=False)


def test_fresh_run_drops_a_stale_best_checkpoint(setup, tmp_path):
    """A fresh (not --resume) run in a folder that holds an older run's best.pt never returns that file (here
    a run without validation, best_metric "loss": best.pt is a copy of this run's latest.pt)."""
    bb_dir, pairs = setup
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "best.pt").write_bytes(b"stale")
    train(tiny_config(bb_dir, max_steps=1, best_metric="loss"), pairs, exp, progress=False)
    assert (exp / "best.pt").read_bytes() == (exp / "latest.pt").read_bytes()


@pytest.mark.parametrize("summary,retrains", [
    ({"steps": 4}, True),                                 # written before val_split was recorded
    ({"val_split": "test"}, True),                        # best.pt chosen on the test split: stale
    ("{not json", True),
    ({"val_split": "train_holdout"}, False),
])
def test_ensure_trained_retrains_a_test_selected_run(tmp_path, monkeypatch, summary, retrains):
    import nifi_lib.experiments.embedded as P
    import nifi_lib.training.trainer as T

    out = tmp_path / "run" / "nifi"
    out.mkdir(parents=True)
    (out / "best.pt").write_bytes(b"x")
    (out / "train_summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    calls = []
    monkeypatch.setattr(P, "ensure_embedded_pairs", lambda run_dir, **kw: tmp_path / "pairs")
    monkeypatch.setattr(T, "train", lambda cfg, pairs, exp, progress=False, **kw: calls.append((pairs, exp)))
    assert P.ensure_trained(tmp_path / "run", cfg=object()) == out / "best.pt"
    assert calls == ([(tmp_path / "pairs", out)] if retrains else [])


def test_resume_of_a_test_selected_run_restarts_checkpoint_selection(setup, tmp_path):
    """--resume from a latest.pt of an older run (no "val_split" recorded: its best.pt was chosen on the test
    split) drops that best.pt and its best metric; selection restarts on the held-out train views."""
    import torch

    from nifi_lib.restoration.io import safe_torch_load

    bb_dir, pairs = setup
    exp = tmp_path / "exp"
    train(tiny_config(bb_dir), pairs, exp, progress=False, stop_after=2)
    ck = safe_torch_load(exp / "latest.pt")
    assert ck["val_split"] == "train_holdout"
    del ck["val_split"]
    ck["state"]["best_metric"], ck["state"]["best_step"] = -1e9, 2   # unbeatable "best on test"
    torch.save(ck, exp / "latest.pt")
    (exp / "best.pt").write_bytes(b"chosen on test")
    s = train(tiny_config(bb_dir), pairs, exp, progress=False, resume=True)
    assert s["best_metric"]["step"] == 4 and s["best_metric"]["value"] > -1e9
    assert safe_torch_load(exp / "best.pt")["step"] == 4


@pytest.mark.parametrize("summary, retrains", [
    ({"val_split": "train_holdout", "steps": 600, "config": {"diffusion": {"t0": 199}}}, False),
    ({"val_split": "train_holdout", "steps": 300, "config": {"diffusion": {"t0": 199}}}, True),    # shorter run
    ({"val_split": "train_holdout", "steps": 600, "config": {"diffusion": {"t0": 1000}}}, True),   # other t0
])
def test_ensure_trained_reuses_only_a_finished_run_of_the_same_setting(tmp_path, monkeypatch, summary, retrains):
    import nifi_lib.experiments.embedded as P
    import nifi_lib.training.trainer as T

    out = tmp_path / "run" / "nifi"
    out.mkdir(parents=True)
    (out / "best.pt").write_bytes(b"x")
    (out / "train_summary.json").write_text(json.dumps(summary))
    calls = []
    monkeypatch.setattr(P, "ensure_embedded_pairs", lambda run_dir, **kw: tmp_path / "pairs")
    monkeypatch.setattr(T, "train", lambda cfg, pairs, exp, progress=False, **kw: calls.append(exp))
    cfg = P.embedded_config({"train": {"max_steps": 600}})
    assert cfg.diffusion.t0 == 199
    P.ensure_trained(tmp_path / "run", cfg=cfg)
    assert calls == ([out] if retrains else [])


def test_embedded_wo_t0_config_is_the_embedded_config_at_T():
    from nifi_lib.experiments.embedded import embedded_config, embedded_wo_t0_config

    a, b = embedded_config(), embedded_wo_t0_config({"train": {"max_steps": 7}})
    assert b.diffusion.t0 == 1000 and a.diffusion.t0 == 199 and b.train.max_steps == 7
    assert b.train.lr_phi_minus == a.train.lr_phi_minus and b.model.lora_rank == a.model.lora_rank

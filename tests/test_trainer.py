"""The NiFi trainer: seed outputs, bit-exact resume, NaN policy, gradient routing, 2-process gloo."""
import csv
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from trainer_helpers import make_backbone_dir, make_pairs, tiny_config
from nifi_lib.restoration.io import safe_torch_load
from nifi_lib.training.trainer import NiFiTrainer, TrainingError, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return make_backbone_dir(root / "bb"), make_pairs(root / "pairs")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_writes_the_seed_outputs(setup, tmp_path):
    bb_dir, pairs = setup
    summary = train(tiny_config(bb_dir), pairs, tmp_path / "exp", progress=False)
    exp = tmp_path / "exp"
    for f in ("latest.pt", "best.pt", "train_log.csv", "train_summary.json"):
        assert (exp / f).is_file(), f
    rows = _rows(exp / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss_total"])) and math.isfinite(float(r["loss_critic"])) for r in rows)
    js = json.loads((exp / "train_summary.json").read_text())
    assert js["steps"] == 4 and js["data"]["train_pairs"] == 12 and js["data"]["rates"] == ["0.1", "1.0"]
    assert js["best_metric"]["name"] == "psnr" and js["best_metric"]["step"] in (2, 4)
    assert js["weights"]["perceptual"].startswith("none")
    ck = safe_torch_load(exp / "latest.pt")  # weights_only loads it
    assert ck["step"] == 4 and any(k.startswith("transformer.critic/") for k in ck["adapters"])
    assert not any("lora_" not in k for k in ck["adapters"]), "checkpoint must hold adapters only"


def test_resume_is_bit_exact_and_log_has_no_duplicates(setup, tmp_path):
    bb_dir, pairs = setup
    cfg = tiny_config(bb_dir)
    train(cfg, pairs, tmp_path / "full", progress=False)
    # interrupted run: stop after step 2 but pretend rows 3.. were logged past the checkpoint
    train(tiny_config(bb_dir), pairs, tmp_path / "cut", progress=False, stop_after=2)
    with open(tmp_path / "cut" / "train_log.csv", "a") as f:
        f.write("3,9,9,9,9,9,9,9,9,9,9,9,0,0\n")
    train(tiny_config(bb_dir), pairs, tmp_path / "cut", progress=False, resume=True)
    steps = [int(r["step"]) for r in _rows(tmp_path / "cut" / "train_log.csv")]
    assert steps == [1, 2, 3, 4]
    a = safe_torch_load(tmp_path / "full" / "latest.pt")["adapters"]
    b = safe_torch_load(tmp_path / "cut" / "latest.pt")["adapters"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    la = [r["loss_total"] for r in _rows(tmp_path / "full" / "train_log.csv")]
    lb = [r["loss_total"] for r in _rows(tmp_path / "cut" / "train_log.csv")]
    assert la == lb


def test_resume_without_checkpoint_is_clear(setup, tmp_path):
    bb_dir, pairs = setup
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_config(bb_dir), pairs, tmp_path / "none", progress=False, resume=True)


def _trainer(bb_dir, **train_kw):
    from nifi_lib.diffusion.backbone import load_backbone

    cfg = tiny_config(bb_dir, **train_kw)
    bb = load_backbone(str(bb_dir))
    return NiFiTrainer(cfg, bb, perceptual=None)


def test_step_updates_only_adapters_and_distillation_reaches_phi_minus(setup):
    bb_dir, _ = setup
    tr = _trainer(bb_dir)
    base = {n: p.detach().clone() for m in (tr.bb.transformer, tr.bb.vae) for n, p in m.named_parameters()
            if "lora_" not in n}
    torch.manual_seed(0)
    clean, deg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    # the Eq. 4/5 surrogate alone must produce gradients on phi- (it is not computed under no_grad)
    tr.cfg.loss_weights.l2 = 0.0
    info = tr.train_step(clean, deg)
    assert info["skipped"] == 0
    assert info["grad_norm_minus"] > 0 and info["grad_norm_plus"] > 0
    for m in (tr.bb.transformer, tr.bb.vae):
        for n, p in m.named_parameters():
            if "lora_" not in n:
                assert torch.equal(p, base[n]), f"frozen weight {n} changed"
                assert p.grad is None


def test_nan_policy(setup, tmp_path, monkeypatch):
    bb_dir, pairs = setup
    import nifi_lib.training.trainer as T

    real = T.perceptual_matching_loss

    def nan_after_two(*a, **k):
        total, terms = real(*a, **k)
        nan_after_two.calls += 1
        return (total * float("nan") if nan_after_two.calls > 2 else total), terms
    nan_after_two.calls = 0
    monkeypatch.setattr(T, "perceptual_matching_loss", nan_after_two)
    s = train(tiny_config(bb_dir, nan_policy="skip"), pairs, tmp_path / "skip", progress=False)
    assert s["skipped_steps"] == 2 and s["steps"] == 4
    ck = safe_torch_load(tmp_path / "skip" / "latest.pt")
    assert all(torch.isfinite(v).all() for v in ck["adapters"].values())
    nan_after_two.calls = 0
    with pytest.raises(TrainingError, match="non-finite loss at step 3"):
        train(tiny_config(bb_dir, nan_policy="stop"), pairs, tmp_path / "stop", progress=False)
    ck = safe_torch_load(tmp_path / "stop" / "latest.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["adapters"].values())


def _gloo_worker(rank, world, bb_dir, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tr = _trainer(bb_dir)
        g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        clean, deg = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
        before = {k: v.clone() for k, v in tr.adapters_flat().items()}
        tr.train_step(clean, deg)
        after = tr.adapters_flat()
        torch.save({"before": before, "after": after}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_keeps_adapters_identical(setup, tmp_path):
    bb_dir, _ = setup
    port = 29500 + os.getpid() % 1000
    mp.spawn(_gloo_worker, args=(2, bb_dir, port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0["before"][k], r1["before"][k]) for k in r0["before"])
    changed = [k for k in r0["after"] if not torch.equal(r0["after"][k], r0["before"][k])]
    assert changed, "the step changed no adapter"
    assert all(torch.equal(r0["after"][k], r1["after"][k]) for k in r0["after"]), "ranks diverged"

"""Bad restorer weights through ``nifi restore --ckpt``, ``nifi eval --ckpt`` and ``nifi train --resume``:
truncated files, weights of another backbone or LoRA rank, a pickle that would run code (it must never run),
adapters with unexpected keys. Each is refused with a one-line error naming the file and the problem, and
the outputs of earlier runs (restored frames, metrics.json, checkpoints) are unchanged."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faultkit import assert_cli_error, leftovers, snapshot


class RunsCode:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def truncated(models, path: Path) -> Path:
    data = models["ckpt"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def other_backbone(models, path: Path) -> Path:
    path.write_bytes(models["other_backbone"].read_bytes())
    return path


def pickle_runs_code(models, path: Path) -> Path:
    """A torch checkpoint (zip + data.pkl) whose pickle calls os.system when loaded without weights_only."""
    torch.save({"vae": RunsCode(path.parent / "PWNED"), "transformer": {}}, path)
    return path


def test_the_code_running_pickle_is_live(tmp_path):
    """Control: loaded unsafely, the checkpoints of this file do run code (so 'no marker' means something)."""
    ck = pickle_runs_code(None, tmp_path / "evil.ckpt")
    torch.load(ck, weights_only=False)
    assert (tmp_path / "PWNED").exists()
    (tmp_path / "PWNED").unlink()
    pickle.loads(pickle.dumps(RunsCode(tmp_path / "PWNED"), protocol=2))
    assert (tmp_path / "PWNED").exists()


def unexpected_keys(models, path: Path) -> Path:
    from safetensors.torch import load_file, save_file

    flat = load_file(str(models["safetensors"]))
    flat["transformer/transformer_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(2, 16)
    path = path.with_suffix(".safetensors")
    save_file(flat, str(path))
    return path


CASES = {
    "truncated": (truncated, ["cannot read checkpoint", "truncated"]),
    "other_backbone": (other_backbone, ["shape", "another LoRA rank or backbone"]),
    "pickle_runs_code": (pickle_runs_code, ["refused to load", "could run code"]),
    "unexpected_keys": (unexpected_keys, ["1 unexpected", "transformer_blocks.7"]),
}


@pytest.fixture
def restore_run(tmp_path):
    """An input frame and the output folder of an earlier `nifi restore` run."""
    lq = tmp_path / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)).save(lq)
    out = tmp_path / "restored"
    out.mkdir()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(out / "frame.png")
    return lq, out


@pytest.mark.parametrize("entry", ["restore", "eval"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint(case, entry, models, pairs_root, restore_run, nifi, tmp_path):
    make, words = CASES[case]
    (tmp_path / "weights").mkdir()
    ck = make(models, tmp_path / "weights" / "bad.ckpt")
    marker = ck.parent / "PWNED"
    if entry == "restore":
        lq, out = restore_run
        before = snapshot(out)
        res = nifi("restore", "--base_model", models["backbone"], "--ckpt", ck, "--lq", lq, "--out", out,
                   "--device", "cpu")
    else:
        out = tmp_path / "results"
        out.mkdir()
        (out / "metrics.json").write_text('{"from": "an earlier run"}\n')
        before = snapshot(out)
        res = nifi("eval", "--method", "nifi", "--ckpt", ck, "--base_model", models["backbone"],
                   "--data_root", pairs_root, "--split", "test", "--out", out / "metrics.json", "--metrics", "psnr",
                   "--device", "cpu", "--save_outputs", out / "frames")
    assert not marker.exists(), "unpickling the checkpoint executed code"
    assert_cli_error(res, entry, str(ck), *words)
    assert snapshot(out) == before and not leftovers(out)


def _resume(nifi, cfg, pairs, exp, *extra):
    return nifi("train", "--config", cfg, "--data_root", pairs, "--exp", exp, "--device", "cpu", "--resume",
                "--set", "train.max_steps=4", *extra)


@pytest.mark.parametrize("case", ["truncated", "pickle_runs_code"])
def test_bad_training_checkpoint_on_resume(case, train_config, pairs_root, exp_copy, models, nifi):
    """`nifi train --resume` from a damaged or code-running latest.pt: refused, never unpickled with code,
    and the run folder (log, best.pt, summary) is left as it was."""
    latest = exp_copy / "latest.pt"
    if case == "truncated":
        latest.write_bytes(latest.read_bytes()[:-1000])
    else:
        latest.write_bytes(pickle.dumps({"format": "nifi-train-v1", "step": RunsCode(exp_copy / "PWNED")},
                                        protocol=2))
    before = snapshot(exp_copy)
    res = _resume(nifi, train_config, pairs_root, exp_copy)
    assert not (exp_copy / "PWNED").exists(), "unpickling the checkpoint executed code"
    assert_cli_error(res, "train", str(latest), *CASES[case][1])
    assert snapshot(exp_copy) == before and not leftovers(exp_copy)


def test_training_checkpoint_of_another_rank_on_resume(train_config, pairs_root, exp_copy, nifi):
    """Resuming a rank-2 run with a rank-4 config: refused before anything in the run folder changes."""
    before = snapshot(exp_copy)
    res = _resume(nifi, train_config, pairs_root, exp_copy, "model.lora_rank=4", "model.lora_alpha=4")
    assert_cli_error(res, "train", str(exp_copy / "latest.pt"), "rank 2", "4")
    assert snapshot(exp_copy) == before and not leftovers(exp_copy)

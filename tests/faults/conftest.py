"""Shared fixtures of the fault suite (``tests/faults/``): tiny models, pairs, scenes and a finished training
run built once per session, plus the helpers every fault test uses:

- :func:`nifi` runs the public CLI in-process (``nifi_lib.cli.main``) and returns its exit code and output;
- :func:`assert_cli_error` checks the one-line ``nifi <cmd>: error: <message>`` contract (exit code 2, no
  traceback) and that the message names the file and the problem;
- :func:`snapshot` / :func:`leftovers` prove that nothing already written was damaged (checksums of every
  file, hidden ones included) and that no temporary or staging file was left behind.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
for _p in (TESTS_DIR, TESTS_DIR / "faults"):  # tests/helpers.py, tests/trainer_helpers.py, faultkit.py
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ["OMP_NUM_THREADS"] = "1"     # inherited by the subprocesses of the suite
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from faultkit import CliResult, copytree  # noqa: E402

torch.set_num_threads(1)   # a shared 2-core machine: OpenMP spinning across processes costs 10-30x

NIFI_BIN = REPO_ROOT / ".venv" / "bin" / "nifi"


@pytest.fixture
def nifi(capsys):
    """Run ``nifi <args>`` in-process through :func:`nifi_lib.cli.main`; an uncaught exception (a traceback
    for the user) fails the test with the exception's type."""
    from nifi_lib.cli import main

    def run(*args) -> CliResult:
        argv = [str(a) for a in args]
        capsys.readouterr()
        try:
            rc = main(argv)
        except SystemExit as e:          # argparse errors
            rc = e.code if isinstance(e.code, int) else 2
        except Exception as e:           # noqa: BLE001 - that is the finding
            out, err = capsys.readouterr()
            raise AssertionError(f"nifi {' '.join(argv)} raised {e.__class__.__name__}: {e} (the user would see "
                                 f"a traceback, not a one-line error)\n{err[-2000:]}") from e
        out, err = capsys.readouterr()
        return CliResult(int(rc or 0), out, err, argv)

    return run


# --------------------------------------------------------------------------------------------- models

@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny SD3-shaped backbone folder and restorer weights in every format the CLI reads:
    ``ckpt`` (the authors' torch file), ``safetensors`` (our adapter file), ``other_backbone`` (the
    authors' format, made for a backbone with another attention width)."""
    from helpers import TINY_TRANSFORMER, SD3_LIKE_VAE, save_tiny_restorer
    from nifi_lib.diffusion.backbone import build_tiny_backbone
    from nifi_lib.restoration.checkpoint import save_authors_checkpoint
    from nifi_lib.restoration.io import RESTORER_GROUPS
    from nifi_lib.restoration.lora import add_restorer_adapters, save_adapters

    root = tmp_path_factory.mktemp("models")
    bb = save_tiny_restorer(root, note="fault suite")
    save_adapters(root / "r.safetensors", bb, RESTORER_GROUPS)
    other = build_tiny_backbone(seed=0, vae_config=SD3_LIKE_VAE,
                                transformer_config={**TINY_TRANSFORMER, "attention_head_dim": 16}).freeze()
    add_restorer_adapters(other, rank=2)
    save_authors_checkpoint(root / "other_backbone.ckpt", other)
    return {"root": root, "backbone": root / "backbone", "ckpt": root / "r.ckpt",
            "safetensors": root / "r.safetensors", "other_backbone": root / "other_backbone.ckpt"}


# --------------------------------------------------------------------------------------------- pairs

@pytest.fixture(scope="session")
def pairs_root(tmp_path_factory):
    """``<root>/{s1,s2}/rate_{0.1,1.0}/{train(3),test(1)}/{clean,degraded}/00k.png``, 32x32 8-bit RGB."""
    from trainer_helpers import make_pairs

    return make_pairs(tmp_path_factory.mktemp("pairs") / "pairs")


@pytest.fixture
def pairs_copy(pairs_root, tmp_path):
    return copytree(pairs_root, tmp_path / "pairs")


# --------------------------------------------------------------------------------------------- training

TRAIN_YAML = """\
inherit: {embedded}
model:
  backbone: {bb}
  embeddings: {bb}/prompt_embeds.npz
  lora_rank: 2
  lora_alpha: 2
train:
  max_steps: 4
  batch_size: 2
  resolution: 32
  save_every: 1
  val_every: 100
  val_max_images: 2
  best_metric: psnr
loss_weights:
  lpips: 0.0
"""


@pytest.fixture(scope="session")
def train_config(models, tmp_path_factory):
    """A tiny, valid training config (rank-2 LoRA on the tiny backbone, 4 steps of batch 2 at 32 px)."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TRAIN_YAML.format(embedded=REPO_ROOT / "configs" / "embedded.yaml", bb=models["backbone"]))
    return path


@pytest.fixture(scope="session")
def prior_run(train_config, pairs_root, tmp_path_factory):
    """A finished ``nifi train`` run (2 steps) whose outputs later faults must leave untouched."""
    from nifi_lib.cli import main

    exp = tmp_path_factory.mktemp("prior") / "exp"
    rc = main(["train", "--config", str(train_config), "--data_root", str(pairs_root), "--exp", str(exp),
               "--device", "cpu", "--set", "train.max_steps=2"])
    assert rc == 0 and (exp / "latest.pt").is_file()
    return exp


@pytest.fixture
def exp_copy(prior_run, tmp_path):
    return copytree(prior_run, tmp_path / "exp")


# --------------------------------------------------------------------------------------------- scenes

@pytest.fixture(scope="session")
def toy_scene(tmp_path_factory):
    """A procedural scene (``images/``, ``cameras.json``, ``point_cloud.ply``): 300 Gaussians, 9 views of 24 px."""
    from nifi_lib.synthesis.toy import make_toy_scene

    root = tmp_path_factory.mktemp("scene") / "toy"
    make_toy_scene(root, n=300, num_views=9, size=24)
    return root


SYNTH_ARGS = ["--levels", "2", "--c_min", "20", "--finetune_iterations", "2", "--device", "cpu"]


@pytest.fixture(scope="session")
def toy_artifacts(toy_scene, tmp_path_factory):
    """``nifi synthesize`` output of :func:`toy_scene` (2 levels) and ``nifi pairs`` of its test split."""
    from nifi_lib.cli import main

    root = tmp_path_factory.mktemp("synth")
    art, pairs = root / "art" / "toy", root / "pairs" / "toy"
    assert main(["synthesize", "--scene", str(toy_scene), "--out", str(art), *SYNTH_ARGS]) == 0
    assert main(["pairs", "--scene", str(art), "--split", "test", "--out", str(pairs), "--device", "cpu"]) == 0
    return {"art": art, "pairs": pairs}

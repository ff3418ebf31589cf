"""Bad configs through ``nifi train --config`` (and the same values through ``--set``): an unknown key, a
wrong type, a negative learning rate, t0 outside [0, 1000]. Each is refused while loading the config, with a
one-line error naming the config file and the key, before the data, the model or the run folder is touched."""
from __future__ import annotations

import pytest

from faultkit import assert_cli_error, leftovers, snapshot

# name -> (yaml section text appended to the tiny config, the same as a --set override, words of the message)
CASES = {
    "unknown_key": ("train:\n  learning_rate: 1.0e-4\n", "train.learning_rate=1.0e-4",
                    ["unknown key 'train.learning_rate'"]),
    "wrong_type": ("train:\n  max_steps: ten\n", "train.max_steps=ten",
                   ["train.max_steps", "expected an integer", "'ten'"]),
    "negative_lr": ("train:\n  lr_phi_minus: -1.0e-5\n", "train.lr_phi_minus=-1.0e-5",
                    ["train.lr_phi_minus", "must be positive", "-1e-05"]),
    "t0_too_large": ("diffusion:\n  t0: 1001\n", "diffusion.t0=1001", ["diffusion.t0", "[0, 1000]", "1001"]),
    "t0_negative": ("diffusion:\n  t0: -1\n", "diffusion.t0=-1", ["diffusion.t0", "[0, 1000]", "-1"]),
}


@pytest.mark.parametrize("via", ["config_file", "set_override"])
@pytest.mark.parametrize("case", list(CASES))
def test_train_refuses_bad_config(case, via, train_config, pairs_root, exp_copy, nifi, tmp_path):
    section, override, words = CASES[case]
    if via == "config_file":
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(f"inherit: {train_config}\n{section}")
        extra = []
    else:  # the message names the file and the override that broke it
        cfg, extra = train_config, ["--set", override]
        words = [*words, "overrides applied", override.split("=")[0]]
    before = snapshot(exp_copy)
    res = nifi("train", "--config", cfg, "--data_root", pairs_root, "--exp", exp_copy, "--device", "cpu", *extra)
    assert_cli_error(res, "train", str(cfg), *words)
    assert snapshot(exp_copy) == before and not leftovers(exp_copy)
    res = nifi("train", "--config", cfg, "--data_root", pairs_root, "--exp", tmp_path / "fresh", *extra)
    assert_cli_error(res, "train", str(cfg), *words)
    assert not (tmp_path / "fresh").exists()

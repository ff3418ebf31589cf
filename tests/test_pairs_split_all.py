"""``--split all`` of ``nifi pairs`` / ``nifi prepare-benchmark`` means train/ and test/ (what ``nifi train`` and
``nifi eval`` read), never a folder named ``all``."""
import json
import shutil

import pytest
import torch

from nifi_lib.cli import main as nifi
from nifi_lib.synthesis.pipeline import SynthesisSettings, synthesize_scene


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def art(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "toy"
    synthesize_scene(toy, out, SynthesisSettings(c_min=30, num_levels=2, rates=None, finetune_iterations=2),
                     progress=False, log=lambda s: None)
    return out


def _all_dirs(root):
    return [p for p in root.rglob("all") if p.is_dir()]


@pytest.mark.parametrize("out_name", ["toy", "toy/all"])
def test_pairs_split_all_writes_train_and_test(art, tmp_path_factory, out_name):
    pairs = tmp_path_factory.mktemp("pairs")
    assert nifi(["pairs", "--scene", str(art), "--split", "all", "--out", str(pairs / out_name)]) == 0
    scene = pairs / "toy"
    man = json.loads((scene / "manifest.json").read_text())
    assert set(man["splits"]) == {"train", "test"} and sum(man["splits"].values()) == 9
    for lv in man["levels"]:
        for split, n in man["splits"].items():
            for kind in ("clean", "degraded"):
                assert len(list((scene / f"rate_{lv['label']}" / split / kind).glob("*.png"))) == n
    assert not _all_dirs(pairs)


def test_prepare_benchmark_split_all(toy, tmp_path):
    ds = tmp_path / "bench"
    shutil.copytree(toy, ds / "s")
    assert nifi(["prepare-benchmark", "--dataset", "d", "--dataset_root", str(ds), "--out", str(tmp_path / "pb"),
                 "--rates", "0.1", "1.0", "--compression_method", "proxy", "--split", "all"]) == 0
    man = json.loads((tmp_path / "pb" / "d" / "s" / "manifest.json").read_text())
    assert set(man["splits"]) == {"train", "test"}
    assert (tmp_path / "pb" / "d" / "s" / "rate_0.1" / "train" / "degraded").is_dir()
    assert not _all_dirs(tmp_path / "pb")

"""nifi_lib.experiments.paper_inputs: in paper mode (a pair root given) the notebooks' inputs are the given pairs,
checkpoints and backbone, a missing required one is an InputsError naming what makes it, an optional one is
skipped; nothing falls back to the embedded scenes."""
from __future__ import annotations

import json

import pytest
import torch

from nifi_lib.experiments import embedded
from nifi_lib.experiments import paper_inputs as P
from trainer_helpers import make_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A training root (<scene>/ layout), a benchmark root (<dataset>/<scene>/) and a run with a NiFi checkpoint."""
    base = tmp_path_factory.mktemp("paper")
    train = make_pairs(base / "train_pairs", scenes=("s1", "s2"), n=9, size=40)
    test = base / "test_pairs"
    make_pairs(test / "dsB", scenes=("t1",), n=1, size=40, seed=1)
    make_pairs(test / "dsA", scenes=("t2",), n=1, size=48, seed=2)
    run = base / "run"
    (run / "nifi").mkdir(parents=True)
    torch.save({}, run / "nifi" / "best.pt")          # records no settings: the config's backbone is used
    return train, test, run


def test_paper_mode_is_a_given_pair_root():
    assert not P.paper_mode(None, None) and not P.paper_mode("", None)
    assert P.paper_mode(None, "pairs/benchmarks") and P.paper_mode("pairs/dl3dv")


def test_series_config_applies_steps_overrides_and_backbone():
    cfg = P.series_config("configs/default.yaml", max_steps=2, overrides={"train": {"resolution": 32}},
                          base_model="/some/sd3", embeddings="/e.npz")
    assert (cfg.train.max_steps, cfg.train.resolution, cfg.train.batch_size) == (2, 32, 4)
    assert cfg.model.backbone == "/some/sd3" and cfg.model.embeddings == "/e.npz"
    plain = P.series_config("configs/default.yaml")
    assert plain.model.backbone == "stabilityai/stable-diffusion-3-medium-diffusers" and plain.train.max_steps == 60000


def test_evaluation_inputs_in_paper_mode_use_the_given_inputs(roots, capsys):
    train, test, run = roots
    inp = P.evaluation_inputs(str(run), "configs/default.yaml", pairs_root=str(train), test_pairs_root=str(test),
                              embeddings="/e.npz", device="cpu")
    assert inp.paper and inp.ckpt == str(run / "nifi" / "best.pt")          # default: notebook 05's run
    assert inp.ckpt_wo_t0 is None and any("w/o t0" in n for n in inp.notes)  # optional: skipped with a note
    assert inp.methods(["none", "nifi", "nifi_wo_t0"]) == ["none", "nifi"]
    assert inp.dataset == "dsA" and inp.eval_root == test / "dsA"            # the first dataset, noted
    assert any("dsA, dsB" in n for n in inp.notes)
    assert inp.base_model == "stabilityai/stable-diffusion-3-medium-diffusers"   # nothing recorded: the config's
    assert inp.restore_options == {"base_model": inp.base_model, "embeddings": "/e.npz", "device": "cpu",
                                   "dtype": "fp32"}
    assert "embedded" not in json.dumps({k: str(v) for k, v in vars(inp).items()})
    assert P.evaluation_inputs(str(run), "configs/default.yaml", test_pairs_root=str(test), dataset="dsB",
                               device="cpu").eval_root == test / "dsB"
    text = inp.describe()
    assert "paper mode" in text and str(test) in text and "skipped" in text
    # no held-out views (the checkpoint has no run summary): the baselines estimate sigma, with a note
    assert inp.validation_items() is None and "estimate their sigma" in capsys.readouterr().out


def test_evaluation_inputs_name_what_makes_a_missing_input(roots, tmp_path):
    train, test, run = roots
    with pytest.raises(P.InputsError, match="prepare-benchmark"):
        P.evaluation_inputs(str(run), "configs/default.yaml", test_pairs_root=str(tmp_path / "none"))
    with pytest.raises(P.InputsError, match="notebook 05"):
        P.evaluation_inputs(str(tmp_path / "empty_run"), "configs/default.yaml", test_pairs_root=str(test))
    with pytest.raises(P.InputsError, match="no dataset 'x'"):
        P.evaluation_inputs(str(run), "configs/default.yaml", test_pairs_root=str(test), dataset="x")
    with pytest.raises(P.InputsError, match="ckpt_wo_t0"):
        P.evaluation_inputs(str(run), "configs/default.yaml", test_pairs_root=str(test), ckpt_wo_t0="/no/such.pt")


def test_ablations_are_skipped_with_a_note_without_their_inputs(roots, capsys):
    _, test, run = roots
    inp = P.evaluation_inputs(str(run), "configs/default.yaml", test_pairs_root=str(test), device="cpu")
    assert inp.train_pairs is None
    assert inp.alpha_sweep([0.0, 1.0], 2) is None and "alpha sweep skipped" in capsys.readouterr().out
    assert P.wo_t0_checkpoint("runs/should_not_train", None, paper=True) is None
    assert "skipped" in capsys.readouterr().out


def test_pair_views_crop_to_one_size_and_pick_held_out_views(roots):
    train, test, _ = roots
    v = P.pair_views(test, "test", per_scene=2)
    assert v.shape == (2, 3, 32, 32)                  # 40 and 48 px frames: the smallest, to a multiple of 16
    held = P.pair_views(train, "train", every=8)      # 9 views per scene: views 0 and 8 of each
    assert held.shape == (4, 3, 32, 32)
    assert P.pair_views(test, "test", size=16).shape == (2, 3, 16, 16)


def test_validation_items_read_a_scene_layout_training_root(roots, tmp_path):
    train, _, _ = roots
    exp = tmp_path / "exp"
    exp.mkdir()
    held = [f"{train.name}/s1/000", f"{train.name}/s2/008"]   # as the trainer records them (find_pairs)
    (exp / "train_summary.json").write_text(json.dumps({"val_split": "train_holdout", "heldout_views": held}))
    items = embedded.validation_items(train, exp)
    assert sorted({(it.scene, it.name) for it in items}) == [("s1", "000"), ("s2", "008")]
    assert len(items) == 4                            # both rates of each held-out view


def test_training_inputs_load_a_given_checkpoint_without_training(roots, tmp_path):
    train, test, run = roots
    t = P.training_inputs("configs/default.yaml", str(tmp_path / "r"), pairs_root=str(train),
                          test_pairs_root=str(test), ckpt=str(run / "nifi" / "best.pt"), base_model="/bb",
                          embeddings="/e.npz", config_overrides={"train": {"resolution": 32}}, device="cpu")
    assert t.paper and t.pairs_root == train and t.examples_root == test and t.out == run / "nifi"
    assert t.cfg.model.backbone == "/bb" and t.cfg.train.resolution == 32
    assert t.checkpoint(overwrite=True) == run / "nifi" / "best.pt" and (run / "nifi" / "best.pt").is_file()
    assert t.example_options == {"embeddings": "/e.npz", "device": "cpu", "dtype": "fp32"}
    with pytest.raises(P.InputsError, match="train_summary"):
        t.summary()
    with pytest.raises(P.InputsError, match="training pairs"):
        P.training_inputs("configs/default.yaml", "r", pairs_root=str(tmp_path / "none"))


def test_example_image_and_comparison_run(roots, tmp_path):
    _, test, _ = roots
    assert P.example_image(None, str(test)).parent.name == "clean"
    with pytest.raises(P.InputsError):
        P.example_image(None, None)
    with pytest.raises(P.InputsError, match="notebook 06"):          # paper mode: no demo run
        P.comparison_run(str(tmp_path / "no_run"), demo=False)


def test_scene_synthesis_reuses_the_synthesis_behind_a_pair_root(toy, tmp_path):
    from nifi_lib.synthesis.pipeline import SynthesisSettings, codec_pairs, synthesize_scene

    art = tmp_path / "art" / "toy"
    synthesize_scene(toy, art, SynthesisSettings(c_min=30, finetune_iterations=2), progress=False, log=lambda s: None)
    codec_pairs(art, "train", tmp_path / "pairs" / "toy", progress=False, log=lambda s: None)
    s = P.scene_synthesis("data/benchmarks/mipnerf360/garden", tmp_path / "work", tmp_path / "pairs")
    assert s.reuse_synthesis and not s.reuse_pairs and s.name == "toy" and s.art_dir == art
    assert s.pairs_dir == tmp_path / "work" / "pairs" / "toy"        # no test split there: rendered into work_dir
    meta, seconds = s.synthesize(settings=None)
    assert seconds == 0.0 and meta["scene"] == "toy"
    codec_pairs(art, "test", tmp_path / "pairs" / "toy", progress=False, log=lambda s: None)
    again = P.scene_synthesis("toy", tmp_path / "work", tmp_path / "pairs")
    assert again.reuse_pairs and again.pairs_dir == tmp_path / "pairs" / "toy"
    assert again.test_pairs()[1] == 0.0
    fresh = P.scene_synthesis(toy, tmp_path / "work", tmp_path / "missing")   # no such root: synthesize `scene`
    assert not fresh.reuse_synthesis and fresh.art_dir == tmp_path / "work" / "artifacts" / "toy"


def test_notebook_parameter_comments_hold_no_equals_sign():
    """papermill reads `name = value  # comment`; an '=' inside the comment breaks its parser."""
    from nifi_lib.experiments.notebook_runner import list_notebooks

    for nb in list_notebooks():
        cell = next(c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        for line in "".join(cell["source"]).splitlines():
            if "#" in line:
                assert "=" not in line.split("#", 1)[1], (nb.name, line)

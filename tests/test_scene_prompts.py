"""Per-scene prompt embeddings in training (issue 15): each batch element is conditioned on its own scene's
caption; a folder written in the embed-prompts layout is what ``model.embeddings`` may name."""
from __future__ import annotations

import json

import pytest
import torch

from nifi_lib.diffusion.prompts import PromptEmbeddings, load_embeddings_npz, save_embeddings_npz
from nifi_lib.diffusion.text_encoding import DEFAULT_NPZ, INDEX_NAME
from nifi_lib.training.scene_prompts import ScenePromptError, ScenePrompts, training_embeddings
from nifi_lib.training.trainer import train
from trainer_helpers import make_backbone_dir, make_pairs, tiny_config


def _folder(tmp_path, bb_dir, scenes=("s1", "s2")):
    emb, null = load_embeddings_npz(bb_dir / "prompt_embeds.npz")
    out = tmp_path / "emb"
    index = {"scenes": {}, "default": {"file": DEFAULT_NPZ, "prompt": "default"}}
    for k, s in enumerate(scenes):
        e = PromptEmbeddings(emb.prompt_embeds + (k + 1), emb.pooled_prompt_embeds - (k + 1))
        save_embeddings_npz(out / f"{s}.npz", e, null)
        index["scenes"][f"pairs/{s}"] = {"file": f"{s}.npz", "prompt": f"caption {s}"}
    save_embeddings_npz(out / DEFAULT_NPZ, emb, null)
    (out / INDEX_NAME).write_text(json.dumps(index))
    return out, emb


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    return make_backbone_dir(root / "bb"), make_pairs(root / "pairs")


def test_batch_stacks_each_scenes_embedding(setup, tmp_path):
    bb_dir, _ = setup
    folder, emb = _folder(tmp_path, bb_dir)
    sp = ScenePrompts(folder)
    pe, pp = sp.batch(["pairs/s2", "pairs/s1", "other/s2", "unknown"])
    assert pe.shape[0] == 4 and pp.shape[0] == 4
    assert torch.equal(pe[0], emb.prompt_embeds[0] + 2) and torch.equal(pe[1], emb.prompt_embeds[0] + 1)
    assert torch.equal(pe[2], pe[0])                       # matched by the scene's folder name
    assert torch.equal(pe[3], emb.prompt_embeds[0])        # no caption: the default prompt
    assert sp.scenes() == ["pairs/s1", "pairs/s2"]


def test_null_prompt_is_required(setup, tmp_path):
    bb_dir, _ = setup
    emb, _ = load_embeddings_npz(bb_dir / "prompt_embeds.npz")
    save_embeddings_npz(tmp_path / DEFAULT_NPZ, emb, None)
    with pytest.raises(ScenePromptError, match="no null prompt"):
        ScenePrompts(tmp_path)


def test_training_conditions_each_element_on_its_scene(setup, tmp_path, monkeypatch):
    import nifi_lib.training.trainer as T

    bb_dir, pairs = setup
    folder, emb = _folder(tmp_path, bb_dir)
    cfg = tiny_config(bb_dir, max_steps=2, num_workers=0)
    cfg.model.embeddings = str(folder)
    cfg.model.prompt_dropout = 0.0
    assert training_embeddings(cfg, pairs, tmp_path) == str(folder)
    seen = []
    real = T.NiFiTrainer.train_step

    def spy(self, clean, deg, scenes=None):
        out = real(self, clean, deg, scenes)
        seen.append((scenes, self.step_prompts[0].clone()))
        return out

    monkeypatch.setattr(T.NiFiTrainer, "train_step", spy)
    train(cfg, pairs, tmp_path / "exp", progress=False, device="cpu")
    assert len(seen) == 2
    # restoring from this checkpoint uses the folder's default prompt (as the authors' restorer)
    from nifi_lib.restoration.io import checkpoint_settings, resolve_restore_settings

    ck = tmp_path / "exp" / "best.pt"
    assert checkpoint_settings(ck)["embeddings"] == str(folder)
    assert resolve_restore_settings(ck)[2] == str(folder / DEFAULT_NPZ)
    for scenes, pe in seen:
        assert len(scenes) == 2 and all(s in ("pairs/s1", "pairs/s2") for s in scenes)
        for s, row in zip(scenes, pe):
            k = 1 if s.endswith("s1") else 2
            assert torch.equal(row, emb.prompt_embeds[0] + k)


def test_embedded_backbone_has_no_text_encoders_so_nothing_is_computed(setup, tmp_path):
    bb_dir, pairs = setup
    cfg = tiny_config(bb_dir)
    cfg.model.embeddings = None
    assert training_embeddings(cfg, pairs, tmp_path) is None

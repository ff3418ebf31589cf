"""Prompt embeddings from the backbone's own text encoders (tiny random SD3): layout, values, files, CLI, errors."""
import json

import numpy as np
import pytest
import torch

from nifi_lib.cli import main
from nifi_lib.diffusion.backbone import load_backbone
from nifi_lib.diffusion.prompts import DEFAULT_PROMPT, PromptError, load_embeddings_npz
from nifi_lib.diffusion.sd3_random import build_random_sd3
from nifi_lib.diffusion.text_encoding import (TextEncoderError, embed_prompts_to_npz, encode_null_prompt,
                                              encode_prompts, load_text_encoders, scene_embeddings_path)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("te") / "tiny_sd3"
    build_random_sd3(out, shape="tiny", seed=1)
    return out


@pytest.fixture(scope="module")
def reference(sd3_dir):
    """A direct, independent call of diffusers' full pipeline (transformer and VAE loaded too)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    with torch.no_grad():
        out = {}
        for text in ("a photo of a garden", DEFAULT_PROMPT):
            out[text] = pipe.encode_prompt(prompt=text, prompt_2=text, prompt_3=text, device="cpu",
                                           do_classifier_free_guidance=True, negative_prompt="")
    return pipe, out


def test_encode_prompts_layout_and_values(sd3_dir, reference):
    pipe, ref = reference
    joint = pipe.transformer.config.joint_attention_dim
    pooled = pipe.transformer.config.pooled_projection_dim
    embs = encode_prompts(str(sd3_dir), ["a photo of a garden", DEFAULT_PROMPT])
    assert len(embs) == 2
    for emb, text in zip(embs, ("a photo of a garden", DEFAULT_PROMPT)):
        assert tuple(emb.prompt_embeds.shape) == (1, 77 + 256, joint)
        assert tuple(emb.pooled_prompt_embeds.shape) == (1, pooled)
        assert emb.prompt_embeds.dtype == torch.float32 and not emb.prompt_embeds.requires_grad
        pe, ne, pp, npp = ref[text]
        torch.testing.assert_close(emb.prompt_embeds, pe.float(), rtol=0, atol=0)
        torch.testing.assert_close(emb.pooled_prompt_embeds, pp.float(), rtol=0, atol=0)
    # the CLIP part is zero-padded to the T5 width (SD3's layout)
    clip_w = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert torch.count_nonzero(embs[0].prompt_embeds[:, :77, clip_w:]) == 0
    assert not torch.equal(embs[0].prompt_embeds, embs[1].prompt_embeds)
    # default prompt when none is given
    (default,) = encode_prompts(str(sd3_dir), None)
    torch.testing.assert_close(default.prompt_embeds, embs[1].prompt_embeds, rtol=0, atol=0)


def test_null_prompt_is_diffusers_negative(sd3_dir, reference):
    _, ref = reference
    te = load_text_encoders(str(sd3_dir))
    assert te.transformer is None and te.vae is None      # only the text side is loaded
    null = encode_null_prompt(te)
    _, ne, _, npp = ref["a photo of a garden"]
    torch.testing.assert_close(null.prompt_embeds, ne.float(), rtol=0, atol=0)
    torch.testing.assert_close(null.pooled_prompt_embeds, npp.float(), rtol=0, atol=0)


def test_npz_roundtrip_and_load_backbone(sd3_dir, reference, tmp_path):
    _, ref = reference
    f = tmp_path / "emb.npz"
    summary = embed_prompts_to_npz(str(sd3_dir), f, prompt="a photo of a garden")
    assert summary["files"] == [str(f)]
    with np.load(f) as z:
        assert sorted(z.files) == ["negative_pooled_prompt_embeds", "negative_prompt_embeds",
                                   "pooled_prompt_embeds", "prompt_embeds"]
        assert z["prompt_embeds"].dtype == np.float32
    prompt, null = load_embeddings_npz(f)
    pe, ne, pp, npp = ref["a photo of a garden"]
    torch.testing.assert_close(prompt.prompt_embeds, pe.float(), rtol=0, atol=0)
    torch.testing.assert_close(null.pooled_prompt_embeds, npp.float(), rtol=0, atol=0)
    bb = load_backbone(str(sd3_dir), embeddings=f)    # check_embeddings_fit passes
    assert bb.prompt is not None and bb.null_prompt is not None
    assert bb.prompt_batch(2)[0].shape == (2, 333, bb.transformer.config.joint_attention_dim)


def test_prompts_json_folder_and_index(sd3_dir, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"garden": "a garden with a table", "mipnerf360/bonsai": "a bonsai tree"}))
    out = tmp_path / "embs"
    summary = embed_prompts_to_npz(str(sd3_dir), out, prompts_json=prompts)
    index = json.loads((out / "index.json").read_text())
    assert set(index["scenes"]) == {"garden", "mipnerf360/bonsai"}
    assert index["shapes"]["prompt_embeds"][1] == 333 and len(summary["files"]) == 3
    g, gnull = load_embeddings_npz(scene_embeddings_path(out, "garden"))
    b, _ = load_embeddings_npz(scene_embeddings_path(out, "bonsai"))          # last path component
    d, _ = load_embeddings_npz(scene_embeddings_path(out, "unknown_scene"))   # default prompt's file
    (ref_g, ref_d) = encode_prompts(str(sd3_dir), ["a garden with a table", DEFAULT_PROMPT])
    torch.testing.assert_close(g.prompt_embeds, ref_g.prompt_embeds, rtol=0, atol=0)
    torch.testing.assert_close(d.prompt_embeds, ref_d.prompt_embeds, rtol=0, atol=0)
    assert gnull is not None and not torch.equal(b.prompt_embeds, g.prompt_embeds)
    with pytest.raises(PromptError, match="folder"):
        embed_prompts_to_npz(str(sd3_dir), tmp_path / "x.npz", prompts_json=prompts)


def test_cli_embed_prompts(sd3_dir, tmp_path, capsys):
    f = tmp_path / "cli.npz"
    assert main(["embed-prompts", "--base_model", str(sd3_dir), "--out", str(f), "--device", "cpu"]) == 0
    prompt, null = load_embeddings_npz(f)
    assert prompt.prompt_embeds.shape[1] == 333 and null is not None
    assert "with the null prompt" in capsys.readouterr().out
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"room": "an indoor room"}))
    assert main(["embed-prompts", "--base_model", str(sd3_dir), "--prompts", str(prompts),
                 "--out", str(tmp_path / "d"), "--device", "cpu", "--dtype", "fp32"]) == 0
    assert (tmp_path / "d" / "room.npz").is_file() and (tmp_path / "d" / "index.json").is_file()


def test_errors_offline_hub_id_and_bad_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "stabilityai/stable-diffusion-3-medium-diffusers"
    with pytest.raises(TextEncoderError) as e:
        encode_prompts(model, ["x"])
    assert model in str(e.value) and "huggingface-cli download" in str(e.value) and "--local-dir" in str(e.value)
    assert main(["embed-prompts", "--base_model", model, "--out", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "huggingface-cli download" in err and not (tmp_path / "o.npz").exists()
    # a backbone folder without text encoders (the embedded kind) and a missing folder
    (tmp_path / "bb" / "transformer").mkdir(parents=True)
    with pytest.raises(TextEncoderError, match="no text encoders"):
        load_text_encoders(str(tmp_path / "bb"))
    with pytest.raises(TextEncoderError, match="not found"):
        load_text_encoders(str(tmp_path / "missing"))


def test_hub_failure_is_wrapped(monkeypatch):
    """Without HF_HUB_OFFLINE, a Hub failure (no network, gated repo) still ends in the clear error."""
    from diffusers import StableDiffusion3Pipeline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", unreachable)
    with pytest.raises(TextEncoderError) as e:
        load_text_encoders("owner/some-sd3")
    msg = str(e.value)
    assert "'owner/some-sd3'" in msg and "huggingface-cli download owner/some-sd3 --local-dir DIR" in msg


def test_training_embeddings_are_computed_once_from_the_backbones_text_encoders(sd3_dir, tmp_path):
    """model.embeddings null + an SD3 folder with text encoders: per-scene embeddings from the pairs' prompts.json
    are computed into <exp>/prompt_embeds/ and reused (not recomputed) on the next call."""
    from nifi_lib.config import load_config
    from nifi_lib.data.prompts import save_prompts
    from nifi_lib.training.scene_prompts import ScenePrompts, training_embeddings

    cfg = load_config("configs/default.yaml", overrides={"model": {"backbone": str(sd3_dir), "embeddings": None}})
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    save_prompts(pairs / "prompts.json", {"pairs/a": "a red chair", "pairs/b": "a garden"})
    got = training_embeddings(cfg, pairs, tmp_path / "exp")
    assert got == str(tmp_path / "exp" / "prompt_embeds")
    sp = ScenePrompts(got)
    pe, _ = sp.batch(["pairs/a", "pairs/b"])
    assert pe.shape[0] == 2 and not torch.equal(pe[0], pe[1])
    stamp = (tmp_path / "exp" / "prompt_embeds" / "index.json").stat().st_mtime_ns
    assert training_embeddings(cfg, pairs, tmp_path / "exp") == got
    assert (tmp_path / "exp" / "prompt_embeds" / "index.json").stat().st_mtime_ns == stamp
    # no prompts.json: one .npz of the authors' default prompt
    one = training_embeddings(cfg, tmp_path / "none", tmp_path / "exp2")
    assert one.endswith("prompt_embeds/prompt_embeds.npz")

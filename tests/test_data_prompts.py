"""Per-scene prompts: file validation, default fallback, and the captioning path OFFLINE with a tiny,
randomly initialised Qwen2.5-VL (1 text layer, 1 vision block) and a word-level tokenizer built here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nifi_lib.data import prompts as pr
from nifi_lib.data.prompts import (CaptionModelError, PromptFileError, caption_targets, load_prompts,
                                   prompt_for_scene)
from nifi_lib.data.prompts import DEFAULT_PROMPT

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
WORDS = "a the scene of with garden tree house room table chair sky grass road car red green blue photo".split()
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_vlm(folder: Path) -> None:
    """A Qwen2.5-VL-shaped model + processor saved as a local folder, with no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    vocab = {t: i for i, t in enumerate(SPECIALS + ["[UNK]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(SPECIALS)
    ftok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]", chat_template=CHAT)
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
                               video_processor=Qwen2VLVideoProcessor(), tokenizer=ftok, chat_template=CHAT)
    ids = {t: vocab[t] for t in SPECIALS}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 10000.0},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0], window_size=28),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)


def make_data_root(root: Path) -> None:
    """Two COLMAP-free scene kinds: an embedded scene (cameras.json) and a pair folder."""
    from nifi_lib.gs.cameras import Camera, look_at, write_scene_cameras

    rng = np.random.default_rng(0)
    cams = []
    scene = root / "garden"
    for i in range(9):
        p = scene / "images" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(p)
        cams.append(Camera(p.name, 56, 40, 50, 50, 28, 20, look_at((3, i * 0.1, 1), (0, 0, 0)), p))
    write_scene_cameras(scene / "cameras.json", cams)
    clean = root / "pairs" / "truck" / "rate_0.1" / "train" / "clean"
    clean.mkdir(parents=True)
    for n in ("b.png", "a.png"):
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(clean / n)


def test_caption_targets_use_first_training_frame(tmp_path):
    make_data_root(tmp_path)
    t = caption_targets(tmp_path)
    # embedded scene: view 0 is a test view (every 8th), the first training frame is view 1
    assert t == {"garden": tmp_path / "garden" / "images" / "001.png",
                 "truck": tmp_path / "pairs" / "truck" / "rate_0.1" / "train" / "clean" / "a.png"}
    assert caption_targets(tmp_path, split="all")["garden"] == tmp_path / "garden" / "images" / "000.png"


def test_prompts_cli_offline_with_tiny_vlm(tmp_path, capsys, monkeypatch):
    import nifi_lib.cli
    from nifi_lib.cli import main

    monkeypatch.setattr(nifi_lib.cli, "COMMAND_MODULES", ["nifi_lib.data.cli"])  # only this area's commands

    build_tiny_vlm(tmp_path / "tiny_vlm")
    make_data_root(tmp_path / "data")
    out = tmp_path / "prompts.json"
    rc = main(["prompts", "--data_root", str(tmp_path / "data"), "--model", str(tmp_path / "tiny_vlm"),
               "--out", str(out), "--device", "cpu", "--max_new_tokens", "6", "--no_progress"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert sorted(data) == ["garden", "truck"]
    assert all(isinstance(v, str) and v.strip() for v in data.values())
    # the text is the tiny model's greedy decoding (words of its vocabulary), not the default-prompt fallback
    assert all(v != DEFAULT_PROMPT and set(v.split()) <= set(WORDS) for v in data.values())
    assert load_prompts(out) == data
    # a second run resumes: nothing left to caption, the model is not even loaded
    rc = main(["prompts", "--data_root", str(tmp_path / "data"), "--model", str(tmp_path / "missing"),
               "--out", str(out), "--no_progress"])
    assert rc == 0 and json.loads(out.read_text()) == data


def test_model_not_available_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(CaptionModelError, match=r"model folder not found.*--model DIR"):
        pr.load_captioner(str(tmp_path / "no_such_model"), device="cpu")
    import transformers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", offline)
    with pytest.raises(CaptionModelError) as ei:
        pr.load_captioner("Qwen/Qwen2.5-VL-7B-Instruct", device="cpu")
    msg = str(ei.value)
    assert "'Qwen/Qwen2.5-VL-7B-Instruct'" in msg and "huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct" in msg


def test_prompt_files_validate_and_fall_back_to_default(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"garden": "  a garden table  ", "mipnerf360/bicycle": "a bike"}))
    prompts = load_prompts(p)
    assert prompts["garden"] == "a garden table"
    assert prompt_for_scene(prompts, "garden") == "a garden table"
    assert prompt_for_scene(prompts, "bicycle") == "a bike"          # matched on the last path component
    assert prompt_for_scene(prompts, "room") == DEFAULT_PROMPT
    assert prompt_for_scene(None, "room") == DEFAULT_PROMPT
    for bad, match in ((["x"], "JSON object"), ({"a": ""}, "non-empty string"), ({"a": 3}, "non-empty string")):
        p.write_text(json.dumps(bad))
        with pytest.raises(PromptFileError, match=match):
            load_prompts(p)
    p.write_text("{not json")
    with pytest.raises(PromptFileError, match="cannot parse"):
        load_prompts(p)
    with pytest.raises(PromptFileError, match="not found"):
        load_prompts(tmp_path / "none.json")

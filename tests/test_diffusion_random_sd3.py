"""The random-weight SD3 folder: real class structure, loads with diffusers and load_backbone; SD3-medium configs."""
import json

import pytest
import torch

from nifi_lib.cli import main
from nifi_lib.diffusion import sd3_random
from nifi_lib.diffusion.backbone import MARKER, load_backbone
from nifi_lib.diffusion.sd3_random import (RANDOM_MARKER, SD3_MEDIUM_TRANSFORMER_CONFIG, SD3_MEDIUM_VAE_CONFIG,
                                           RandomSD3Error, build_random_sd3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rsd3") / "tiny"
    info = build_random_sd3(out, shape="tiny", seed=0)
    return out, info


def test_tiny_folder_layout_and_marker(tiny_dir):
    out, info = tiny_dir
    for sub in ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "text_encoder_3",
                "tokenizer", "tokenizer_2", "tokenizer_3"):
        assert (out / sub).is_dir(), sub
    assert not (out / MARKER).exists()            # not the project's embedded kind
    marker = json.loads((out / RANDOM_MARKER).read_text())
    assert marker["shape"] == "tiny" and marker["seed"] == 0 and "rehearsal" in marker["note"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    assert list((out / "transformer").glob("*.safetensors"))
    assert sd3_random.folder_size_bytes(out) < 20 * 2**20      # a few MB
    assert not out.with_name(out.name + ".partial").exists()
    assert info["parameters"]["transformer"] > 0


def test_tiny_loads_with_diffusers_pipeline(tiny_dir):
    from diffusers import StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    out, _ = tiny_dir
    pipe = StableDiffusion3Pipeline.from_pretrained(out)
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_3, T5EncoderModel)
    assert pipe.tokenizer.model_max_length == 77
    cfg = pipe.transformer.config
    # the transformer's widths fit the text encoders: joint = T5 width, pooled = CLIP-L proj + CLIP-G proj
    assert cfg.joint_attention_dim == pipe.text_encoder_3.config.d_model
    assert cfg.pooled_projection_dim == (pipe.text_encoder.config.projection_dim
                                         + pipe.text_encoder_2.config.projection_dim)
    assert pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size <= cfg.joint_attention_dim
    # the tokenizers round-trip words of the corpus and end with their EOS
    ids = pipe.tokenizer("a photo of a garden").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert pipe.tokenizer_3("a garden").input_ids[-1] == pipe.tokenizer_3.eos_token_id
    with torch.no_grad():
        img = pipe("a garden", num_inference_steps=1, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3)


def test_tiny_loads_with_load_backbone(tiny_dir):
    out, _ = tiny_dir
    bb = load_backbone(str(out))
    assert bb.kind == "sd3" and bb.prompt is None
    assert bb.vae_scale_factor == 8 and bb.scaling_factor == pytest.approx(1.5305)
    assert bb.shift_factor == pytest.approx(0.0609)
    assert bb.transformer.config.in_channels == bb.vae.config.latent_channels == 16


def test_build_refuses_nonempty_and_unknown_shape(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(RandomSD3Error, match="not empty"):
        build_random_sd3(tmp_path / "x")
    assert (tmp_path / "x" / "f").read_text() == "keep"
    with pytest.raises(RandomSD3Error, match="unknown shape"):
        build_random_sd3(tmp_path / "y", shape="huge")


def test_sd3_medium_configs_on_meta_device():
    """SD3-medium's shapes, without building the weights: ~2.0B transformer parameters (meta device)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    n = sd3_random.count_parameters_meta(SD3_MEDIUM_TRANSFORMER_CONFIG)
    assert 1.95e9 < n < 2.1e9, n
    c = SD3_MEDIUM_TRANSFORMER_CONFIG
    assert (c["num_layers"], c["num_attention_heads"], c["attention_head_dim"]) == (24, 24, 64)
    assert c["caption_projection_dim"] == c["num_attention_heads"] * c["attention_head_dim"] == 1536
    assert (c["joint_attention_dim"], c["pooled_projection_dim"], c["pos_embed_max_size"]) == (4096, 2048, 192)
    spec = sd3_random.SHAPE_SPECS["sd3-medium"]
    assert spec["dtype"] == torch.float16
    # SD3's text widths: CLIP-L 768 + CLIP-G 1280 = 2048 pooled; T5 4096 = the joint width
    assert spec["clip_l"]["projection_dim"] + spec["clip_g"]["projection_dim"] == c["pooled_projection_dim"]
    assert spec["t5"]["d_model"] == c["joint_attention_dim"]
    with init_empty_weights():
        vae = AutoencoderKL(**SD3_MEDIUM_VAE_CONFIG)
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=2000, num_hidden_layers=2,
                                                            **spec["clip_g"]))
        t5 = T5EncoderModel(T5Config(vocab_size=1000, num_layers=2, **spec["t5"]))
    assert vae.config.latent_channels == 16 and tuple(vae.config.block_out_channels) == (128, 256, 512, 512)
    assert 80e6 < sum(p.numel() for p in vae.parameters()) < 90e6     # SD3's VAE: 83.7M
    assert clip_g.text_projection.out_features == 1280
    # shallow T5 at SD3's width: the folder stays a few GB in fp16 (transformer ~4 GB)
    t5_params = sum(p.numel() for p in t5.parameters())
    assert t5_params * 2 < 1.0e9
    total_fp16 = (n + t5_params) * 2
    assert total_fp16 < 6e9


def test_cli_build_random(tmp_path, capsys):
    out = tmp_path / "cli_tiny"
    assert main(["backbone", "build-random", "--shape", "tiny", "--out", str(out), "--seed", "3"]) == 0
    assert json.loads((out / RANDOM_MARKER).read_text())["seed"] == 3
    assert "rehearsal" in capsys.readouterr().out
    assert main(["backbone", "build-random", "--out", str(out)]) == 2      # not empty -> clear error
    assert "not empty" in capsys.readouterr().err

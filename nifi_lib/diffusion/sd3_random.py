"""A randomly initialised SD3 folder with the real class structure (rehearsal without the gated weights).

``build_random_sd3(out_dir, shape)`` writes a diffusers-layout ``StableDiffusion3Pipeline`` folder:
``model_index.json``, ``transformer/`` (``SD3Transformer2DModel``), ``vae/`` (``AutoencoderKL``),
``scheduler/`` (``FlowMatchEulerDiscreteScheduler``), ``text_encoder/`` + ``text_encoder_2/``
(``CLIPTextModelWithProjection``, CLIP-L and CLIP-G), ``text_encoder_3/`` (``T5EncoderModel``) and the three
tokenizers, built locally with the ``tokenizers`` library (small BPE / Unigram vocabularies trained on a
built-in corpus). Nothing is downloaded.

- ``shape="sd3-medium"``: the transformer and the VAE have SD3-medium's configs (about 2.0B transformer
  parameters); the text encoders have SD3's widths (CLIP-L 768, CLIP-G 1280, T5 4096: prompt embeddings
  ``(1, 77 + 256, 4096)`` and pooled ``(1, 2048)``, the authors' layout) but are shallow
  (``text_encoder_layers``, default 2) with small vocabularies. Weights stored in fp16 (about 5 GB).
- ``shape="tiny"``: the same classes at a few MB (joint width 128, pooled 32 + 64 = 96), for tests.

The folder is marked with ``nifi_random_sd3.json`` (never ``nifi_backbone.json``: it is an ``sd3`` kind
backbone for :func:`~nifi_lib.diffusion.backbone.load_backbone`, not the embedded one).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from pathlib import Path

import torch

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from .prompts import DEFAULT_PROMPT

RANDOM_MARKER = "nifi_random_sd3.json"
SHAPES = ("tiny", "sd3-medium")
CLIP_MAX_LENGTH = 77        # SD3's CLIP tokenizers (tokenizer.model_max_length)
T5_MODEL_MAX_LENGTH = 512   # SD3's tokenizer_3; the pipeline pads/truncates T5 to max_sequence_length=256

# SD3-medium's transformer/config.json and vae/config.json (stabilityai/stable-diffusion-3-medium-diffusers)
SD3_MEDIUM_TRANSFORMER_CONFIG = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
SD3_MEDIUM_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=1024,
    scaling_factor=1.5305, shift_factor=0.0609, force_upcast=True, use_quant_conv=False,
    use_post_quant_conv=False, latents_mean=None, latents_std=None,
)
SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
# SD3's text encoders: widths and heads as released (depth and vocabulary are chosen at build time)
SD3_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768,
                  hidden_act="quick_gelu")
SD3_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, projection_dim=1280,
                  hidden_act="gelu")
SD3_T5 = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, feed_forward_proj="gated-gelu")

TINY_TRANSFORMER_CONFIG = dict(
    sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=128, caption_projection_dim=32, pooled_projection_dim=96,
    pos_embed_max_size=64,
)
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64,
    scaling_factor=1.5305, shift_factor=0.0609, force_upcast=True, use_quant_conv=False,
    use_post_quant_conv=False, latents_mean=None, latents_std=None,
)
TINY_CLIP_L = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, projection_dim=32,
                   hidden_act="quick_gelu")
TINY_CLIP_G = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, projection_dim=64,
                   hidden_act="gelu")
TINY_T5 = dict(d_model=128, d_kv=16, d_ff=256, num_heads=4, feed_forward_proj="gated-gelu")

SHAPE_SPECS = {
    "tiny": dict(transformer=TINY_TRANSFORMER_CONFIG, vae=TINY_VAE_CONFIG, clip_l=TINY_CLIP_L, clip_g=TINY_CLIP_G,
                 t5=TINY_T5, text_encoder_layers=2, clip_vocab=600, t5_vocab=400, dtype=torch.float32),
    "sd3-medium": dict(transformer=SD3_MEDIUM_TRANSFORMER_CONFIG, vae=SD3_MEDIUM_VAE_CONFIG, clip_l=SD3_CLIP_L,
                       clip_g=SD3_CLIP_G, t5=SD3_T5, text_encoder_layers=2, clip_vocab=2000, t5_vocab=1000,
                       dtype=torch.float16),
}

MODEL_INDEX = {
    "_class_name": "StableDiffusion3Pipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "text_encoder_3": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "tokenizer_3": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "SD3Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# Built-in corpus the tokenizers are trained on: the authors' default prompt plus common scene words.
_CORPUS = [
    DEFAULT_PROMPT,
    "a photo of a garden with a wooden table, flowers, trees and a house in the background",
    "an indoor room with a sofa, a lamp, a kitchen counter, chairs, a window and a bicycle",
    "a street at night with cars, buildings, people walking, a bridge over the river and mountains",
    "a bonsai tree on a table, a truck parked near a train station, a playroom with toys",
    "the quick brown fox jumps over the lazy dog; 0 1 2 3 4 5 6 7 8 9, red green blue white black",
    "a realistic high quality image of a scene, sharp details, natural light, outdoor, indoor, sky, grass",
]


class RandomSD3Error(NifiError, ValueError):
    """Bad arguments for :func:`build_random_sd3` (unknown shape, folder in the way)."""


# --------------------------------------------------------------------------- tokenizers

def build_clip_tokenizer(vocab_size: int = 600, pad_token: str = "<|endoftext|>"):
    """A CLIP-style byte-level BPE tokenizer (``CLIPTokenizer``), trained locally on a small corpus.

    Vocabulary order as CLIP's: the 256 byte symbols, the same with ``</w>``, the merges, then
    ``<|startoftext|>`` and ``<|endoftext|>``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                                   r"""[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>", special_tokens=[])
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    symbols = sorted(alphabet, key=lambda c: ord(c))
    order = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab: dict[str, int] = {}
    for tok in order:
        vocab.setdefault(tok, len(vocab))
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(tok, len(vocab))
    if pad_token not in vocab:   # "!" (tokenizer_2's pad) is a byte symbol already
        vocab[pad_token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=CLIP_MAX_LENGTH)


def build_t5_tokenizer(vocab_size: int = 400, extra_ids: int = 100):
    """A T5-style Unigram tokenizer (``T5TokenizerFast``): ``<pad>``=0, ``</s>``=1, ``<unk>``=2, the pieces,
    then the ``<extra_id_*>`` sentinels in reverse order, as T5's; trained locally on a small corpus."""
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=False, unk_token="<unk>",
                                      special_tokens=["<pad>", "</s>", "<unk>"],
                                      initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
                                      max_piece_length=12)
    uni.train_from_iterator(_CORPUS * 4, trainer=trainer)
    pieces = [(p, float(s)) for p, s in json.loads(uni.to_str())["model"]["vocab"]]
    specials = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab = [(t, 0.0) for t in specials] + [(p, s) for p, s in pieces if p not in specials]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    return T5TokenizerFast(vocab=vocab, extra_ids=extra_ids, model_max_length=T5_MODEL_MAX_LENGTH)


# --------------------------------------------------------------------------- text encoders

def _clip_encoder(spec: dict, tokenizer, layers: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), num_hidden_layers=layers, max_position_embeddings=CLIP_MAX_LENGTH,
                         layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec)
    return CLIPTextModelWithProjection(cfg)


def _t5_encoder(spec: dict, tokenizer, layers: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(tokenizer), num_layers=layers, num_decoder_layers=layers,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
                   layer_norm_epsilon=1e-6, is_encoder_decoder=True, use_cache=False, tie_word_embeddings=False,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **spec)
    return T5EncoderModel(cfg)


# --------------------------------------------------------------------------- the folder

@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _save(model, folder: Path, dtype: torch.dtype) -> int:
    """Cast, save with safetensors, free; returns the parameter count."""
    n = sum(p.numel() for p in model.parameters())
    stray = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point() and t.dtype != dtype]
    if stray:   # e.g. the transformer's sin-cos pos_embed buffer, made in float32 whatever the default dtype
        from diffusers.utils import logging as dlogging

        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()   # diffusers' "modules that should be kept in float32: []" notice
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.to(dtype)
        finally:
            dlogging.set_verbosity(level)
    model.save_pretrained(folder, safe_serialization=True)
    return n


def build_random_sd3(out_dir: str | Path, shape: str = "tiny", seed: int = 0,
                     text_encoder_layers: int | None = None, overwrite: bool = False,
                     dtype: torch.dtype | None = None, progress=None) -> dict:
    """Write a random-weight ``StableDiffusion3Pipeline`` folder at ``shape`` (``tiny`` or ``sd3-medium``).

    Components are built in the storage ``dtype`` (default: fp16 at SD3-medium shape, fp32 tiny), saved and
    freed one at a time (peak memory: the largest component, the SD3-medium transformer, ~4 GB in fp16;
    measured on 2 CPU cores: 43 s, 5.1 GB peak RSS, 4.9 GiB on disk). The folder is assembled under
    ``<out_dir>.partial`` and renamed into place at the end, so an interrupted build never leaves a half
    folder at ``out_dir``. Returns the marker's content (shape, seed, parameter counts, seconds).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, __version__

    if shape not in SHAPE_SPECS:
        raise RandomSD3Error(f"unknown shape '{shape}' (use one of: {', '.join(SHAPES)})")
    spec = SHAPE_SPECS[shape]
    layers = int(text_encoder_layers or spec["text_encoder_layers"])
    if layers < 1:
        raise RandomSD3Error(f"text_encoder_layers must be >= 1, got {layers}")
    dtype = dtype or spec["dtype"]
    out = Path(out_dir)
    if (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir()):
        if not overwrite:
            raise RandomSD3Error(f"{out}: exists and is not empty (pass overwrite=True / --overwrite)")
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    params: dict[str, int] = {}

    torch.manual_seed(seed)
    say("tokenizers")
    tok_l = build_clip_tokenizer(spec["clip_vocab"])
    tok_g = build_clip_tokenizer(spec["clip_vocab"], pad_token="!")
    tok_t5 = build_t5_tokenizer(spec["t5_vocab"])
    for name, tok in (("tokenizer", tok_l), ("tokenizer_2", tok_g), ("tokenizer_3", tok_t5)):
        tok.save_pretrained(tmp / name)

    for i, (name, build) in enumerate((
            ("text_encoder", lambda: _clip_encoder(spec["clip_l"], tok_l, layers)),
            ("text_encoder_2", lambda: _clip_encoder(spec["clip_g"], tok_g, layers)),
            ("text_encoder_3", lambda: _t5_encoder(spec["t5"], tok_t5, layers)),
            ("vae", lambda: AutoencoderKL(**spec["vae"])),
            ("transformer", lambda: SD3Transformer2DModel(**spec["transformer"])))):
        say(name)
        torch.manual_seed(seed + 1 + i)
        with _default_dtype(dtype):   # built in the storage dtype: half the peak memory at SD3-medium shape
            model = build()
        params[name] = _save(model, tmp / name, dtype)
        del model
    FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")

    atomic_write_json(tmp / "model_index.json", {**MODEL_INDEX, "_diffusers_version": __version__})
    info = {"shape": shape, "seed": int(seed), "note": "random weights, for rehearsal only",
            "text_encoder_layers": layers, "dtype": str(dtype).replace("torch.", ""), "parameters": params,
            "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(tmp / RANDOM_MARKER, info)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    return info


def is_random_sd3_dir(path: str | Path) -> bool:
    return (Path(path) / RANDOM_MARKER).is_file()


def folder_size_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def count_parameters_meta(config: dict | None = None) -> int:
    """Parameters of an ``SD3Transformer2DModel`` built on the meta device (no memory, no init time)."""
    from accelerate import init_empty_weights
    from diffusers import SD3Transformer2DModel

    with init_empty_weights():
        model = SD3Transformer2DModel(**(config or SD3_MEDIUM_TRANSFORMER_CONFIG))
    return sum(p.numel() for p in model.parameters())

"""Prompt embeddings from the backbone's own text encoders (CLIP-L, CLIP-G, T5) through diffusers.

``encode_prompts(base_model, prompts)`` returns one :class:`~.prompts.PromptEmbeddings` per prompt in the
authors' layout (``prompt_embeds`` ``(1, 77 + 256, 4096)``, ``pooled_prompt_embeds`` ``(1, 2048)`` at SD3
shape; float32 on the CPU), computed by ``StableDiffusion3Pipeline.encode_prompt`` with only the text
encoders and tokenizers loaded (no transformer, no VAE). :func:`encode_null_prompt` is the encoding of
``""``: the unconditional branch of classifier-free guidance, as diffusers' SD3 pipeline computes it.

``embed_prompts_to_npz`` writes the authors' .npz (plus ``negative_*`` for the null prompt), for one
prompt, or for a ``{scene: prompt}`` file (``nifi prompts``) one .npz per scene plus ``index.json``
(:func:`scene_embeddings_path` resolves a scene as :func:`~nifi_lib.data.prompts.prompt_for_scene` does).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from .prompts import DEFAULT_PROMPT, PromptEmbeddings, PromptError, save_embeddings_npz

INDEX_NAME = "index.json"
DEFAULT_NPZ = "_default.npz"
SINGLE_NPZ = "prompt_embeds.npz"
T5_SEQUENCE_LENGTH = 256    # SD3's max_sequence_length: prompt_embeds has 77 + 256 tokens
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


class TextEncoderError(NifiError, RuntimeError):
    """The backbone's text encoders cannot be loaded (missing folder, no network, gated repo, no T5)."""


def _resolve_dtype(dtype, device) -> torch.dtype:
    from .backbone import DTYPES

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise TextEncoderError(f"unknown dtype '{dtype}' (use auto, fp32, bf16 or fp16)")
    return DTYPES[dtype]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _download_hint(model: str) -> str:
    return (f"Offline: on a machine with internet run `huggingface-cli download {model} --local-dir DIR` (SD3-medium "
            "is gated: accept its licence on the Hub and set HF_TOKEN first), copy DIR here and pass "
            "--base_model DIR; or pass a precomputed .npz (--embeddings). For a rehearsal without the real "
            "weights: `nifi backbone build-random --shape tiny --out DIR`.")


def load_text_encoders(base_model: str | Path, device: str | torch.device = "cpu", dtype="auto",
                       token: str | None = None):
    """An SD3 pipeline with only its text encoders and tokenizers (``transformer`` and ``vae`` are None)."""
    from diffusers import StableDiffusion3Pipeline

    model = str(base_model)
    local = Path(model).expanduser()
    torch_dtype = _resolve_dtype(dtype, device)
    if local.exists():
        if not local.is_dir():
            raise TextEncoderError(f"{local}: the base model must be a diffusers folder (model_index.json, "
                                   "text_encoder*/, tokenizer*/)")
        missing = [c for c in TEXT_COMPONENTS if not (local / c).is_dir()]
        if missing:
            raise TextEncoderError(
                f"{local}: no text encoders to encode prompts with (missing {', '.join(m + '/' for m in missing)}). "
                "The embedded backbone has none: use its prompt_embeds.npz; for SD3 use the full diffusers folder "
                "(or `nifi backbone build-random` for a rehearsal).")
        source = str(local)
    elif model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise TextEncoderError(f"{model}: base model folder not found (and not a Hub id 'owner/name'). "
                               + _download_hint(model if model.count("/") == 1 else "stabilityai/"
                                                "stable-diffusion-3-medium-diffusers"))
    else:
        if _offline():
            raise TextEncoderError(f"cannot load the text encoders of '{model}': HF_HUB_OFFLINE is set and it is "
                                   "not a local folder. " + _download_hint(model))
        source = model
    token = token or os.environ.get("HF_TOKEN")
    try:
        pipe = StableDiffusion3Pipeline.from_pretrained(source, transformer=None, vae=None, dtype=torch_dtype,
                                                        token=token)
    except Exception as e:  # OSError (offline / not found / gated), ValueError (bad folder), ...
        first = (str(e).strip().splitlines() or [""])[0][:300]
        where = f"{local}" if local.exists() else f"'{model}' (Hugging Face Hub)"
        raise TextEncoderError(f"cannot load the text encoders of {where} ({e.__class__.__name__}: {first}). "
                               + _download_hint(model if not local.exists() else "stabilityai/"
                                                "stable-diffusion-3-medium-diffusers")) from e
    if pipe.text_encoder_3 is None:   # diffusers then pads with zeros sized by the (absent) transformer
        raise TextEncoderError(f"{model}: no T5 text encoder (text_encoder_3); SD3's prompt layout needs it")
    pipe.to(device)
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        m.requires_grad_(False)
        m.eval()
    return pipe


def _encode(pipe, text: str, device, max_sequence_length: int) -> PromptEmbeddings:
    with torch.no_grad():
        pe, _, pp, _ = pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None, device=device,
                                          do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)
    return PromptEmbeddings(pe.float().cpu().contiguous(), pp.float().cpu().contiguous())


def encode_prompts(base_model_or_pipe, prompts: list[str] | None = None, device: str | torch.device = "cpu",
                   dtype="auto", token: str | None = None,
                   max_sequence_length: int = T5_SEQUENCE_LENGTH) -> list[PromptEmbeddings]:
    """One embedding per prompt (the authors' default prompt when ``prompts`` is None or empty).

    ``base_model_or_pipe`` is a diffusers SD3 folder, a Hub id, or a pipeline from :func:`load_text_encoders`
    (reused, e.g. for many scenes). Identical texts are encoded once."""
    texts = list(prompts) if prompts else [DEFAULT_PROMPT]
    for t in texts:
        if not isinstance(t, str):
            raise PromptError(f"prompts must be strings, got {t!r}")
    pipe = base_model_or_pipe if hasattr(base_model_or_pipe, "encode_prompt") else \
        load_text_encoders(base_model_or_pipe, device, dtype, token)
    done: dict[str, PromptEmbeddings] = {}
    for t in texts:
        if t not in done:
            done[t] = _encode(pipe, t, device, max_sequence_length)
    return [done[t] for t in texts]


def encode_null_prompt(base_model_or_pipe, device: str | torch.device = "cpu", dtype="auto",
                       token: str | None = None, max_sequence_length: int = T5_SEQUENCE_LENGTH) -> PromptEmbeddings:
    """The null prompt of classifier-free guidance: the encoding of ``""`` (diffusers' SD3 negative prompt)."""
    pipe = base_model_or_pipe if hasattr(base_model_or_pipe, "encode_prompt") else \
        load_text_encoders(base_model_or_pipe, device, dtype, token)
    return _encode(pipe, "", device, max_sequence_length)


def _check_fits_local_transformer(base_model: str, emb: PromptEmbeddings) -> None:
    cfg_path = Path(base_model).expanduser() / "transformer" / "config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    d, p = emb.prompt_embeds.shape[-1], emb.pooled_prompt_embeds.shape[-1]
    if d != cfg.get("joint_attention_dim", d) or p != cfg.get("pooled_projection_dim", p):
        raise PromptError(f"{base_model}: the text encoders give widths ({d}, {p}) but the transformer expects "
                          f"joint_attention_dim {cfg.get('joint_attention_dim')} and pooled_projection_dim "
                          f"{cfg.get('pooled_projection_dim')}")


def scene_file_name(scene: str) -> str:
    """A file name for a scene key (keys may be relative paths such as ``mipnerf360/garden``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", scene.strip().replace("/", "__")).strip("._") or "scene"
    return stem + ".npz"


def embed_prompts_to_npz(base_model: str | Path, out_path: str | Path, prompt: str | None = None,
                         prompts_json: str | Path | None = None, device: str | torch.device = "cpu", dtype="auto",
                         token: str | None = None, max_sequence_length: int = T5_SEQUENCE_LENGTH) -> dict:
    """Encode prompts and write the authors' .npz files (with the null prompt as ``negative_*``); atomic.

    - one prompt (``prompt``, default: the authors' default prompt): ``out_path`` is the .npz (or a folder,
      then ``<folder>/prompt_embeds.npz``);
    - ``prompts_json`` (``{scene: prompt}``, as ``nifi prompts`` writes): ``out_path`` is a folder with one
      ``<scene>.npz`` per scene, ``_default.npz`` (the default prompt, for scenes without a caption) and
      ``index.json`` (``{"base_model", "null_prompt", "shapes", "default", "scenes": {scene: {"file",
      "prompt"}}}``).

    Returns a summary (files written, shapes)."""
    if prompt is not None and prompts_json is not None:
        raise PromptError("give either a prompt or a prompts file, not both")
    out = Path(out_path)
    base = str(base_model)
    if prompts_json is None:
        target = out if out.suffix == ".npz" else out / SINGLE_NPZ
        pipe = load_text_encoders(base, device, dtype, token)
        text = prompt if prompt else DEFAULT_PROMPT
        emb = encode_prompts(pipe, [text], device, max_sequence_length=max_sequence_length)[0]
        _check_fits_local_transformer(base, emb)
        null = encode_null_prompt(pipe, device, max_sequence_length=max_sequence_length)
        save_embeddings_npz(target, emb, null)
        return {"files": [str(target)], "prompt": text, "prompt_embeds": list(emb.prompt_embeds.shape),
                "pooled_prompt_embeds": list(emb.pooled_prompt_embeds.shape)}

    from ..data.prompts import load_prompts

    if out.suffix == ".npz":
        raise PromptError(f"{out}: with a prompts file the output is a folder (one .npz per scene), not an .npz")
    if out.exists() and not out.is_dir():
        raise PromptError(f"{out}: exists and is not a folder")
    scenes = load_prompts(prompts_json)
    if not scenes:
        raise PromptError(f"{prompts_json}: no prompts in the file")
    names = {s: scene_file_name(s) for s in scenes}
    clash = [n for n in set(names.values()) if list(names.values()).count(n) > 1 or n == DEFAULT_NPZ]
    if clash:
        raise PromptError(f"{prompts_json}: scene names map to the same file ({', '.join(sorted(clash))})")
    pipe = load_text_encoders(base, device, dtype, token)
    texts = list(scenes.values()) + [DEFAULT_PROMPT]
    embs = encode_prompts(pipe, texts, device, max_sequence_length=max_sequence_length)
    _check_fits_local_transformer(base, embs[0])
    null = encode_null_prompt(pipe, device, max_sequence_length=max_sequence_length)
    files = []
    for (scene, text), emb in zip(scenes.items(), embs):
        save_embeddings_npz(out / names[scene], emb, null)
        files.append(str(out / names[scene]))
    save_embeddings_npz(out / DEFAULT_NPZ, embs[-1], null)
    files.append(str(out / DEFAULT_NPZ))
    index = {"base_model": base, "prompts_file": str(prompts_json), "null_prompt": "",
             "shapes": {"prompt_embeds": list(embs[0].prompt_embeds.shape),
                        "pooled_prompt_embeds": list(embs[0].pooled_prompt_embeds.shape)},
             "default": {"file": DEFAULT_NPZ, "prompt": DEFAULT_PROMPT},
             "scenes": {s: {"file": names[s], "prompt": t} for s, t in scenes.items()}}
    atomic_write_json(out / INDEX_NAME, index)
    return {"files": files, "index": str(out / INDEX_NAME), **index["shapes"]}


def scene_embeddings_path(folder: str | Path, scene: str) -> Path:
    """The .npz of ``scene`` in a folder written by :func:`embed_prompts_to_npz` (exact key, else the same
    last path component, else the default prompt's file), as :func:`~nifi_lib.data.prompts.prompt_for_scene`."""
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PromptError(f"{folder / INDEX_NAME}: cannot read the prompt-embedding index ({e})") from e
    scenes = index.get("scenes", {})
    entry = scenes.get(scene)
    if entry is None:
        base = Path(scene).name
        entry = next((v for k, v in scenes.items() if Path(k).name == base), None)
    return folder / (entry or index.get("default", {"file": DEFAULT_NPZ}))["file"]

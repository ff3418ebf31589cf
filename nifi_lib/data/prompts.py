"""Per-scene text prompts: Qwen2.5-VL captions of each scene's first training frame (paper Sec. 4.1).

``nifi prompts --data_root DIR [--model Qwen/Qwen2.5-VL-7B-Instruct] [--out prompts.json]`` writes
``{scene: prompt}``. Any vision-language model that ``transformers`` loads with ``AutoProcessor`` +
``AutoModelForImageTextToText`` and a chat template works (a Hub id or a local folder). Hand-written
files in the same format are read with :func:`load_prompts`; scenes without a prompt use
:data:`DEFAULT_PROMPT` (:func:`prompt_for_scene`; the diffusion layer's text encoders use the same constant).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from .scenes import find_scenes, load_scene

# The fixed default prompt of the authors' release ("cinematic, highly detailed..."); used when a
# scene has no caption and the embeddings have to be computed from text.
DEFAULT_PROMPT = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, "
                  "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, "
                  "extreme meticulous detailing, skin pore detailing, hyper sharpness, perfect without deformations.")

DEFAULT_VLM = "Qwen/Qwen2.5-VL-7B-Instruct"
INSTRUCTION = "Describe this scene in one sentence."
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


class PromptFileError(NifiError, ValueError):
    """A prompt file is missing or malformed, or no caption could be made."""


class CaptionModelError(NifiError, RuntimeError):
    """The vision-language model cannot be loaded (not downloaded, no network, unsupported)."""


# --------------------------------------------------------------------------- prompt files

def load_prompts(path: str | Path) -> dict[str, str]:
    """Read and validate a ``{scene: prompt}`` JSON file (non-empty string keys and values)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt file not found (create one with 'nifi prompts' or by hand: "
                              '{"garden": "a garden with a table ..."})')
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PromptFileError(f"{path}: cannot parse JSON ({e})") from e
    if not isinstance(data, dict):
        raise PromptFileError(f"{path}: expected a JSON object {{scene: prompt}}, got {type(data).__name__}")
    out = {}
    for k, v in data.items():
        if not isinstance(v, str) or not v.strip():
            raise PromptFileError(f"{path}: the prompt of scene '{k}' must be a non-empty string, got {v!r}")
        if not k.strip():
            raise PromptFileError(f"{path}: empty scene name")
        out[k] = v.strip()
    return out


def save_prompts(path: str | Path, prompts: dict[str, str]) -> None:
    atomic_write_json(path, dict(sorted(prompts.items())))


def prompt_for_scene(prompts: dict[str, str] | None, scene: str) -> str:
    """The prompt of ``scene`` (exact key, else a key with the same last path component), else the default."""
    if prompts:
        if scene in prompts:
            return prompts[scene]
        base = Path(scene).name
        for k, v in prompts.items():
            if Path(k).name == base:
                return v
    return DEFAULT_PROMPT


# --------------------------------------------------------------------------- which frame per scene

def _pairs_first_clean(scene_dir: Path) -> Path | None:
    """Pair layout ``<scene>/rate_<l>/train/clean/*.png``: the first clean training frame."""
    for rate in sorted(scene_dir.glob("rate_*")):
        clean = rate / "train" / "clean"
        if clean.is_dir():
            files = sorted(p for p in clean.iterdir() if p.suffix in IMAGE_EXTS)
            if files:
                return files[0]
    return None


def caption_targets(data_root: str | Path, split: str = "train") -> dict[str, Path]:
    """``{scene key: first frame of split}`` for every scene below ``data_root``.

    Scenes are scene folders (COLMAP, nerfstudio/DL3DV, Blender, embedded; first frame of ``split``:
    ``train`` = the first training view of the 3DGS split, ``all`` = the very first frame) or pair folders
    (``<scene>/rate_*/train/clean``, first file). Keys are folder names, or paths relative to
    ``data_root`` where two scenes share a name.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise PromptFileError(f"{root}: data root not found")
    found: list[tuple[Path, Path]] = []
    for scene in find_scenes(root):
        cams = load_scene(scene, split=split)
        if not cams or cams[0].image_path is None:
            cams = load_scene(scene, split="all")
        if cams and cams[0].image_path is not None:
            found.append((scene, Path(cams[0].image_path)))
    seen = {s for s, _ in found}
    for rate in sorted(root.glob("**/rate_*")):
        scene = rate.parent
        if scene in seen or not rate.is_dir():
            continue
        first = _pairs_first_clean(scene)
        if first is not None:
            found.append((scene, first))
            seen.add(scene)
    if not found:
        raise PromptFileError(f"{root}: no scene found (scene folders with sparse/0, transforms.json, "
                              "transforms_train.json or cameras.json, or pair folders <scene>/rate_*/train/clean)")
    names = [s.name if s != root else root.resolve().name for s, _ in found]
    out = {}
    for (scene, img), name in zip(found, names):
        key = name if names.count(name) == 1 else scene.relative_to(root).as_posix()
        out[key] = img
    return out


# --------------------------------------------------------------------------- captioning

def _device_dtype(device: str):
    import torch

    from ..devices import default_device

    device = default_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return device, dtype


def load_captioner(model: str = DEFAULT_VLM, device: str = "auto", token: str | None = None) -> tuple[Any, Any, str]:
    """``(processor, model, device)`` of a vision-language model (Hub id or local folder)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device, dtype = _device_dtype(device)
    local = Path(model).expanduser()
    hint = (f"Without internet: on a machine with internet run 'huggingface-cli download "
            f"{model if _looks_like_repo_id(model) else DEFAULT_VLM} --local-dir DIR', copy DIR here and pass "
            "'--model DIR'; or write the prompt file by hand ({\"scene\": \"one sentence\"}); without prompts the "
            "trainer uses the default prompt.")
    if (model.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise CaptionModelError(f"{model}: model folder not found. {hint}")
    try:
        processor = AutoProcessor.from_pretrained(str(local) if local.is_dir() else model, token=token)
        vlm = AutoModelForImageTextToText.from_pretrained(str(local) if local.is_dir() else model, dtype=dtype,
                                                          token=token)
    except Exception as e:  # OSError (not found / offline), ValueError (unsupported architecture), ...
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise CaptionModelError(f"cannot load the vision-language model '{model}' ({e.__class__.__name__}: {first}). "
                                f"{hint}") from e
    vlm.to(device)
    vlm.eval()
    return processor, vlm, device


def _looks_like_repo_id(model: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", model) is not None


def clean_caption(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip("\"'` ").strip()


def caption_image(processor, model, image_path: str | Path, instruction: str = INSTRUCTION,
                  max_new_tokens: int = 77, max_side: int = 1024, device: str = "cpu") -> str:
    """One caption of one image (greedy decoding); the image is resized so its longer side is <= ``max_side``."""
    import torch
    from PIL import Image

    try:
        with Image.open(image_path) as im:
            img = im.convert("RGB")
    except Exception as e:
        raise PromptFileError(f"{image_path}: cannot read image ({e.__class__.__name__}: {e})") from e
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[img], return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1]:]
    return clean_caption(processor.batch_decode(new, skip_special_tokens=True)[0])


def caption_scenes(data_root: str | Path, model: str = DEFAULT_VLM, out: str | Path | None = None,
                   device: str = "auto", instruction: str = INSTRUCTION, max_new_tokens: int = 77,
                   max_side: int = 1024, overwrite: bool = False, progress: bool = True,
                   token: str | None = None, split: str = "train") -> dict[str, str]:
    """Caption the first training frame of every scene below ``data_root``; returns ``{scene: prompt}``.

    With ``out``, the file is updated after every scene (atomic write) and scenes already in it are kept
    (unless ``overwrite``), so an interrupted run resumes. An empty caption falls back to the default prompt
    with a warning.
    """
    targets = caption_targets(data_root, split)
    prompts: dict[str, str] = {}
    if out is not None and Path(out).is_file() and not overwrite:
        prompts = load_prompts(out)
    todo = {k: v for k, v in targets.items() if k not in prompts}
    if todo:
        processor, vlm, dev = load_captioner(model, device, token)
        for scene, img in tqdm(todo.items(), desc="caption scenes", unit="scene", disable=not progress):
            cap = caption_image(processor, vlm, img, instruction, max_new_tokens, max_side, dev)
            if not cap:
                warnings.warn(f"{model} gave an empty caption for {img}; using the default prompt", stacklevel=2)
                cap = DEFAULT_PROMPT
            prompts[scene] = cap
            if out is not None:
                save_prompts(out, prompts)
    result = {k: prompts[k] for k in targets if k in prompts}
    if out is not None:
        save_prompts(out, prompts)
    return result

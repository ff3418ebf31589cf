"""Per-scene prompt embeddings for training (Sec. 4.1: each scene is captioned from its first frame by a VLM,
``nifi prompts``; ``nifi embed-prompts --prompts prompts.json`` encodes one .npz per scene).

``model.embeddings`` is either one ``.npz`` (one prompt for every pair, e.g. the authors' default prompt) or a
folder written by :func:`~nifi_lib.diffusion.text_encoding.embed_prompts_to_npz` (``index.json`` + one .npz per
scene): then each batch element is conditioned on its own scene's caption (the student's prompt still drops out
with ``model.prompt_dropout``). When ``model.embeddings`` is null and the backbone folder has its text encoders,
:func:`training_embeddings` computes them once into ``<exp>/prompt_embeds/`` and reuses them on resume.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config
from ..diffusion.prompts import PromptEmbeddings, load_embeddings_npz
from ..diffusion.text_encoding import DEFAULT_NPZ, INDEX_NAME, SINGLE_NPZ, embed_prompts_to_npz, scene_embeddings_path
from ..errors import NifiError
from ..paths import repo_path, resolve_model_ref

PROMPTS_FILE = "prompts.json"   # what `nifi prompts --data_root PAIRS` writes beside the pairs by default


class ScenePromptError(NifiError, ValueError):
    """Per-scene embeddings that cannot be used (no null prompt, mismatched shapes)."""


class ScenePrompts:
    """The per-scene embeddings of one folder; :meth:`batch` stacks the embeddings of a batch's scenes."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.default, self.null = load_embeddings_npz(self.folder / DEFAULT_NPZ)
        if self.null is None:
            raise ScenePromptError(f"{self.folder / DEFAULT_NPZ}: no null prompt (negative_prompt_embeds), which "
                                   "prompt dropout and CFG need; re-run `nifi embed-prompts --prompts ...`")
        self._by_scene: dict[str, PromptEmbeddings] = {}
        self._on_device: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def of(self, scene: str) -> PromptEmbeddings:
        if scene not in self._by_scene:
            emb, _ = load_embeddings_npz(scene_embeddings_path(self.folder, scene))
            if emb.prompt_embeds.shape[1:] != self.default.prompt_embeds.shape[1:]:
                raise ScenePromptError(f"{self.folder}: the embedding of scene {scene!r} has shape "
                                       f"{tuple(emb.prompt_embeds.shape)}, the default "
                                       f"{tuple(self.default.prompt_embeds.shape)}")
            self._by_scene[scene] = emb
        return self._by_scene[scene]

    def batch(self, scenes: list[str], device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds (B, L, D), pooled (B, P))`` for the scenes of a batch, on ``device`` (cached)."""
        key = (tuple(scenes), str(device), dtype)
        hit = self._on_device.get(key)
        if hit is None:
            embs = [self.of(s) for s in scenes]
            pe = torch.cat([e.prompt_embeds for e in embs]).to(device=device, dtype=dtype)
            pp = torch.cat([e.pooled_prompt_embeds for e in embs]).to(device=device, dtype=dtype)
            if len(self._on_device) > 256:
                self._on_device.clear()
            hit = self._on_device[key] = (pe, pp)
        return hit

    def scenes(self) -> list[str]:
        return sorted(json.loads((self.folder / INDEX_NAME).read_text()).get("scenes", {}))


def has_text_encoders(backbone: str) -> bool:
    """Whether a local diffusers folder holds SD3's three text encoders and tokenizers."""
    root = Path(resolve_model_ref(backbone))
    return root.is_dir() and all((root / c).is_dir() for c in ("text_encoder", "text_encoder_2", "text_encoder_3",
                                                               "tokenizer", "tokenizer_2", "tokenizer_3"))


def training_embeddings(cfg: Config, data_root: str | Path, exp: str | Path, device: str = "cpu") -> str | None:
    """``model.embeddings`` as configured; when null and the backbone folder has text encoders: computed once into
    ``<exp>/prompt_embeds/`` (per scene from ``<data_root>/prompts.json`` when it exists, else the authors'
    default prompt) and reused afterwards. None: nothing to use (the backbone's own embeddings, if any)."""
    if cfg.model.embeddings:
        return str(repo_path(cfg.model.embeddings))
    if cfg.model.backbone_kind != "sd3" or not has_text_encoders(cfg.model.backbone):
        return None
    out = Path(exp) / "prompt_embeds"
    prompts = Path(data_root) / PROMPTS_FILE
    if prompts.is_file():
        if not (out / INDEX_NAME).is_file():
            embed_prompts_to_npz(resolve_model_ref(cfg.model.backbone), out, prompts_json=prompts, device=device)
        return str(out)
    if not (out / SINGLE_NPZ).is_file():
        embed_prompts_to_npz(resolve_model_ref(cfg.model.backbone), out / SINGLE_NPZ, device=device)
    return str(out / SINGLE_NPZ)


__all__ = ["PROMPTS_FILE", "ScenePromptError", "ScenePrompts", "has_text_encoders", "training_embeddings"]

"""Prompt embeddings: the authors' fixed default prompt (.npz), text encoding when available, caching.

The authors' release stores one prompt embedding as an .npz with ``prompt_embeds`` (1, 333, 4096) and
``pooled_prompt_embeds`` (1, 2048). We read the same file; optional ``negative_prompt_embeds`` and
``negative_pooled_prompt_embeds`` hold the null prompt used for classifier-free guidance.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.prompts import DEFAULT_PROMPT  # noqa: F401 - the authors' default prompt, defined with the captions
from ..errors import NifiError
from ..io.atomic import atomic_path


class PromptError(NifiError, ValueError):
    """A prompt-embedding file is missing, malformed or does not fit the backbone."""


@dataclass
class PromptEmbeddings:
    """One prompt's embeddings: tokens ``(1, L, D)`` and pooled ``(1, P)``."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor

    def to(self, device=None, dtype=None) -> "PromptEmbeddings":
        return PromptEmbeddings(self.prompt_embeds.to(device=device, dtype=dtype),
                                self.pooled_prompt_embeds.to(device=device, dtype=dtype))

    def expand(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of ``n`` copies (for the transformer call)."""
        return (self.prompt_embeds.expand(n, -1, -1), self.pooled_prompt_embeds.expand(n, -1))


def dropout_mask(n: int, p: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Prompt dropout for classifier-free guidance training: a ``(n,)`` bool mask, True where a sample's prompt
    is replaced by the null prompt (each with probability ``p``). Exactly one ``torch.rand(n)`` draw from
    ``generator``, so the training runs' random streams (and resumed runs) stay as they were."""
    return torch.rand(n, generator=generator, device=device) < p


def apply_prompt_dropout(drop: torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                         null_embeds: torch.Tensor, null_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds (n, L, D), pooled (n, P))`` with the rows where ``drop`` is True taken from the null
    prompt (no ``drop.any()`` test: that would read a device mask back to the host)."""
    return (torch.where(drop[:, None, None], null_embeds, prompt_embeds),
            torch.where(drop[:, None], null_pooled, pooled))


def load_embeddings_npz(path: str | Path) -> tuple[PromptEmbeddings, PromptEmbeddings | None]:
    """Read ``(prompt, null_prompt_or_None)`` from an .npz in the authors' format (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"{path}: prompt-embedding file not found (expected an .npz with "
                          "'prompt_embeds' and 'pooled_prompt_embeds')")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError
        raise PromptError(f"{path}: cannot read prompt embeddings ({e.__class__.__name__}: {e})") from e
    for key in ("prompt_embeds", "pooled_prompt_embeds"):
        if key not in data:
            raise PromptError(f"{path}: missing array '{key}' (has: {sorted(data)})")
    pe, pp = data["prompt_embeds"], data["pooled_prompt_embeds"]
    if pe.ndim != 3 or pp.ndim != 2 or pe.shape[0] != 1 or pp.shape[0] != 1:
        raise PromptError(f"{path}: expected prompt_embeds (1, L, D) and pooled_prompt_embeds (1, P), "
                          f"got {pe.shape} and {pp.shape}")
    prompt = PromptEmbeddings(torch.from_numpy(pe.astype(np.float32)), torch.from_numpy(pp.astype(np.float32)))
    null = None
    if "negative_prompt_embeds" in data and "negative_pooled_prompt_embeds" in data:
        null = PromptEmbeddings(torch.from_numpy(data["negative_prompt_embeds"].astype(np.float32)),
                                torch.from_numpy(data["negative_pooled_prompt_embeds"].astype(np.float32)))
    return prompt, null


def save_embeddings_npz(path: str | Path, prompt: PromptEmbeddings, null: PromptEmbeddings | None = None) -> None:
    """Write the authors' .npz layout (float32), plus the null prompt if given; atomic."""
    arrays = {"prompt_embeds": prompt.prompt_embeds.detach().float().cpu().numpy(),
              "pooled_prompt_embeds": prompt.pooled_prompt_embeds.detach().float().cpu().numpy()}
    if null is not None:
        arrays["negative_prompt_embeds"] = null.prompt_embeds.detach().float().cpu().numpy()
        arrays["negative_pooled_prompt_embeds"] = null.pooled_prompt_embeds.detach().float().cpu().numpy()
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def check_embeddings_fit(prompt: PromptEmbeddings, transformer, source: str = "prompt embeddings") -> None:
    """Clear error when embedding widths do not match the transformer's config."""
    cfg = transformer.config
    if prompt.prompt_embeds.shape[-1] != cfg.joint_attention_dim:
        raise PromptError(f"{source}: prompt_embeds width {prompt.prompt_embeds.shape[-1]} does not match "
                          f"the transformer's joint_attention_dim {cfg.joint_attention_dim}")
    if prompt.pooled_prompt_embeds.shape[-1] != cfg.pooled_projection_dim:
        raise PromptError(f"{source}: pooled_prompt_embeds width {prompt.pooled_prompt_embeds.shape[-1]} does not "
                          f"match the transformer's pooled_projection_dim {cfg.pooled_projection_dim}")


def encode_text_prompts(backbone_path: str, texts: list[str], cache_dir: str | Path | None = None,
                        device: str = "cpu", token: str | None = None) -> list[PromptEmbeddings]:
    """Encode prompts with the SD3 pipeline's three text encoders, caching each result as .npz.

    Needs the backbone's ``text_encoder*``/``tokenizer*`` folders (SD3-medium has them). The cache key is
    the backbone id plus the text, so re-running is free.
    """
    out: list[PromptEmbeddings | None] = [None] * len(texts)
    todo = []
    cache = Path(cache_dir) if cache_dir else None
    for i, text in enumerate(texts):
        if cache is not None:
            f = cache / (hashlib.sha1(f"{backbone_path}\n{text}".encode()).hexdigest()[:16] + ".npz")
            if f.is_file():
                out[i] = load_embeddings_npz(f)[0]
                continue
        todo.append(i)
    if todo:
        from diffusers import StableDiffusion3Pipeline

        from .backbone import BackboneError

        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(backbone_path, transformer=None, vae=None, token=token)
        except Exception as e:
            raise BackboneError(f"cannot load the text encoders of '{backbone_path}' to encode prompts "
                                f"({e.__class__.__name__}: {e}). Provide a precomputed .npz with "
                                "--embeddings instead.") from e
        pipe.to(device)
        for i in todo:
            with torch.no_grad():
                pe, _, pp, _ = pipe.encode_prompt(prompt=texts[i], prompt_2=None, prompt_3=None,
                                                  do_classifier_free_guidance=False, device=device)
            emb = PromptEmbeddings(pe.float().cpu(), pp.float().cpu())
            out[i] = emb
            if cache is not None:
                f = cache / (hashlib.sha1(f"{backbone_path}\n{texts[i]}".encode()).hexdigest()[:16] + ".npz")
                save_embeddings_npz(f, emb)
    return [o for o in out if o is not None]

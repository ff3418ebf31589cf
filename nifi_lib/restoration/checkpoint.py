"""The authors' checkpoint format: one torch file ``{"vae": lora_state_dict, "transformer": lora_state_dict}``
holding the phi- LoRA weights of adapter "default" (e.g. ``3dgs-sd3-restorer-t=199.ckpt``).

Loaded with ``torch.load(weights_only=True)``: a file that would run code when unpickled is refused.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..io.atomic import atomic_save
from .lora import RESTORER, AdapterError, adapter_names, adapter_state_dict, add_restorer_adapters, \
    load_adapter_state_dict, normalize_lora_keys


def torch_error_summary(e: BaseException, limit: int = 200) -> str:
    """The useful part of a ``torch.load`` error: the weights-only unpickler's reason (e.g. ``Unsupported
    global: GLOBAL posix.system ...``), else the first sentence, without torch's paragraphs of advice."""
    msg = str(e).strip()
    if msg.startswith("Weights only load failed"):  # paragraphs: advice, [the reason], documentation link
        paras = [p.strip() for p in re.split(r"\n\s*\n", msg) if p.strip()]
        reasons = [p for p in paras if not p.startswith(("Weights only load failed", "Check the documentation",
                                                         "Please file an issue"))]
        msg = reasons[0].replace("\n", " ") if reasons else paras[0].split(". ")[0] + "."
    else:
        msg = msg.split("\n")[0]
        if ". " in msg:
            msg = msg.split(". ")[0] + "."
    return f"{e.__class__.__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


def read_authors_checkpoint(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read and check the two state dicts; clear errors for missing, truncated or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise AdapterError(f"{path}: refused to load: the file holds objects other than tensors "
                           f"(weights_only=True; it could run code when unpickled): {torch_error_summary(e)}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise AdapterError(f"{path}: cannot read checkpoint (truncated or not a torch file?): "
                           f"{torch_error_summary(e)}") from e
    if not isinstance(ckpt, dict) or not {"vae", "transformer"} <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise AdapterError(f"{path}: expected a dict with 'vae' and 'transformer' LoRA state dicts, got {keys}")
    out = {}
    for part in ("vae", "transformer"):
        sd = ckpt[part]
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            raise AdapterError(f"{path}: '{part}' must be a state dict of tensors")
        out[part] = normalize_lora_keys(sd)
    extra = sorted(set(ckpt) - {"vae", "transformer"})
    if extra:
        raise AdapterError(f"{path}: unexpected top-level keys {extra} (expected only 'vae' and 'transformer')")
    return out


def checkpoint_rank(state: dict[str, torch.Tensor]) -> int:
    ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise AdapterError(f"cannot infer one LoRA rank from the checkpoint (found {sorted(ranks)})")
    return int(ranks.pop())


def load_authors_checkpoint(path: str | Path, backbone, rank: int | None = None, alpha: int | None = None) -> int:
    """Load phi- from the authors' checkpoint into ``backbone`` (adding the adapters if absent).

    ``rank`` defaults to the checkpoint's own; a given rank that disagrees is an error. Returns the rank.
    """
    ckpt = read_authors_checkpoint(path)
    ck_rank = checkpoint_rank(ckpt["transformer"])
    if rank is not None and rank != ck_rank:
        raise AdapterError(f"{path}: checkpoint has LoRA rank {ck_rank}, the config asks for rank {rank}")
    if RESTORER not in adapter_names(backbone.transformer):
        add_restorer_adapters(backbone, rank=ck_rank, alpha=alpha if alpha is not None else ck_rank)
    load_adapter_state_dict(backbone.transformer, ckpt["transformer"], RESTORER, f"{path} ['transformer']")
    load_adapter_state_dict(backbone.vae, ckpt["vae"], RESTORER, f"{path} ['vae']")
    return ck_rank


def save_authors_checkpoint(path: str | Path, backbone) -> None:
    """Export phi- in the authors' format (atomic write)."""
    obj = {"vae": adapter_state_dict(backbone.vae, RESTORER),
           "transformer": adapter_state_dict(backbone.transformer, RESTORER)}
    atomic_save(path, lambda p: torch.save(obj, p))

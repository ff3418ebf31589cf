"""Load phi- into a backbone from any of the project's weight files.

- the authors' checkpoint (torch file ``{"vae": ..., "transformer": ...}``, e.g. ``*.ckpt``);
- our adapter file (``.safetensors`` with ``transformer/...`` and ``vae/...`` groups);
- a training checkpoint (``latest.pt`` / ``best.pt``, ``format: nifi-train-v1``).
Every torch file is read with ``weights_only=True``.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .checkpoint import checkpoint_rank, load_authors_checkpoint, torch_error_summary
from .lora import RESTORER, AdapterError, adapter_names, add_restorer_adapters, load_adapter_state_dict, \
    load_adapters, normalize_lora_keys

TRAIN_FORMAT = "nifi-train-v1"
RESTORER_GROUPS = {"transformer": ("transformer", RESTORER), "vae": ("vae", RESTORER)}


def safe_torch_load(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise AdapterError(f"{path}: refused to load: it holds objects other than tensors and plain data "
                           f"(weights_only=True; unpickling it could run code): {torch_error_summary(e)}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise AdapterError(f"{path}: cannot read checkpoint (truncated or not a torch file?): "
                           f"{torch_error_summary(e)}") from e


def split_groups(flat: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        prefix, _, rest = k.partition("/")
        groups.setdefault(prefix, {})[rest] = v
    return groups


def load_restorer_weights(path: str | Path, backbone, rank: int | None = None) -> str:
    """Load phi- into ``backbone`` (adding adapters if needed); returns the detected format."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if RESTORER not in adapter_names(backbone.transformer):
            from safetensors.torch import load_file

            try:
                flat = load_file(str(path))
            except Exception as e:
                raise AdapterError(f"{path}: not a readable safetensors file ({e})") from e
            r = checkpoint_rank(split_groups(flat, str(path)).get("transformer", {}))
            add_restorer_adapters(backbone, rank=r, alpha=r)
        load_adapters(path, backbone, RESTORER_GROUPS)
        return "safetensors"
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        groups = split_groups(obj["adapters"], str(path))
        sd_t = normalize_lora_keys(groups.get(f"transformer.{RESTORER}", {}))
        sd_v = normalize_lora_keys(groups.get(f"vae.{RESTORER}", {}))
        if not sd_t or not sd_v:
            raise AdapterError(f"{path}: training checkpoint without phi- adapters")
        if RESTORER not in adapter_names(backbone.transformer):
            r = checkpoint_rank(sd_t)
            alpha = int(obj.get("lora_alpha", r))
            add_restorer_adapters(backbone, rank=r, alpha=alpha)
        load_adapter_state_dict(backbone.transformer, sd_t, RESTORER, f"{path} [transformer]")
        load_adapter_state_dict(backbone.vae, sd_v, RESTORER, f"{path} [vae]")
        return TRAIN_FORMAT
    if isinstance(obj, dict) and {"vae", "transformer"} <= set(obj):
        load_authors_checkpoint(path, backbone, rank=rank)
        return "authors"
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise AdapterError(f"{path}: unknown checkpoint layout ({keys}); expected the authors' "
                       "{'vae','transformer'} file, a nifi training checkpoint or a .safetensors adapter file")

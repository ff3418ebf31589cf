"""Load phi- into a backbone from any of the project's weight files.

- the authors' checkpoint (torch file ``{"vae": ..., "transformer": ...}``, e.g. ``*.ckpt``);
- our adapter file (``.safetensors`` with ``transformer/...`` and ``vae/...`` groups);
- a training checkpoint (``latest.pt`` / ``best.pt``, ``format: nifi-train-v1``).
Every torch file is read with ``weights_only=True``.

:func:`load_restorer_checkpoint` also returns the Eq. 7 start ``t0`` the weights were trained for, when the
file records it (training checkpoints: ``"t0"``, else ``config.diffusion.t0``; ``.safetensors``: metadata
``t0``); the authors' ``.ckpt`` records none (it was trained at t0 = 199, :data:`DEFAULT_T0`).
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import DEFAULT_T0
from .checkpoint import checkpoint_rank, load_authors_checkpoint, torch_error_summary
from .lora import RESTORER, AdapterError, adapter_names, add_restorer_adapters, load_adapter_state_dict, \
    load_adapters, normalize_lora_keys

TRAIN_FORMAT = "nifi-train-v1"


@dataclass
class RestorerWeights:
    """What :func:`load_restorer_checkpoint` loaded: the file's format and the t0 it records (or None)."""

    format: str
    t0: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def t0_or_default(self) -> int:
        return DEFAULT_T0 if self.t0 is None else int(self.t0)


def _train_checkpoint_t0(obj: dict, path: Path) -> tuple[int | None, dict]:
    """t0 of a training checkpoint: the recorded ``"t0"``, else the stored config's ``diffusion.t0``."""
    meta: dict = {}
    cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    diff = cfg.get("diffusion") if isinstance(cfg.get("diffusion"), dict) else {}
    if diff.get("add_noise") is False:   # a checkpoint of the removed switch: un-noised latent at t0 < T
        meta["legacy_add_noise_false"] = True
        warnings.warn(f"{path}: trained with the removed diffusion.add_noise: false (an un-noised latent at "
                      f"timestep {diff.get('t0')}); neither NiFi nor the 'w/o t0' ablation (diffusion.t0: 1000)",
                      stacklevel=3)
    t0 = obj.get("t0", diff.get("t0"))
    return (None if t0 is None else int(t0)), meta
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


def _peek(path: str | Path) -> tuple[str, object]:
    """``("safetensors", metadata dict)`` or ``("torch", object)`` of a weight file, without a backbone (torch files
    memory-mapped, weights only); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return "safetensors", (f.metadata() or {})
        except Exception as e:
            raise AdapterError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        return "torch", torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return "torch", safe_torch_load(path)   # not a zip-format file (no mmap): read it, with the usual errors


def read_checkpoint_t0(path: str | Path) -> int | None:
    """The t0 a weight file records, without loading it into a backbone (None: it records none, e.g. the
    authors' ``.ckpt``, trained at :data:`DEFAULT_T0`)."""
    kind, obj = _peek(path)
    if kind == "safetensors":
        t0 = obj.get("t0")
        return None if t0 in (None, "", "None") else int(float(t0))
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _train_checkpoint_t0(obj, Path(path))[0]
    return None


DEFAULT_BASE_MODEL = "data/embedded/backbone"   # the embedded backbone: what runs when nothing else is known
SETTING_KEYS = ("backbone", "backbone_kind", "embeddings", "t0", "dtype")


def restore_settings_of_config(cfg_dict: dict) -> dict:
    """The restore settings a training config implies (what :func:`checkpoint_settings` reads back)."""
    model = cfg_dict.get("model") if isinstance(cfg_dict.get("model"), dict) else {}
    diff = cfg_dict.get("diffusion") if isinstance(cfg_dict.get("diffusion"), dict) else {}
    return {"backbone": model.get("backbone"), "backbone_kind": model.get("backbone_kind"),
            "embeddings": model.get("embeddings"), "t0": diff.get("t0"), "dtype": model.get("dtype")}


def checkpoint_settings(path: str | Path | None) -> dict:
    """The settings a weight file says it restores with: ``backbone``, ``backbone_kind``, ``embeddings``, ``t0``,
    ``dtype`` (None where it records nothing: the authors' ``.ckpt`` records none). Training checkpoints store
    them under ``"restore"`` (older ones: derived from their ``"config"``); safetensors exports in the metadata."""
    if not path:
        return dict.fromkeys(SETTING_KEYS)
    kind, obj = _peek(path)
    if kind == "safetensors":
        stored = {k: (obj.get(k) or None) for k in SETTING_KEYS}
    elif isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        stored = obj.get("restore") if isinstance(obj.get("restore"), dict) else \
            restore_settings_of_config(obj.get("config") if isinstance(obj.get("config"), dict) else {})
    else:
        stored = {}
    out = {k: stored.get(k) for k in SETTING_KEYS}
    out["t0"] = read_checkpoint_t0(path)
    return out


def resolve_restore_settings(ckpt: str | Path | None, base_model: str | None = None,
                             embeddings: str | None = None) -> tuple[str, str | None, str | None]:
    """``(base_model, kind, embeddings)`` for a restore: what the caller gives wins; otherwise what ``ckpt``
    records (its embeddings only with its own backbone); otherwise the embedded backbone."""
    s = checkpoint_settings(ckpt)
    if base_model is None and s["backbone"]:
        stored = s["embeddings"]
        if stored and Path(stored).is_dir():   # per-scene caption embeddings: restore with their default prompt
            stored = str(Path(stored) / "_default.npz")
        return str(s["backbone"]), s["backbone_kind"], embeddings if embeddings is not None else stored
    return base_model or DEFAULT_BASE_MODEL, None, embeddings


def split_groups(flat: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        prefix, _, rest = k.partition("/")
        groups.setdefault(prefix, {})[rest] = v
    return groups


def load_restorer_weights(path: str | Path, backbone, rank: int | None = None) -> str:
    """Load phi- into ``backbone`` (adding adapters if needed); returns the detected format."""
    return load_restorer_checkpoint(path, backbone, rank=rank).format


def load_restorer_checkpoint(path: str | Path, backbone, rank: int | None = None) -> RestorerWeights:
    """Load phi- into ``backbone`` (adding adapters if needed); returns the format and the stored t0
    (None when the file records none, e.g. the authors' ``.ckpt``: use :data:`DEFAULT_T0`)."""
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
        meta = load_adapters(path, backbone, RESTORER_GROUPS)
        t0 = meta.get("t0")
        try:
            t0 = None if t0 in (None, "", "None") else int(float(t0))
        except ValueError as e:
            raise AdapterError(f"{path}: metadata t0 {t0!r} is not an integer timestep") from e
        return RestorerWeights("safetensors", t0, dict(meta))
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
        t0, meta = _train_checkpoint_t0(obj, path)
        return RestorerWeights(TRAIN_FORMAT, t0, {"step": obj.get("step"), **meta})
    if isinstance(obj, dict) and {"vae", "transformer"} <= set(obj):
        load_authors_checkpoint(path, backbone, rank=rank)
        return RestorerWeights("authors", None)
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise AdapterError(f"{path}: unknown checkpoint layout ({keys}); expected the authors' "
                       "{'vae','transformer'} file, a nifi training checkpoint or a .safetensors adapter file")

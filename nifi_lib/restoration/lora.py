"""LoRA adapters on one frozen backbone (paper Sec. 3, "Artifact Restoration" and "Restoration
Distribution Matching"): the restorer phi- on the transformer and the VAE encoder, the critic phi+ on
the transformer. All are named peft adapters added with diffusers' ``add_adapter``.

- phi- ("default", the authors' name): LoRA r=64, lora_alpha=64, gaussian init, on the transformer
  targets of PAPER.md and on the VAE encoder (every conv of the down and mid blocks, the mid-block
  attention projections, ``encoder.conv_in``, ``encoder.conv_out`` and ``quant_conv``).
- phi+ ("critic"): LoRA on the transformer's attention projections only (TSD-SR's fake-score LoRA).
"""
from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..errors import NifiError
from ..io.atomic import atomic_path
from ..warnings_policy import PEFT_MULTI_ADAPTER

RESTORER = "default"   # phi-; the authors' adapter name, so their checkpoint maps 1:1
CRITIC = "critic"      # phi+
TRANSFORMER_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                       "proj", "linear", "proj_out"]
CRITIC_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"]


class AdapterError(NifiError, ValueError):
    """An adapter file or checkpoint does not fit the backbone (keys, rank, format)."""


def vae_encoder_targets(vae) -> list[str]:
    """Full module names of the VAE-encoder LoRA targets listed in PAPER.md."""
    names = []
    for name, module in vae.named_modules():
        is_conv = isinstance(module, torch.nn.Conv2d)
        if name.startswith("encoder.down_blocks.") and is_conv:
            names.append(name)
        elif name.startswith("encoder.mid_block.") and (is_conv or name.split(".")[-1] in ("to_q", "to_k", "to_v")
                                                       or name.endswith("to_out.0")):
            names.append(name)
    names += ["encoder.conv_in", "encoder.conv_out"]
    if getattr(vae, "quant_conv", None) is not None:
        names.append("quant_conv")
    return names


def lora_config(rank: int, alpha: int | None, targets: list[str]) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights="gaussian",
                      target_modules=targets)


def add_restorer_adapters(backbone, rank: int = 64, alpha: int | None = None, seed: int | None = None) -> None:
    """Add phi- (adapter "default") to the transformer and the VAE encoder."""
    if seed is not None:
        torch.manual_seed(seed)
    backbone.transformer.add_adapter(lora_config(rank, alpha, TRANSFORMER_TARGETS), adapter_name=RESTORER)
    backbone.vae.add_adapter(lora_config(rank, alpha, vae_encoder_targets(backbone.vae)), adapter_name=RESTORER)
    _match_dtype(backbone)


def add_critic_adapter(backbone, rank: int = 64, alpha: int | None = None, seed: int | None = None) -> None:
    """Add phi+ (adapter "critic") to the transformer."""
    if seed is not None:
        torch.manual_seed(seed)
    # a second named adapter on the same transformer is intended: peft's "Already found a peft_config"
    # notice is silenced for this call only (nifi_lib.warnings_policy)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(PEFT_MULTI_ADAPTER), category=UserWarning)
        backbone.transformer.add_adapter(lora_config(rank, alpha, CRITIC_TARGETS), adapter_name=CRITIC)
    _match_dtype(backbone)


def _match_dtype(backbone) -> None:
    # New LoRA layers are created in fp32; keep them in the base dtype for inference, except that
    # training keeps fp32 master weights (see training.trainer) by casting back explicitly.
    for model in (backbone.transformer, backbone.vae):
        dtype = next(p.dtype for n, p in model.named_parameters() if "lora_" not in n)
        for n, p in model.named_parameters():
            if "lora_" in n and p.dtype != dtype:
                p.data = p.data.to(dtype)


def adapter_parameters(model, adapter: str) -> list[torch.nn.Parameter]:
    """The LoRA parameters of one named adapter (e.g. for an optimizer)."""
    key = f".{adapter}."
    return [p for n, p in model.named_parameters() if "lora_" in n and key in n + "."]


def adapter_names(model) -> list[str]:
    cfg = getattr(model, "peft_config", None) or {}
    return list(cfg)


@contextlib.contextmanager
def active_adapter(model, adapter: str | None) -> Iterator[None]:
    """Run ``model`` with only ``adapter`` active (``None``: the frozen base, all adapters off).

    peft's ``set_adapter`` also flips ``requires_grad``; we restore every flag on exit so that which
    parameters train is decided by the optimizers alone.
    """
    names = adapter_names(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    previous = getattr(model, "active_adapters", lambda: [])() if names else []
    try:
        if names:
            if adapter is None:
                model.disable_adapters()
            else:
                if adapter not in names:
                    raise AdapterError(f"adapter '{adapter}' not present (have: {names})")
                model.enable_adapters()
                model.set_adapter(adapter)
                for n, p in model.named_parameters():
                    p.requires_grad_(flags[n])
        elif adapter is not None:
            raise AdapterError(f"model has no adapters, cannot activate '{adapter}'")
        yield
    finally:
        if names:
            model.enable_adapters()
            if previous:
                model.set_adapter(previous if len(previous) > 1 else previous[0])
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])


def _tuner_layers(model) -> list:
    """peft's LoRA layers of ``model``, found once per set of adapters (cached on the model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    key = tuple(adapter_names(model))
    cached = model.__dict__.get("_nifi_tuner_layers")
    if cached is None or cached[0] != key:
        cached = (key, [m for m in model.modules() if isinstance(m, BaseTunerLayer)])
        model.__dict__["_nifi_tuner_layers"] = cached
    return cached[1]


@contextlib.contextmanager
def adapter_scope(model, adapter: str | None) -> Iterator[None]:
    """Run ``model`` with only ``adapter`` active (``None``: the frozen base, all adapters off): the same
    contract as :func:`active_adapter` (no ``requires_grad`` flag changes,
    the previous state restored on exit), at a fraction of its host cost.

    ``active_adapter`` goes through peft's model-level ``set_adapter``/``enable_adapters``, which walk
    every module and parameter (about 50 ms per switch on SD3-medium, six switches per training step);
    this sets the two attributes peft's LoRA layers read in ``forward`` (``_active_adapter``,
    ``_disable_adapters``) on the cached list of layers (well under 1 ms).
    """
    names = adapter_names(model)
    if not names:
        if adapter is not None:
            raise AdapterError(f"model has no adapters, cannot activate '{adapter}'")
        yield
        return
    if adapter is not None and adapter not in names:
        raise AdapterError(f"adapter '{adapter}' not present (have: {names})")
    layers = _tuner_layers(model)
    saved = [(layer._active_adapter, layer._disable_adapters) for layer in layers]
    target = [adapter]
    try:
        for layer in layers:
            if adapter is None:
                layer._disable_adapters = True
            else:
                layer._active_adapter = target
                layer._disable_adapters = False
        yield
    finally:
        for layer, (act, dis) in zip(layers, saved):
            layer._active_adapter, layer._disable_adapters = act, dis


def adapter_state_dict(model, adapter: str) -> dict[str, torch.Tensor]:
    """peft's state dict of one adapter (keys without the adapter name, e.g. ``...to_q.lora_A.weight``)."""
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()}


def load_adapter_state_dict(model, state: dict[str, torch.Tensor], adapter: str, source: str) -> None:
    """Load ``state`` into an existing adapter; unexpected/missing keys or rank mismatch -> AdapterError."""
    state = normalize_lora_keys(state)
    expected = adapter_state_dict(model, adapter)
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        raise AdapterError(f"{source}: adapter '{adapter}' keys do not match the model: "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(missing)} missing "
                           f"(e.g. {missing[:3]}). Is it for another backbone or target list?")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise AdapterError(f"{source}: '{k}' has shape {tuple(v.shape)}, the model expects "
                               f"{tuple(expected[k].shape)} (checkpoint of another LoRA rank or backbone?)")
    result = set_peft_model_state_dict(model, state, adapter_name=adapter)
    bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise AdapterError(f"{source}: peft did not accept keys {bad[:3]}")


def normalize_lora_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept both peft layouts: ``x.lora_A.weight`` and full ``x.lora_A.<adapter>.weight``; strip
    ``base_model.model.`` prefixes."""
    out = {}
    for k, v in state.items():
        if k.startswith("base_model.model."):
            k = k[len("base_model.model."):]
        parts = k.split(".")
        for i, p in enumerate(parts[:-2]):
            if p in ("lora_A", "lora_B") and parts[i + 2] == "weight" and len(parts) == i + 3:
                parts = parts[: i + 1] + parts[i + 2:]
                break
        out[".".join(parts)] = v
    return out


def save_adapters(path: str | Path, backbone, adapters: dict[str, tuple[str, str]], metadata: dict | None = None) -> None:
    """Save adapters as one safetensors file; ``adapters`` maps a prefix to (model attr, adapter name),
    e.g. ``{"transformer": ("transformer", "default"), "vae": ("vae", "default")}``."""
    tensors = {}
    for prefix, (attr, name) in adapters.items():
        for k, v in adapter_state_dict(getattr(backbone, attr), name).items():
            tensors[f"{prefix}/{k}"] = v
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_adapters(path: str | Path, backbone, adapters: dict[str, tuple[str, str]]) -> dict:
    """Inverse of :func:`save_adapters`; returns the file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: adapter file not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise AdapterError(f"{path}: not a readable safetensors file ({e.__class__.__name__}: {e})") from e
    groups: dict[str, dict] = {p: {} for p in adapters}
    for k, v in tensors.items():
        prefix, _, rest = k.partition("/")
        if prefix not in groups:
            raise AdapterError(f"{path}: unexpected tensor group '{prefix}' (expected {list(adapters)})")
        groups[prefix][rest] = v
    for prefix, (attr, name) in adapters.items():
        load_adapter_state_dict(getattr(backbone, attr), groups[prefix], name, f"{path} [{prefix}]")
    return meta

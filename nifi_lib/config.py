"""Typed configuration (configs/*.yaml) with strict validation.

The keys follow the seed README (``model.guidance_scale``, ``train.lr_phi_minus``, ...). A config file
may name a parent with ``inherit: other.yaml`` and then override only what it changes. Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import NifiError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(NifiError, ValueError):
    """A config file is malformed: unknown key, wrong type or value out of range."""


@dataclass
class ModelConfig:
    backbone: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    backbone_kind: str = "sd3"
    embeddings: str | None = None
    guidance_scale: float = 7.5
    lora_rank: int = 64
    lora_alpha: int = 64
    prompt_dropout: float = 0.1
    dtype: str = "bf16"


# Eq. 7's start t0 of the paper (Sec. 4.1; the authors' released 3dgs-sd3-restorer-t=199.ckpt): the one default,
# used by the config, the restorer, the CLI and every baseline; checkpoints record the t0 they were trained at.
DEFAULT_T0 = 199


@dataclass
class DiffusionConfig:
    # Eq. 7's start, for training and inference alike (stored in checkpoints): 199 = NiFi; 1000 (= T,
    # num_train_timesteps) = the "NiFi w/o t0" ablation: the degraded latent fed un-noised at timestep T
    # with sigma 1, as in TSD-SR (nifi_lib.diffusion.flow.eq7_start)
    t0: int = DEFAULT_T0
    num_train_timesteps: int = 1000
    shift: float = 3.0
    t_min_index: int = 50
    t_max_index: int = 950


@dataclass
class TrainConfig:
    batch_size: int = 4
    max_steps: int = 60000
    lr_phi_minus: float = 5e-6
    lr_phi_plus: float = 1e-6
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    resolution: int = 512
    seed: int = 0
    save_every: int = 500
    val_every: int = 1000
    val_max_images: int = 16
    val_holdout_every: int = 8   # validation: every k-th train view per scene, never trained on
    best_metric: str = "lpips"
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    vae_attention: str | None = None   # the VAE's attention processor: None (as loaded: sdpa) or chunked (docs/performance.md run 6)
    compile_cache: str | None = None   # with compile: inductor's artifacts loaded before and saved after the first steps
    max_seconds: float | None = None   # cap on training time (resumed runs included): validate, save, stop
    nan_policy: str = "skip"
    num_workers: int = 2           # DataLoader workers reading pairs on demand (0: in the training process)
    cache_mb: float = 1024.0       # LRU cache of decoded uint8 frames, per reading process


@dataclass
class LossWeights:
    alpha: float = 0.7
    kl: float = 1.0
    l2: float = 1.0
    lpips: float = 1.0
    perceptual_fallback: str | None = None


@dataclass
class EvalConfig:
    lpips_net: str = "alex"
    metrics: list[str] = field(default_factory=lambda: ["lpips", "dists", "psnr", "ssim"])


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d


_CHOICES = {
    ("model", "backbone_kind"): {"sd3", "embedded"},
    ("model", "dtype"): {"fp32", "bf16", "fp16"},
    ("train", "mixed_precision"): {"no", "bf16", "fp16"},
    ("train", "vae_attention"): {None, "sdpa", "chunked"},
    ("train", "nan_policy"): {"skip", "stop"},
    ("train", "best_metric"): {"lpips", "dists", "psnr", "ssim", "loss"},
    ("loss_weights", "perceptual_fallback"): {None, "ms_ssim"},
    ("eval", "lpips_net"): {"alex", "vgg"},
}

# keys that were removed: a clear error that says what replaces them
_REMOVED = {
    ("diffusion", "add_noise"): "diffusion.add_noise was removed: the 'NiFi w/o t0' ablation is one setting, "
                                "diffusion.t0: 1000 (t0 = T: the degraded latent fed without noise at timestep T, "
                                "sigma 1, as in TSD-SR), used identically by training and inference; "
                                "delete add_noise (true is the default behaviour) or set diffusion.t0: 1000",
}


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} ({value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} ({value!r})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} ({value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} ({value!r})")
        return value
    raise TypeError(f"unsupported config type {tp}")


def merge_overrides(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, section by section (nested dicts merge, anything else replaces)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_overrides(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'inherit' forms a cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    parent = data.pop("inherit", None)
    if parent is not None:
        base = _read_yaml((path.parent / parent), seen + (path.resolve(),))
        data = merge_overrides(base, data)
    return data


def _validate_ranges(cfg: Config, src: str) -> None:
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{src}: {key} {msg}")

    d, t, m, w = cfg.diffusion, cfg.train, cfg.model, cfg.loss_weights
    if not 0 <= d.t0 <= d.num_train_timesteps:
        bad("diffusion.t0", f"must lie in [0, {d.num_train_timesteps}] ({d.num_train_timesteps} = T: the "
                            f"un-noised 'w/o t0' ablation), got {d.t0}")
    if not 0 <= d.t_min_index < d.t_max_index < d.num_train_timesteps:
        bad("diffusion.t_min_index/t_max_index", "must satisfy 0 <= t_min_index < t_max_index < num_train_timesteps")
    if d.shift <= 0:
        bad("diffusion.shift", f"must be positive, got {d.shift}")
    for key in ("lr_phi_minus", "lr_phi_plus"):
        if getattr(t, key) <= 0:
            bad(f"train.{key}", f"must be positive, got {getattr(t, key)}")
    for key in ("weight_decay", "grad_clip"):
        if getattr(t, key) < 0:
            bad(f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
    for key in ("batch_size", "max_steps", "resolution", "save_every", "val_every"):
        if getattr(t, key) <= 0:
            bad(f"train.{key}", f"must be a positive integer, got {getattr(t, key)}")
    if t.num_workers < 0:
        bad("train.num_workers", f"must be >= 0, got {t.num_workers}")
    if t.cache_mb < 0:
        bad("train.cache_mb", f"must be >= 0 (0: no cache), got {t.cache_mb}")
    if m.lora_rank <= 0:
        bad("model.lora_rank", f"must be positive, got {m.lora_rank}")
    if not 0 <= m.prompt_dropout <= 1:
        bad("model.prompt_dropout", f"must lie in [0, 1], got {m.prompt_dropout}")
    if m.guidance_scale < 0:
        bad("model.guidance_scale", f"must be >= 0, got {m.guidance_scale}")
    if not 0 <= w.alpha <= 1:
        bad("loss_weights.alpha", f"must lie in [0, 1], got {w.alpha}")
    for key in ("kl", "l2", "lpips"):
        if getattr(w, key) < 0:
            bad(f"loss_weights.{key}", f"must be >= 0, got {getattr(w, key)}")


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build and validate a :class:`Config` from a nested mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for sec_name, sec_val in data.items():
        if sec_name not in sections:
            raise ConfigError(f"{source}: unknown section '{sec_name}' (known: {', '.join(sections)})")
        if not isinstance(sec_val, dict):
            raise ConfigError(f"{source}: section '{sec_name}' must be a mapping")
        sec_cls = sections[sec_name].default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(sec_cls)
        known = {f.name for f in dataclasses.fields(sec_cls)}
        vals = {}
        for k, v in sec_val.items():
            if (sec_name, k) in _REMOVED:
                raise ConfigError(f"{source}: {_REMOVED[(sec_name, k)]}")
            if k not in known:
                raise ConfigError(f"{source}: unknown key '{sec_name}.{k}' (known: {', '.join(sorted(known))})")
            v = _check_type(v, hints[k], f"{source}: {sec_name}.{k}")
            choices = _CHOICES.get((sec_name, k))
            if choices is not None and v not in choices:
                raise ConfigError(f"{source}: {sec_name}.{k} must be one of {sorted(map(str, choices))}, got {v!r}")
            vals[k] = v
        kwargs[sec_name] = sec_cls(**vals)
    cfg = Config(**kwargs, source=source)
    _validate_ranges(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Load a YAML config (following ``inherit``), apply ``overrides`` (nested dict), validate."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    data = _read_yaml(path)
    if not overrides:
        return config_from_dict(data, source=str(path))
    try:
        return config_from_dict(merge_overrides(data, overrides), source=str(path))
    except ConfigError as e:  # say where a bad value may come from: the file or the command line
        given = ", ".join(f"{sec}.{k}={v!r}" for sec, kv in overrides.items()
                          for k, v in (kv.items() if isinstance(kv, dict) else [("", kv)]))
        raise ConfigError(f"{e} (overrides applied to the file: {given})") from None


def parse_override(expr: str) -> dict:
    """``"train.max_steps=10"`` -> ``{"train": {"max_steps": 10}}`` (value parsed as YAML)."""
    if "=" not in expr:
        raise ConfigError(f"override '{expr}' must look like section.key=value")
    key, raw = expr.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"override '{expr}': key must be section.key")
    return {parts[0]: {parts[1]: yaml.safe_load(raw)}}

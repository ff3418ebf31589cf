"""phi- as adapter folders the ecosystem loads (issue 15): peft's ``save_pretrained`` layout per model.

``export_peft(ckpt, out)`` writes ``out/transformer/`` and ``out/vae/`` (each ``adapter_config.json`` +
``adapter_model.safetensors``, keys ``base_model.model.<module>.lora_{A,B}.weight``: what
``PeftModel.from_pretrained(model, folder)`` reads) and ``out/nifi_restore.json`` (the restore settings the
checkpoint records: backbone, embeddings, t0, dtype, and how to run Eq. 7 with them). Loading needs peft and
diffusers only::

    vae = PeftModel.from_pretrained(AutoencoderKL.from_pretrained(base, subfolder="vae"), "out/vae").base_model.model
"""
from __future__ import annotations

from pathlib import Path

from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from ..io.atomic import atomic_path, atomic_write_json
from .io import checkpoint_settings, load_restorer_checkpoint, resolve_restore_settings
from .lora import RESTORER

SETTINGS_FILE = "nifi_restore.json"


def save_peft_adapter(model, folder: str | Path, adapter: str = RESTORER) -> Path:
    """One model's adapter in peft's ``save_pretrained`` layout (config + safetensors), written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.peft_config[adapter].save_pretrained(str(folder))
    sd = get_peft_model_state_dict(model, adapter_name=adapter)
    with atomic_path(folder / "adapter_model.safetensors") as tmp:
        save_file({f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp),
                  metadata={"format": "pt"})
    return folder


def export_peft(ckpt: str | Path, out: str | Path, base_model: str | None = None) -> dict:
    """phi- of ``ckpt`` (any format :func:`~.io.load_restorer_checkpoint` reads) as peft adapter folders."""
    from ..diffusion.backbone import load_backbone
    from ..paths import resolve_model_ref

    base, kind, embeddings = resolve_restore_settings(ckpt, base_model)
    bb = load_backbone(resolve_model_ref(base), kind=kind, embeddings=None, device="cpu", dtype="fp32")
    weights = load_restorer_checkpoint(ckpt, bb)
    out = Path(out)
    save_peft_adapter(bb.transformer, out / "transformer")
    save_peft_adapter(bb.vae, out / "vae")
    settings = {**checkpoint_settings(ckpt), "backbone": base, "t0": weights.t0_or_default,
                "adapter_name": RESTORER, "source_checkpoint": str(ckpt), "source_format": weights.format,
                "eq7": "x^ = x~_t0 - (sigma(t0) - sigma(0)) v(x~_t0, t0), no CFG, the fixed prompt (docs/conventions.md)"}
    atomic_write_json(out / SETTINGS_FILE, settings)
    return settings


__all__ = ["SETTINGS_FILE", "export_peft", "save_peft_adapter"]

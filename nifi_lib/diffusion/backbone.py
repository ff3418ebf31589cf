"""The latent diffusion backbone: VAE (E, D), flow transformer (eps_theta), scheduler, prompt embeddings.

Two kinds, one class:
- ``sd3``: any SD3-family diffusers model, from a local folder or a hub id (paper setting: SD3-medium).
- ``embedded``: the project's tiny backbone, same classes (``AutoencoderKL``, ``SD3Transformer2DModel``)
  built from small configs and pretrained by ``nifi prior train`` (shipped in ``data/embedded/backbone``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from ..errors import NifiError
from ..warnings_policy import install_known_harmless_filters
from .flow import make_scheduler
from .prompts import PromptEmbeddings, check_embeddings_fit, load_embeddings_npz

SD3_MEDIUM = "stabilityai/stable-diffusion-3-medium-diffusers"
MARKER = "nifi_backbone.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Tiny configs of the same classes as SD3 (diffusers' style of building small models for tests).
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    sample_size=64, scaling_factor=1.0, shift_factor=None, use_quant_conv=True, use_post_quant_conv=True,
)
TINY_TRANSFORMER_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=4,
    attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
    caption_projection_dim=128, pooled_projection_dim=32, pos_embed_max_size=48,
)
TINY_PROMPT_TOKENS = 8


class BackboneError(NifiError, RuntimeError):
    """The backbone cannot be loaded (missing folder, no network, gated repo without a token)."""


def vae_scale_factor(vae_config) -> int:
    """The VAE's downsampling factor: 2 per down block but the last (diffusers' ``AutoencoderKL``)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def patch_stride(backbone) -> int:
    """The transformer's patch stride in image pixels: the VAE's downsampling factor x the transformer's
    ``patch_size`` (one token covers a ``stride x stride`` block of the image; a restorer whose tokens do not
    blend leaves a grid at this period, measured by :func:`nifi_lib.metrics.sharpness.patch_grid_artefact`).
    Embedded backbone: 4 x 2 = 8 pixels; SD3-medium: 8 x 2 = 16.

    ``backbone``: a :class:`Backbone`, or a diffusers folder / hub id whose ``vae/`` and ``transformer/``
    configs are read (no weights loaded)."""
    if isinstance(backbone, Backbone):
        return backbone.patch_stride
    ref = str(backbone)
    try:
        vae_cfg = AutoencoderKL.load_config(ref, subfolder="vae")
        tr_cfg = SD3Transformer2DModel.load_config(ref, subfolder="transformer")
    except Exception as e:
        raise BackboneError(f"{ref}: cannot read the vae/ and transformer/ configs of the backbone "
                            f"({e.__class__.__name__}: {e})") from e
    return vae_scale_factor(vae_cfg) * int(tr_cfg["patch_size"])


@dataclass
class Backbone:
    """A frozen LDM: ``vae`` (E, D), ``transformer`` (eps_theta), ``scheduler`` and prompt embeddings."""

    vae: AutoencoderKL
    transformer: SD3Transformer2DModel
    scheduler: FlowMatchEulerDiscreteScheduler
    prompt: PromptEmbeddings | None = None
    null_prompt: PromptEmbeddings | None = None
    kind: str = "sd3"
    source: str = ""
    info: dict = field(default_factory=dict)
    # device copies of the prompt embeddings, keyed by (null, n, device, dtype): no host-to-device copy
    # (and so no stream synchronisation) per call; see :meth:`prompt_batch`
    _prompt_cache: dict = field(default_factory=dict, repr=False, compare=False)
    # which fast paths :func:`optimize_backbone` has applied (compile, channels_last, ...)
    fast_paths: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae.config)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float | None:
        return self.vae.config.get("shift_factor", None)

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def patch_stride(self) -> int:
        """Image pixels per transformer token side (:func:`patch_stride`)."""
        return self.vae_scale_factor * self.patch_size

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device=None, dtype=None) -> "Backbone":
        """Move/cast both models. Only the arguments that change something are passed on: diffusers'
        ``ModelMixin.to`` logs a float32 notice whenever ``dtype=`` is given, even a no-op one."""
        for m in (self.vae, self.transformer):
            kw = {}
            if device is not None:
                kw["device"] = device
            if dtype is not None and next(m.parameters()).dtype != dtype:
                kw["dtype"] = dtype
            if kw:
                m.to(**kw)
        return self

    def freeze(self) -> "Backbone":
        """Freeze every base weight (adapters added later stay trainable)."""
        for m in (self.vae, self.transformer):
            m.requires_grad_(False)
            m.eval()
        return self

    def prompt_batch(self, n: int, device=None, dtype=None, null: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` copies of the (null) prompt embedding on ``device`` in ``dtype``, contiguous.

        The result is cached per (prompt, n, device, dtype): the embeddings live on the CPU and a blocking
        host-to-device copy would synchronise the CUDA stream at every call (several times per training
        step). Callers must not modify the returned tensors in place. The cache follows the prompt objects
        and their in-place versions, so replacing or editing ``prompt`` invalidates it.
        """
        p = self.null_prompt if null else self.prompt
        if p is None:
            raise BackboneError(f"backbone '{self.source}' has no {'null ' if null else ''}prompt embedding; "
                                "pass --embeddings FILE.npz")
        if p.prompt_embeds.requires_grad or p.pooled_prompt_embeds.requires_grad:   # trained embeddings: no cache
            pe, pp = p.expand(n)
            return pe.to(device=device, dtype=dtype), pp.to(device=device, dtype=dtype)
        key = (null, int(n), str(torch.device(device)) if device is not None else None, dtype)
        version = (id(p), p.prompt_embeds._version, p.pooled_prompt_embeds._version)
        hit = self._prompt_cache.get(key)
        if hit is not None and hit[0] == version and hit[1] is p:
            return hit[2], hit[3]
        pe, pp = p.expand(n)
        pe = pe.to(device=device, dtype=dtype).contiguous()
        pp = pp.to(device=device, dtype=dtype).contiguous()
        if len(self._prompt_cache) > 32:
            self._prompt_cache.clear()
        self._prompt_cache[key] = (version, p, pe, pp)
        return pe, pp

    def save_pretrained(self, folder: str | Path, info: dict | None = None,
                        storage_dtype: torch.dtype | None = None, vae_storage_dtype: torch.dtype | None = None) -> None:
        """Save in the diffusers layout (vae/, transformer/, scheduler/) plus embeddings and a marker.

        ``storage_dtype`` (e.g. ``torch.float16``) stores the transformer weights in that precision to keep the
        shipped files small (``vae_storage_dtype`` the same for the VAE; None: as it is);
        :func:`load_backbone` casts to the requested dtype on load."""
        import copy

        from .prompts import save_embeddings_npz

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vae = self.vae if vae_storage_dtype in (None, torch.float32) else copy.deepcopy(self.vae).to(vae_storage_dtype)
        vae.save_pretrained(folder / "vae", safe_serialization=True)
        tr = self.transformer if storage_dtype is None else copy.deepcopy(self.transformer).to(storage_dtype)
        tr.save_pretrained(folder / "transformer", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.prompt is not None:
            save_embeddings_npz(folder / "prompt_embeds.npz", self.prompt, self.null_prompt)
        (folder / MARKER).write_text(json.dumps({"kind": self.kind, **(info or self.info)}, indent=2) + "\n")


def build_tiny_backbone(seed: int = 0, vae_config: dict | None = None,
                        transformer_config: dict | None = None, shift: float = 3.0) -> Backbone:
    """A randomly initialised SD3-shaped tiny backbone (tests, and the start of ``nifi prior train``)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**(vae_config or TINY_VAE_CONFIG))
    tcfg = transformer_config or TINY_TRANSFORMER_CONFIG
    transformer = SD3Transformer2DModel(**tcfg)
    g = torch.Generator().manual_seed(seed + 1)
    prompt = PromptEmbeddings(torch.randn(1, TINY_PROMPT_TOKENS, tcfg["joint_attention_dim"], generator=g),
                              torch.randn(1, tcfg["pooled_projection_dim"], generator=g))
    null = PromptEmbeddings(torch.zeros_like(prompt.prompt_embeds), torch.zeros_like(prompt.pooled_prompt_embeds))
    return Backbone(vae=vae, transformer=transformer, scheduler=make_scheduler(1000, shift),
                    prompt=prompt, null_prompt=null, kind="embedded", source="<tiny random>")


def is_embedded_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def load_backbone(path_or_id: str, kind: str | None = None, embeddings: str | Path | None = None,
                  device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
                  token: str | None = None) -> Backbone:
    """Load a backbone from a diffusers folder or a hub id; frozen, on ``device`` in ``dtype``.

    ``embeddings`` is an .npz in the authors' format; for the embedded backbone it defaults to the
    folder's own ``prompt_embeds.npz``. Hub ids need network access and, for SD3-medium, a token
    (``HF_TOKEN`` or ``huggingface-cli login``) after accepting the licence.
    """
    install_known_harmless_filters()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise BackboneError(f"unknown dtype '{dtype}' (use fp32, bf16 or fp16)")
        dtype = DTYPES[dtype]
    local = Path(path_or_id)
    if kind is None:
        kind = "embedded" if is_embedded_dir(local) else "sd3"
    info: dict = {}
    if local.exists():
        if not local.is_dir():
            raise BackboneError(f"{local}: backbone must be a diffusers folder with vae/, transformer/, scheduler/")
        missing = [s for s in ("vae", "transformer", "scheduler") if not (local / s).is_dir()]
        if missing:
            raise BackboneError(f"{local}: not a diffusers backbone folder, missing {', '.join(missing)}/")
        if is_embedded_dir(local):
            info = json.loads((local / MARKER).read_text())
    elif kind == "embedded" or str(path_or_id).startswith((".", "/", "data/")):
        raise BackboneError(f"{path_or_id}: backbone folder not found. The embedded backbone ships in "
                            "data/embedded/backbone (rebuild it with `nifi prior train`).")
    token = token or os.environ.get("HF_TOKEN")
    try:
        vae = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", token=token)
        transformer = SD3Transformer2DModel.from_pretrained(path_or_id, subfolder="transformer", token=token)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path_or_id, subfolder="scheduler", token=token)
    except Exception as e:
        if local.exists():
            raise BackboneError(f"{local}: cannot load backbone ({e.__class__.__name__}: {e})") from e
        raise BackboneError(
            f"cannot load backbone '{path_or_id}' from the Hugging Face Hub ({e.__class__.__name__}: {e}).\n"
            f"SD3-medium is gated: accept its licence on the Hub and set HF_TOKEN (or `huggingface-cli login`).\n"
            f"Offline: on a machine with internet run `huggingface-cli download {path_or_id} --local-dir DIR` "
            f"and pass the folder (--base_model DIR / model.backbone: DIR).") from e
    prompt = null = None
    emb_path = embeddings or (local / "prompt_embeds.npz" if (local / "prompt_embeds.npz").is_file() else None)
    if emb_path is not None:
        prompt, null = load_embeddings_npz(emb_path)
        check_embeddings_fit(prompt, transformer, str(emb_path))
    bb = Backbone(vae=vae, transformer=transformer, scheduler=scheduler, prompt=prompt, null_prompt=null,
                  kind=kind, source=str(path_or_id), info=info)
    bb.to(device=device, dtype=dtype)
    return bb.freeze()

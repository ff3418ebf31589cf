"""Analytic FLOP counts of the NiFi backbone (SD3 transformer, AutoencoderKL) from their configs.

One multiply-add counts as 2 FLOPs. Counted: every ``nn.Linear`` / ``nn.Conv2d`` of the models (name for
name, so that ``tests/test_perf_paths.py`` can check the list against forward hooks on a real model), the
two attention matmuls (``Q K^T`` and ``P V``) of the transformer's joint attention and of the VAE's
mid-block attention, and the LoRA adapters (``A`` then ``B``: ``positions * r * (in * k * k + out)``
multiply-adds per adapted layer). Not counted: norms, activations, softmax, elementwise ops (memory-bound
and a small share of the work) and LPIPS' AlexNet (about 0.1 TFLOP per training step, <0.1 %).

Backward passes (training): the base weights are frozen, so a layer's backward computes its input
gradient only (1x its forward) while a LoRA layer computes input and weight gradients (2x); the attention
backward does 4 matmuls (2x its forward; flash attention's recomputation of ``Q K^T`` is not counted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Layer:
    """One linear/conv layer: ``positions`` output positions (tokens or pixels, batch included), each a
    dot product of length ``fan_in`` (``in * k * k``) for each of ``out`` channels."""

    name: str
    fan_in: int
    out: int
    positions: int

    @property
    def macs(self) -> int:
        return self.positions * self.fan_in * self.out

    def lora_macs(self, rank: int) -> int:
        return self.positions * rank * (self.fan_in + self.out)


def _cfg(c) -> Mapping:
    return dict(c) if not isinstance(c, dict) else c


# --------------------------------------------------------------------------------------------------
# SD3 transformer
# --------------------------------------------------------------------------------------------------
def transformer_layers(cfg, batch: int, lat_h: int, lat_w: int, text_tokens: int) -> list[Layer]:
    """Every Linear/Conv2d of ``SD3Transformer2DModel`` for one forward on latents ``lat_h x lat_w``
    (already a multiple of the patch size) and ``text_tokens`` prompt tokens."""
    c = _cfg(cfg)
    p, cin, cout = c["patch_size"], c["in_channels"], c.get("out_channels") or c["in_channels"]
    d = c["num_attention_heads"] * c["attention_head_dim"]
    n = (lat_h // p) * (lat_w // p)
    t, b = text_tokens, batch
    cap = c["caption_projection_dim"]
    if c.get("dual_attention_layers") or c.get("qk_norm"):
        raise NotImplementedError("dual attention / qk-norm variants (SD3.5) are not counted")
    layers = [
        Layer("pos_embed.proj", cin * p * p, d, b * n),
        Layer("time_text_embed.timestep_embedder.linear_1", 256, d, b),
        Layer("time_text_embed.timestep_embedder.linear_2", d, d, b),
        Layer("time_text_embed.text_embedder.linear_1", c["pooled_projection_dim"], d, b),
        Layer("time_text_embed.text_embedder.linear_2", d, d, b),
        Layer("context_embedder", c["joint_attention_dim"], cap, b * t),
    ]
    num_layers = c["num_layers"]
    for i in range(num_layers):
        pre_only = i == num_layers - 1
        k = f"transformer_blocks.{i}."
        layers += [Layer(k + "norm1.linear", d, 6 * d, b),
                   Layer(k + "norm1_context.linear", d, (2 if pre_only else 6) * d, b)]
        layers += [Layer(k + f"attn.{m}", d, d, b * n) for m in ("to_q", "to_k", "to_v")]
        layers += [Layer(k + f"attn.{m}", d, d, b * t) for m in ("add_q_proj", "add_k_proj", "add_v_proj")]
        layers.append(Layer(k + "attn.to_out.0", d, d, b * n))
        if not pre_only:
            layers.append(Layer(k + "attn.to_add_out", d, d, b * t))
        layers += [Layer(k + "ff.net.0.proj", d, 4 * d, b * n), Layer(k + "ff.net.2", 4 * d, d, b * n)]
        if not pre_only:
            layers += [Layer(k + "ff_context.net.0.proj", d, 4 * d, b * t), Layer(k + "ff_context.net.2", 4 * d, d, b * t)]
    layers += [Layer("norm_out.linear", d, 2 * d, b), Layer("proj_out", d, p * p * cout, b * n)]
    return layers


def transformer_attention_macs(cfg, batch: int, lat_h: int, lat_w: int, text_tokens: int) -> int:
    """``Q K^T`` and ``P V`` of the joint attention over image + text tokens, all blocks."""
    c = _cfg(cfg)
    d = c["num_attention_heads"] * c["attention_head_dim"]
    s = (lat_h // c["patch_size"]) * (lat_w // c["patch_size"]) + text_tokens
    return c["num_layers"] * batch * 2 * s * s * d


# --------------------------------------------------------------------------------------------------
# AutoencoderKL (SD3's VAE and the tiny ones: DownEncoderBlock2D / UpDecoderBlock2D)
# --------------------------------------------------------------------------------------------------
def _resnet(prefix: str, cin: int, cout: int, pos: int) -> list[Layer]:
    out = [Layer(prefix + "conv1", cin * 9, cout, pos), Layer(prefix + "conv2", cout * 9, cout, pos)]
    if cin != cout:
        out.append(Layer(prefix + "conv_shortcut", cin, cout, pos))
    return out


def _mid(prefix: str, ch: int, pos: int, attention: bool) -> list[Layer]:
    layers = _resnet(prefix + "resnets.0.", ch, ch, pos)
    if attention:
        layers += [Layer(prefix + f"attentions.0.{m}", ch, ch, pos) for m in ("to_q", "to_k", "to_v", "to_out.0")]
    return layers + _resnet(prefix + "resnets.1.", ch, ch, pos)


def vae_encoder_layers(cfg, batch: int, height: int, width: int) -> list[Layer]:
    """Every conv/linear of ``AutoencoderKL.encoder`` (and ``quant_conv``) on ``height x width`` images
    (a multiple of the VAE factor)."""
    c = _cfg(cfg)
    ch, lpb = list(c["block_out_channels"]), c["layers_per_block"]
    h, w = height, width
    layers = [Layer("encoder.conv_in", c["in_channels"] * 9, ch[0], batch * h * w)]
    prev = ch[0]
    for i, co in enumerate(ch):
        for j in range(lpb):
            layers += _resnet(f"encoder.down_blocks.{i}.resnets.{j}.", prev if j == 0 else co, co, batch * h * w)
        prev = co
        if i < len(ch) - 1:
            h, w = h // 2, w // 2          # pad (0, 1, 0, 1), 3x3 stride 2
            layers.append(Layer(f"encoder.down_blocks.{i}.downsamplers.0.conv", co * 9, co, batch * h * w))
    layers += _mid("encoder.mid_block.", ch[-1], batch * h * w, c.get("mid_block_add_attention", True))
    layers.append(Layer("encoder.conv_out", ch[-1] * 9, 2 * c["latent_channels"], batch * h * w))
    if c.get("use_quant_conv", True):
        layers.append(Layer("quant_conv", 2 * c["latent_channels"], 2 * c["latent_channels"], batch * h * w))
    return layers


def vae_decoder_layers(cfg, batch: int, lat_h: int, lat_w: int) -> list[Layer]:
    """Every conv/linear of ``post_quant_conv`` and ``AutoencoderKL.decoder`` on ``lat_h x lat_w`` latents."""
    c = _cfg(cfg)
    rch, lpb = list(reversed(c["block_out_channels"])), c["layers_per_block"]
    h, w = lat_h, lat_w
    layers = []
    if c.get("use_post_quant_conv", True):
        layers.append(Layer("post_quant_conv", c["latent_channels"], c["latent_channels"], batch * h * w))
    layers.append(Layer("decoder.conv_in", c["latent_channels"] * 9, rch[0], batch * h * w))
    layers += _mid("decoder.mid_block.", rch[0], batch * h * w, c.get("mid_block_add_attention", True))
    prev = rch[0]
    for i, co in enumerate(rch):
        for j in range(lpb + 1):
            layers += _resnet(f"decoder.up_blocks.{i}.resnets.{j}.", prev if j == 0 else co, co, batch * h * w)
        prev = co
        if i < len(rch) - 1:
            h, w = h * 2, w * 2            # nearest x2, then 3x3 conv
            layers.append(Layer(f"decoder.up_blocks.{i}.upsamplers.0.conv", co * 9, co, batch * h * w))
    layers.append(Layer("decoder.conv_out", rch[-1] * 9, c["out_channels"], batch * h * w))
    return layers


def vae_attention_macs(cfg, batch: int, lat_h: int, lat_w: int) -> int:
    """``Q K^T`` and ``P V`` of the mid-block attention (one head of the last block's width) at the latent
    resolution; the encoder and the decoder each have one."""
    c = _cfg(cfg)
    if not c.get("mid_block_add_attention", True):
        return 0
    s = lat_h * lat_w
    return batch * 2 * s * s * c["block_out_channels"][-1]


# --------------------------------------------------------------------------------------------------
# LoRA targets (the project's phi-/phi+; peft's suffix matching)
# --------------------------------------------------------------------------------------------------
def matches(name: str, targets: Iterable[str]) -> bool:
    """peft's rule for a list of target names: the module name equals a target or ends with ``.target``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_macs(layers: list[Layer], targets: Iterable[str], rank: int) -> int:
    targets = list(targets)
    return sum(layer.lora_macs(rank) for layer in layers if matches(layer.name, targets))


def vae_lora_targets(layers: list[Layer]) -> list[str]:
    """The phi- targets of the VAE encoder (``nifi_lib.restoration.lora.vae_encoder_targets``) as names."""
    out = []
    for layer in layers:
        n = layer.name
        if n.startswith("encoder.down_blocks.") or n.startswith("encoder.mid_block.") \
                or n in ("encoder.conv_in", "encoder.conv_out", "quant_conv"):
            out.append(n)
    return out


# --------------------------------------------------------------------------------------------------
# Whole passes
# --------------------------------------------------------------------------------------------------
def _sum(layers: list[Layer]) -> int:
    return sum(layer.macs for layer in layers)


def restore_flops(tcfg, vcfg, batch: int, height: int, width: int, text_tokens: int, rank: int | None,
                  fused: bool = False) -> dict[str, float]:
    """FLOPs of one :meth:`Restorer.restore` call (Eq. 7: E_phi-, one transformer pass with phi-, D) on
    ``batch`` frames of ``height x width`` (padded as the restorer pads). ``fused``: phi- merged into the
    base weights (no LoRA FLOPs). Returns ``{"encoder", "transformer", "decoder", "total"}``."""
    from ..restoration.lora import TRANSFORMER_TARGETS

    f = 2 ** (len(_cfg(vcfg)["block_out_channels"]) - 1)
    p = _cfg(tcfg)["patch_size"]
    hp, wp = -(-height // f) * f, -(-width // f) * f
    lh, lw = hp // f, wp // f
    th, tw = -(-lh // p) * p, -(-lw // p) * p
    enc = vae_encoder_layers(vcfg, batch, hp, wp)
    tr = transformer_layers(tcfg, batch, th, tw, text_tokens)
    dec = vae_decoder_layers(vcfg, batch, th, tw)
    r = 0 if (fused or not rank) else rank
    e = _sum(enc) + vae_attention_macs(vcfg, batch, lh, lw) + (lora_macs(enc, vae_lora_targets(enc), r) if r else 0)
    t = _sum(tr) + transformer_attention_macs(tcfg, batch, th, tw, text_tokens) + \
        (lora_macs(tr, TRANSFORMER_TARGETS, r) if r else 0)
    d = _sum(dec) + vae_attention_macs(vcfg, batch, th, tw)
    out = {"encoder": 2.0 * e, "transformer": 2.0 * t, "decoder": 2.0 * d}
    out["total"] = sum(out.values())
    return out


def train_step_flops(tcfg, vcfg, batch: int, resolution: int, text_tokens: int, rank: int,
                     alpha: float = 0.7, lpips: bool = True) -> dict[str, float]:
    """FLOPs of one :meth:`NiFiTrainer.train_step` at ``batch`` x ``resolution``^2 (see the module
    docstring for the backward convention). Returns the parts and ``"total"``."""
    from ..restoration.lora import CRITIC_TARGETS, TRANSFORMER_TARGETS

    f = 2 ** (len(_cfg(vcfg)["block_out_channels"]) - 1)
    lat = resolution // f
    enc = vae_encoder_layers(vcfg, batch, resolution, resolution)
    dec = vae_decoder_layers(vcfg, batch, lat, lat)
    enc_attn = vae_attention_macs(vcfg, batch, lat, lat)
    enc_base = _sum(enc) + enc_attn
    enc_lora = lora_macs(enc, vae_lora_targets(enc), rank)
    dec_base, dec_attn = _sum(dec), vae_attention_macs(vcfg, batch, lat, lat)

    def tr(b: int, targets) -> tuple[int, int, int]:
        layers = transformer_layers(tcfg, b, lat, lat, text_tokens)
        return _sum(layers), transformer_attention_macs(tcfg, b, lat, lat, text_tokens), \
            (lora_macs(layers, targets, rank) if targets else 0)

    def fwd_bwd(base: int, attn: int, lora: int) -> int:
        return (base + attn + lora) + (base + 2 * attn + 2 * lora)

    parts = {
        # E_phi- with gradients reaching its LoRA (input grads through the encoder, weight grads of A, B)
        "encode_phi_minus_fwd_bwd": fwd_bwd(_sum(enc), enc_attn, enc_lora),
        "encode_clean_fwd": enc_base,
        "transformer_phi_minus_fwd_bwd": fwd_bwd(*tr(batch, TRANSFORMER_TARGETS)),
        # CFG: conditional + null in one batch; s_real on x^_t and x_t together (4B), s_restore on x^_t (2B)
        "scores_real_fwd": sum(tr(4 * batch if alpha < 1 else 2 * batch, None)),
        "scores_fake_fwd": sum(tr(2 * batch, CRITIC_TARGETS)),
        "decode_lpips_fwd_bwd": fwd_bwd(dec_base, dec_attn, 0) if lpips else 0,
        "transformer_critic_fwd_bwd": fwd_bwd(*tr(batch, CRITIC_TARGETS)),
    }
    out = {k: 2.0 * v for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def hooked_layer_macs(model, run) -> dict[str, int]:
    """Multiply-adds of every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` during ``run()``, read off the
    actual input and output shapes by forward hooks (LoRA's ``lora_A``/``lora_B`` reported under their
    own names). The independent check of the analytic counts above."""
    import torch

    counts: dict[str, int] = {}
    handles = []

    def hook(name):
        def f(module, inputs, output):
            if isinstance(module, torch.nn.Conv2d):
                k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            else:
                k = module.in_features
            counts[name] = counts.get(name, 0) + output.numel() * k
        return f

    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return counts


__all__ = ["hooked_layer_macs", "Layer", "transformer_layers", "transformer_attention_macs", "vae_encoder_layers", "vae_decoder_layers",
           "vae_attention_macs", "lora_macs", "matches", "vae_lora_targets", "restore_flops", "train_step_flops"]

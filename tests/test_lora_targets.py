"""phi-'s LoRA targets against the authors' lists (PAPER.md, "The authors' public inference code"), written
out here literally, not read from lora.py or from the digest: a change on either side shows up."""
from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from helpers import SD3_LIKE_VAE, tiny_backbone
from nifi_lib.restoration.lora import RESTORER, TRANSFORMER_TARGETS, add_restorer_adapters, vae_encoder_targets

# PAPER.md: "Transformer targets: to_k, to_q, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj, proj,
# linear, proj_out."
PAPER_TRANSFORMER_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                             "proj", "linear", "proj_out"]
# PAPER.md: "VAE targets: every conv of the encoder's down blocks and mid block, the encoder mid-block
# attention projections (to_q, to_k, to_v, to_out.0), encoder.conv_in, encoder.conv_out and quant_conv."
PAPER_VAE_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
PAPER_VAE_NAMED = ("encoder.conv_in", "encoder.conv_out", "quant_conv")


def paper_vae_targets(vae) -> set[str]:
    """The paper's VAE list expanded on one VAE's module tree (independently of lora.py)."""
    out = set()
    for name, mod in vae.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and (name.startswith("encoder.down_blocks.")
                                                 or name.startswith("encoder.mid_block.")):
            out.add(name)
        if name.startswith("encoder.mid_block.attentions.") and any(
                name.endswith("." + p) for p in PAPER_VAE_ATTENTION_PROJECTIONS):
            out.add(name)
    out |= {n for n in PAPER_VAE_NAMED if n in dict(vae.named_modules())}
    return out


def lora_modules(model, adapter=RESTORER) -> set[str]:
    return {n for n, m in model.named_modules() if hasattr(m, "lora_A") and adapter in m.lora_A}


def test_transformer_target_list_is_the_papers():
    assert TRANSFORMER_TARGETS == PAPER_TRANSFORMER_TARGETS or \
        (sorted(TRANSFORMER_TARGETS) == sorted(PAPER_TRANSFORMER_TARGETS)
         and len(TRANSFORMER_TARGETS) == len(PAPER_TRANSFORMER_TARGETS))


def test_transformer_lora_lands_on_the_papers_modules():
    """peft matches a target as a name suffix; the wrapped modules are exactly the Linear/Conv2d layers
    whose names end with one of the paper's targets (as with the authors' peft config, this includes the
    patch embedding's conv ``pos_embed.proj``, matched by ``proj``)."""
    bb = tiny_backbone(seed=0)
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    expect = {n for n, m in bb.transformer.named_modules()
              if isinstance(m, layers) and any(n == t or n.endswith("." + t) for t in PAPER_TRANSFORMER_TARGETS)}
    add_restorer_adapters(bb, rank=2)
    got = lora_modules(bb.transformer)
    assert got == expect and got
    assert "pos_embed.proj" in got
    # every paper target exists in the SD3 block layout (none is a dead entry on this backbone)
    for t in PAPER_TRANSFORMER_TARGETS:
        assert any(n == t or n.endswith("." + t) for n in got), t


@pytest.mark.parametrize("use_quant_conv", [False, True])
def test_vae_targets_are_the_papers(use_quant_conv):
    vae = AutoencoderKL(**SD3_LIKE_VAE, use_quant_conv=use_quant_conv, use_post_quant_conv=use_quant_conv)
    expect = paper_vae_targets(vae)
    assert set(vae_encoder_targets(vae)) == expect
    assert len(vae_encoder_targets(vae)) == len(expect)           # no duplicates
    assert ("quant_conv" in expect) == use_quant_conv
    assert {"encoder.conv_in", "encoder.conv_out"} <= expect
    assert not any(n.startswith("decoder.") or n == "post_quant_conv" for n in expect)
    # the adapter really wraps those modules, and only those
    bb = tiny_backbone(seed=0)
    bb.vae = vae
    add_restorer_adapters(bb, rank=2)
    assert lora_modules(vae) == expect

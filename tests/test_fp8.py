"""FP8 matmuls for the frozen base (diffusion/fp8.py, issue 18): the rowwise quantisation's error bound, the
``torch._scaled_mm`` call against a plain float64 product of the same float8 operands, and the restorer with its
transformer converted (CPU: ``torch._scaled_mm`` runs float8 there too)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import randomize_lora, tiny_backbone
from nifi_lib.diffusion.fp8 import E4M3_MAX, Fp8Linear, count_fp8, fp8_eligible, fp8_linear, \
    quantize_rowwise
from nifi_lib.restoration.lora import RESTORER, add_restorer_adapters
from nifi_lib.restoration.restorer import Restorer


def test_rowwise_quantisation_keeps_each_row_within_e4m3_rounding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=g) * torch.tensor([1e-3, 0.1, 1, 10, 300, 0.0])[:, None]
    q, s = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (6, 1) and s.dtype == torch.float32
    amax = x.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(s[:5], amax[:5] / 448.0)                  # absmax / e4m3's largest value
    assert s[5].item() == 1.0 and (q[5].float() == 0).all()                # an all-zero row: scale 1, zeros
    back = q.float() * s
    # e4m3 keeps 3 mantissa bits: every element within 2^-4 of itself (normal range) or of the row's max / 2^9
    # (subnormals), and the row's largest element maps to 448 exactly
    err = (back - x).abs()
    assert (err <= x.abs() * 2 ** -4 + amax * 2 ** -9 + 1e-12).all()
    assert torch.equal(q.float().abs().amax(dim=1)[:5], torch.full((5,), E4M3_MAX))


def test_fp8_linear_is_the_product_of_its_float8_operands():
    """``fp8_linear`` = (x quantised per token) @ (W quantised per output row)^T + b, computed here in float64 from
    the float8 values and scales (quantised independently of the function under test)."""
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(3, 5, 32, generator=g), torch.randn(48, 32, generator=g), torch.randn(48, generator=g)

    def q(t):   # the same rule, written out: absmax / 448 per row, cast to e4m3
        s = t.abs().amax(dim=-1, keepdim=True) / 448.0
        return (t / s).to(torch.float8_e4m3fn).double() * s.double()

    ref = q(x.reshape(-1, 32)) @ q(w).T + b.double()
    wq, ws = quantize_rowwise(w)
    out = fp8_linear(x, wq, ws.reshape(1, -1), b, torch.float32)
    assert out.shape == (3, 5, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out.reshape(-1, 48).double(), ref, atol=1e-4, rtol=1e-5)
    # against the float32 layer itself: the approximation's size (a few per cent of the output's scale)
    lin = nn.Linear(32, 48)
    with torch.no_grad():
        lin.weight.copy_(w), lin.bias.copy_(b)
    exact = lin(x)
    rel = ((Fp8Linear(lin)(x) - exact).norm() / exact.norm()).item()
    assert 1e-4 < rel < 0.05


def test_restorer_fp8_converts_the_token_projections_and_stays_close():
    bb = tiny_backbone(seed=3)
    add_restorer_adapters(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=4)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = Restorer(bb, fuse_lora=True).restore(x, seed=0)
    expected = sum(fp8_eligible(n, m) for blk in bb.transformer.transformer_blocks for n, m in blk.named_modules())
    r = Restorer(bb, fuse_lora=True, fp8=True)
    assert expected > 0 and count_fp8(bb.transformer) == expected == bb.fast_paths["fp8"]
    blk = bb.transformer.transformer_blocks[0]
    assert isinstance(blk.attn.to_q.base_layer, Fp8Linear)                # inside peft's wrapper (phi- fused)
    assert isinstance(blk.ff.net[2], Fp8Linear)                            # a layer LoRA does not target
    assert type(blk.norm1.linear.base_layer) is nn.Linear                  # AdaLN modulation stays
    assert type(blk.attn.to_q.lora_A[RESTORER]) is nn.Linear               # LoRA's own layers stay
    out = r.restore(x, seed=0)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    diff = (out - ref).abs()
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.005
    Restorer(bb, fp8=True)                                                 # a second restorer converts nothing more
    assert count_fp8(bb.transformer) == expected


def test_nifi_restore_fp8_writes_a_close_frame(model_dir, tmp_path):
    from nifi_lib.cli import main

    arr = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    outs = {}
    for name, extra in (("plain", []), ("fp8", ["--fp8"])):
        outs[name] = tmp_path / f"{name}.png"
        assert main(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(model_dir / "r.ckpt"),
                     "--lq", str(tmp_path / "a.png"), "--out", str(outs[name]), "--device", "cpu", *extra]) == 0
    a, b = (np.asarray(Image.open(outs[k])).astype(int) for k in ("plain", "fp8"))
    assert a.shape == b.shape == (20, 24, 3) and np.abs(a - b).max() <= 8


@pytest.mark.parametrize("name,ok", [("attn.to_q.base_layer", True), ("norm1.linear.base_layer", False),
                                     ("attn.to_q.lora_A.default", False), ("ff.net.2", True)])
def test_fp8_eligible_names(name, ok):
    assert fp8_eligible(name, nn.Linear(32, 64)) is ok
    assert fp8_eligible(name, nn.Linear(24, 64)) is False                  # not a multiple of 16


def test_fp8_on_an_older_gpu_or_in_fp32_is_a_clear_error(monkeypatch):
    from nifi_lib.diffusion.fp8 import Fp8Unsupported, check_fp8_device
    from nifi_lib.errors import NifiError

    check_fp8_device(torch.device("cpu"), torch.float32)                   # the CPU: any dtype
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(Fp8Unsupported, match="compute capability 8.9 or later.*bfloat16 on sm80") as e:
        check_fp8_device(torch.device("cuda"), torch.bfloat16)
    assert isinstance(e.value, NifiError)                                  # nifi prints it, no traceback
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_device(torch.device("cuda"), torch.bfloat16)
    with pytest.raises(Fp8Unsupported, match="float32 on sm90"):
        check_fp8_device(torch.device("cuda"), torch.float32)

"""The chunked attention of the VAE (issue 18, ``nifi_lib.diffusion.vae_attention``) is SDPA's function.

``chunked_attention`` against ``F.scaled_dot_product_attention`` (forward and gradients, float64/float32, chunks
that do not divide the sequence, one query per chunk, the VAE's 512-wide head), and its processor in a real
diffusers ``AutoencoderKL`` (tiny, SD3-like) and in the restorer against the default processor.
"""
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from helpers import SD3_LIKE_VAE, tiny_backbone
from nifi_lib.diffusion.fast_paths import optimize_backbone
from nifi_lib.diffusion.vae_attention import (VAE_ATTENTION_KINDS, ChunkedAttnProcessor, chunked_attention,
                                              default_chunk, set_vae_attention, vae_attention_kind)
from nifi_lib.restoration.restorer import Restorer

TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
# (B, H, N queries, N keys, D, Dv), chunk
CASES = [((1, 1, 37, 37, 8, 8), 5), ((2, 3, 16, 16, 4, 4), 1), ((1, 2, 20, 13, 6, 10), 7),
         ((1, 1, 64, 64, 512, 512), None), ((1, 1, 48, 48, 512, 512), 17)]


def _qkv(b, h, n, nk, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
            for shape in ((b, h, n, d), (b, h, nk, d), (b, h, nk, dv))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,chunk", CASES)
def test_chunked_attention_is_sdpa_forward_and_backward(dtype, shape, chunk):
    q, k, v = _qkv(*shape, dtype)
    out = chunked_attention(q, k, v, chunk=chunk)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert out.dtype == dtype and out.shape == ref.shape
    assert (out - ref).abs().max().item() < TOL[dtype]
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        assert (a - b).abs().max().item() < TOL[dtype] * max(1.0, b.abs().max().item())


def test_chunked_attention_scale_half_precision_and_chunk_checks():
    q, k, v = _qkv(2, 1, 30, 30, 16, 16, torch.float32)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert (chunked_attention(q, k, v, scale=0.3, chunk=4) - ref).abs().max().item() < TOL[torch.float32]
    # bf16: float32 scores and softmax; the error is bf16's rounding of P and of the output (and of the scores'
    # gradient in the backward), as SDPA's in bf16; the gradients go through the float32-output score GEMM
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (qb, kb, vb))
    exact = F.scaled_dot_product_attention(qd, kd, vd, scale=0.3)
    out = chunked_attention(qb, kb, vb, scale=0.3, chunk=4)
    out_sdpa = F.scaled_dot_product_attention(qb, kb, vb, scale=0.3)
    err = (out.double() - exact).abs().max().item()
    err_sdpa = (out_sdpa.double() - exact).abs().max().item()
    assert out.dtype == torch.bfloat16 and err <= 2 * err_sdpa + 1e-3 and err < 2 ** -7 * exact.abs().max().item()
    go = torch.randn(exact.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = torch.autograd.grad(exact, (qd, kd, vd), go)
    for a, b, e in zip(torch.autograd.grad(out, (qb, kb, vb), go.bfloat16()),
                       torch.autograd.grad(out_sdpa, (qb, kb, vb), go.bfloat16()), grads):
        rel, rel_sdpa = ((x.double() - e).abs().max().item() / e.abs().max().item() for x in (a, b))
        assert a.dtype == torch.bfloat16 and rel <= 2 * rel_sdpa + 1e-3 and rel < 2 ** -6
    with torch.autocast("cpu", dtype=torch.bfloat16):                 # as SDPA: computed in the autocast dtype
        auto = chunked_attention(q, k, v, scale=0.3, chunk=4)
        auto_sdpa = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert auto.dtype == auto_sdpa.dtype == torch.bfloat16 and torch.equal(auto, out)
    with pytest.raises(ValueError, match="chunk"):
        chunked_attention(q, k, v, chunk=0)
    with pytest.raises(ValueError, match="B, H, N, D"):
        chunked_attention(q[0], k[0], v[0])
    # 512 MiB of float32 scores: half of a 1024x1024 frame's queries per chunk, 4142 at 1080x1920
    assert default_chunk(1, 16384) == 8192 and default_chunk(1, 32400) == 4142 and default_chunk(4, 10 ** 9) == 1


def _vae():
    torch.manual_seed(0)
    return AutoencoderKL(**SD3_LIKE_VAE).eval()


def test_processor_in_a_real_vae_gives_the_default_processors_encode_and_decode():
    vae = _vae()
    assert vae_attention_kind(vae) == "sdpa"
    x = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_enc, ref_dec = vae.encode(x).latent_dist.mean, vae.decode(z).sample
    # the encoder's and the decoder's mid-block attention; 3 queries per chunk (20 and 35 latent pixels)
    assert set_vae_attention(vae, "chunked", chunk=3) == 2
    attn = [m for m in vae.modules() if isinstance(m, Attention)]
    assert all(type(m.processor) is ChunkedAttnProcessor for m in attn) and vae_attention_kind(vae) == "chunked"
    assert attn[0].residual_connection and attn[0].group_norm is not None   # the VAE's steps around attention
    with torch.no_grad():
        enc, dec = vae.encode(x).latent_dist.mean, vae.decode(z).sample
    assert (enc - ref_enc).abs().max().item() < 1e-5 and (dec - ref_dec).abs().max().item() < 1e-5
    # gradients through the encoder (the trainer's path through phi- in the VAE)
    xg = x.clone().requires_grad_()
    g_chunked = torch.autograd.grad(vae.encode(xg).latent_dist.mean.square().sum(), xg)[0]
    assert set_vae_attention(vae, "sdpa") == 2 and all(type(m.processor) is AttnProcessor2_0 for m in attn)
    g_sdpa = torch.autograd.grad(vae.encode(xg).latent_dist.mean.square().sum(), xg)[0]
    assert (g_chunked - g_sdpa).abs().max().item() < 1e-5 * max(1.0, g_sdpa.abs().max().item())
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, ref_dec)                      # back to diffusers' processor
    with pytest.raises(ValueError, match="mask"):
        ChunkedAttnProcessor()(attn[0], torch.randn(1, 16, 2, 2), attention_mask=torch.zeros(1, 4, 4))


def test_optimize_backbone_switches_and_records_the_vae_attention():
    img = torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = Restorer(tiny_backbone(), adapter=None).restore(img, seed=3)
    bb = tiny_backbone()
    optimize_backbone(bb, vae_attention="chunked")
    assert bb.fast_paths["vae_attention"] == "chunked" and vae_attention_kind(bb.vae) == "chunked"
    assert "channels_last" not in bb.fast_paths and "compile_vae" not in bb.fast_paths   # nothing else switched
    out = Restorer(bb, adapter=None).restore(img, seed=3)
    assert (out - ref).abs().max().item() < 1e-5
    r = Restorer(tiny_backbone(), adapter=None, vae_attention="chunked")
    assert r.backbone.fast_paths["vae_attention"] == "chunked" and vae_attention_kind(r.backbone.vae) == "chunked"
    optimize_backbone(bb, vae_attention="sdpa")
    assert bb.fast_paths["vae_attention"] == "sdpa" and vae_attention_kind(bb.vae) == "sdpa"


def test_a_bad_kind_names_the_accepted_ones():
    assert VAE_ATTENTION_KINDS == ("sdpa", "chunked")
    with pytest.raises(ValueError, match="'flash'.*sdpa, chunked"):
        set_vae_attention(_vae(), "flash")
    bb = tiny_backbone()
    with pytest.raises(ValueError, match="sdpa, chunked"):
        optimize_backbone(bb, vae_attention="xformers")
    assert "vae_attention" not in bb.fast_paths and vae_attention_kind(bb.vae) == "sdpa"

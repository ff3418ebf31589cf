"""The compact ``.nifigs`` version 2 (still written and read next to version 3): exact round trips, re-encoding,
corrupt files, version 1 still read, rate, QAT."""
from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from nifi_lib.errors import NifiError
from nifi_lib.gs.model import GaussianModel
from nifi_lib.synthesis import codec, compact
from nifi_lib.synthesis import quantize as qz

from test_synthesis_codec import realistic_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V2 = compact.v2_settings()
SMALL = replace(V2, codebook_size=64)


def _bits_equal(a: GaussianModel, b: GaussianModel) -> None:
    for name, t in a.tensors().items():
        u = b.tensors()[name]
        assert u.dtype == torch.float32 and u.shape == t.shape, name
        assert torch.equal(u.contiguous().view(torch.int32), t.contiguous().view(torch.int32)), name


def _rows(m: GaussianModel) -> np.ndarray:
    """Attributes as rows sorted lexicographically (order-free comparison)."""
    n = m.num_gaussians
    x = torch.cat([m.means, m.log_scales, m.quats, m.opacity_logits[:, None], m.sh_dc, m.sh_rest.reshape(n, -1)], 1)
    x = x.detach().numpy()
    return x[np.lexsort(x.T[::-1])]


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_v2_round_trip_is_bit_exact_and_reencoding_gives_the_same_bytes(tmp_path, degree):
    m = realistic_model(2000, degree=degree)
    path = tmp_path / "level_0.nifigs"
    stats = codec.write_level(m, path, version=2, settings=SMALL)
    data = path.read_bytes()
    assert data[:8] == b"NIFIGS" + struct.pack("<H", 2) and stats.bytes == len(data) and stats.codec_version == 2
    expect = compact.quantize_compact(m.tensors(), degree, SMALL)
    assert codec.read_compact(path) == expect                          # the integers, exactly
    decoded = codec.read_level(path)
    _bits_equal(compact.dequantize_compact(expect), decoded)           # the floats, bit for bit
    assert decoded.num_gaussians == 2000 and decoded.sh_degree == degree
    assert codec.encode_compact(expect) == data                        # deterministic encoder
    again = tmp_path / "again.nifigs"
    codec.write_level(decoded, again, version=2, settings=SMALL)       # decode -> encode is a fixed point
    assert again.read_bytes() == data
    assert sum(stats.breakdown.values()) == stats.bytes
    assert set(stats.breakdown) == {"header", *codec.SECTIONS}
    q = decoded.quats.numpy().astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=2e-6)
    assert (q[:, 0] >= 0).all()


def test_v2_keeps_the_rotation_and_the_geometry_close(tmp_path):
    m = realistic_model(3000, degree=1)
    codec.write_level(m, tmp_path / "l.nifigs", version=2, settings=V2)
    d = codec.read_level(tmp_path / "l.nifigs")
    # compare in the file's (Morton) order
    st = V2
    bits = st.position_bits
    c = compact.quantize_compact(m.tensors(), 1, st)
    order = np.argsort(compact.morton_keys(compact.grid_quantize(m.means.numpy(), c.lo[:3], c.hi[:3], 1 << bits),
                                           bits), kind="stable")
    ref = m.subset(torch.from_numpy(order))
    span = (m.means.max(0).values - m.means.min(0).values)
    assert ((d.means - ref.means).abs() <= span / ((1 << bits) - 1) * 0.51 + 1e-6).all()
    qa = torch.nn.functional.normalize(ref.quats, dim=1)
    dots = (qa * d.quats).sum(1).abs()
    assert (dots > 0.9).all() and dots.mean() > 0.99                   # 5-bit rotations: ~8 degrees on average


def test_v2_tiny_levels_and_degree_reduction(tmp_path):
    for n, degree in ((1, 0), (1, 1), (7, 2), (64, 0), (64, 1)):
        m = realistic_model(n, degree=degree, seed=n)
        path = tmp_path / f"n{n}_{degree}.nifigs"
        codec.write_level(m, path, version=2, settings=V2)
        assert codec.read_compact(path) == compact.quantize_compact(m.tensors(), degree, V2)
        assert codec.read_level(path).num_gaussians == n
    m = realistic_model(500, degree=3)
    path = tmp_path / "reduced.nifigs"
    codec.write_level(m, path, version=2, settings=replace(SMALL, rest_degree=1))
    d = codec.read_level(path)
    assert d.sh_degree == 1 and codec.read_compact(path).codebook.shape[1] == 9


def test_v2_bytes_per_gaussian_within_the_budget(tmp_path):
    m = realistic_model(6000, degree=3)
    plan = codec.plan_level(m, V2, 12.0)
    stats = codec.write_level(m, tmp_path / "l.nifigs", version=2, settings=plan, budget_bytes_per_gaussian=12.0)
    assert stats.bytes_per_gaussian <= 12.0
    assert stats.bytes < 0.25 * stats.raw_8bit_bytes                 # 59 B raw 8-bit per Gaussian
    d = stats.to_dict()
    assert d["codec_version"] == 2 and d["bytes_per_gaussian"] == stats.bytes / 6000 and d["codec_settings"]
    # a smooth (realistic) scene: positions on a surface, SH rest from few materials
    g = torch.Generator().manual_seed(0)
    n = 8000
    uv = torch.rand(n, 2, generator=g)
    means = torch.stack([uv[:, 0], uv[:, 1], 0.1 * torch.sin(6 * uv[:, 0])], 1)
    mats = 0.05 * torch.randn(32, 15, 3, generator=g)
    mat = torch.randint(0, 32, (n,), generator=g)
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.2 * torch.randn(n, 4, generator=g)
    smooth = GaussianModel(means, -4.0 + 0.3 * torch.randn(n, 3, generator=g), quats,
                           3.0 + torch.randn(n, generator=g), 0.3 * torch.randn(32, 3, generator=g)[mat],
                           mats[mat] + 0.002 * torch.randn(n, 15, 3, generator=g))
    plan = codec.plan_level(smooth, V2, 12.0)
    stats = codec.write_level(smooth, tmp_path / "s.nifigs", version=2, settings=plan, budget_bytes_per_gaussian=12.0)
    assert stats.bytes_per_gaussian <= 12.0 and stats.codec_settings["rest_degree"] >= 1


def test_v2_corrupt_truncated_and_unknown_versions_raise(tmp_path):
    m = realistic_model(800, degree=1)
    path = tmp_path / "level_1.nifigs"
    codec.write_level(m, path, version=2, settings=SMALL)
    data = path.read_bytes()
    cases = {
        "flip.nifigs": data[:300] + bytes([data[300] ^ 0x5A]) + data[301:],
        "trunc.nifigs": data[: len(data) // 2],
        "short.nifigs": data[:50],
        "four.nifigs": data[:4],
        "magic.nifigs": b"PLYXXX" + data[6:],
        "version.nifigs": data[:6] + struct.pack("<H", 4) + data[8:],
        "as_v3.nifigs": data[:6] + struct.pack("<H", 3) + data[8:],
        "version0.nifigs": data[:6] + struct.pack("<H", 0) + data[8:],
        "tail.nifigs": data + b"\0",
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(codec.BitstreamError) as e:
            codec.read_level(p)
        assert isinstance(e.value, NifiError) and str(p) in str(e.value), name
    # forged: a damaged section with a recomputed checksum is caught or decodes to other content, never silently
    rng = np.random.default_rng(0)
    for at in rng.integers(100, len(data) - 4, 40):
        body = bytearray(data[:-4])
        body[at] ^= 0xFF
        forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)) & 0xFFFFFFFF)
        try:
            assert codec.decode_compact(forged, "forged") != codec.decode_compact(data)
        except codec.BitstreamError as e:
            assert "forged" in str(e)
    with pytest.raises(codec.BitstreamError, match="version-2"):
        codec.decode_quantized(data, "x")                             # the v1 parser names the other version
    with pytest.raises(codec.BitstreamError, match="cannot write bitstream version 7"):
        codec.write_level(m, tmp_path / "v7.nifigs", version=7)


def test_version_1_files_still_decode(tmp_path):
    """A v1 file written by the v1 writer (here, not a binary in git) decodes through the same reader."""
    m = realistic_model(1500, degree=3)
    path = tmp_path / "old.nifigs"
    stats = codec.write_level(m, path, version=1)
    assert path.read_bytes()[6:8] == struct.pack("<H", 1) and stats.codec_version == 1
    _bits_equal(qz.dequantize(qz.quantize(m)), codec.read_level(path))
    assert codec.file_version(path.read_bytes()) == 1
    assert codec.read_quantized(path) == qz.quantize(m)


def test_bit_packing_and_morton_keys_round_trip():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 1 << 16, (3000, 3)).astype(np.uint32)
    keys = compact.morton_keys(codes, 16)
    np.testing.assert_array_equal(compact.morton_decode(keys, 16), codes)
    keys = np.sort(keys)
    e, mant, lengths = compact.split_key_gaps(keys)
    blob = compact.pack_bits(mant, lengths)
    assert len(blob) == compact.mantissa_bytes(lengths)
    back = compact.unpack_bits(blob, lengths)
    np.testing.assert_array_equal(back, mant)
    gaps = np.where(e > 0, np.left_shift(np.uint64(1), lengths.astype(np.uint64)), 0).astype(np.uint64) + back
    np.testing.assert_array_equal(np.cumsum(gaps, dtype=np.uint64), keys)
    np.testing.assert_array_equal(compact.bit_lengths(np.array([0, 1, 2, 3, 4, 2 ** 47, 2 ** 48 - 1], np.uint64)),
                                  [0, 1, 2, 2, 3, 48, 48])


def test_kmeans_codebook_is_deterministic_and_canonical():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 9)).astype(np.float32)
    a = compact.build_codebook(x, 32, 8, 1000, 0)
    b = compact.build_codebook(x, 32, 8, 1000, 0)
    assert np.array_equal(a[0].view(np.uint16), b[0].view(np.uint16)) and np.array_equal(a[1], b[1])
    bits = a[0].view(np.uint16)
    assert len(np.unique(bits, axis=0)) == len(bits) == len(np.unique(a[1]))   # unique and all used
    assert (np.lexsort(bits.T[::-1]) == np.arange(len(bits))).all()             # sorted


def test_straight_through_forward_equals_the_decoded_file(tmp_path):
    m = realistic_model(1200, degree=2)
    ste = compact.StraightThrough(SMALL, m.sh_degree, learn_codebook=False)   # version 2's fine-tuning
    params = m.clone().requires_grad_(True)
    out = ste(params)
    codec.write_level(m, tmp_path / "l.nifigs", version=2, settings=SMALL)
    np.testing.assert_array_equal(_rows(out.detach()), _rows(codec.read_level(tmp_path / "l.nifigs")))
    loss = sum(t.sum() for t in out.tensors().values())
    loss.backward()
    assert torch.equal(params.sh_dc.grad, torch.ones_like(params.sh_dc))        # identity gradient
    assert torch.equal(params.opacity_logits.grad, torch.ones_like(params.opacity_logits))


def test_quantization_aware_finetuning_brings_the_decoded_level_closer_to_the_float_level(tmp_path):
    from nifi_lib.gs.render import render
    from nifi_lib.synthesis.finetune import finetune
    from nifi_lib.synthesis.toy import ring_cameras, toy_model

    target = toy_model(120, sh_degree=1, seed=5)
    cams = ring_cameras(4, size=24)
    with torch.no_grad():
        images = torch.stack([render(target, c, backend="torch").image for c in cams])
    start = toy_model(120, sh_degree=1, seed=5)
    start.log_scales += 0.05 * torch.randn(120, 3, generator=torch.Generator().manual_seed(1))
    coarse = compact.v2_settings(opacity_bits=3, scale_bits=3, rotation_bits=4, dc_bits=4, codebook_size=8)

    def gap(qat: bool) -> float:
        quant = compact.StraightThrough(coarse, 1, learn_codebook=False) if qat else None
        tuned, _ = finetune(start, cams, images, 25, backend="torch", progress=False, quantizer=quant)
        codec.write_level(tuned, tmp_path / "q.nifigs", version=2, settings=coarse)
        dec = codec.read_level(tmp_path / "q.nifigs")
        with torch.no_grad():
            err = [((render(dec, c, backend="torch").image - img) ** 2).mean() for c, img in zip(cams, images)]
        return float(torch.stack(err).mean())

    assert gap(True) < gap(False)

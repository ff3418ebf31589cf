"""The compact ``.nifigs`` version 3 (8-bit SH-rest codebook, smallest-three rotations): exact round trips,
re-encoding byte for byte, corrupt files, the budget, QAT, and versions 1 and 2 still read beside it."""
from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from nifi_lib.errors import NifiError
from nifi_lib.synthesis import codec, compact
from nifi_lib.synthesis import quantize as qz

from test_synthesis_codec import realistic_model
from test_synthesis_codec_v2 import _bits_equal, _rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V3 = compact.CompactSettings()            # the default layout
SMALL = replace(V3, codebook_size=64)


def test_the_default_layout_is_version_3():
    assert V3.version == 3 and codec.VERSION == 3 and codec.VERSIONS == (1, 2, 3)


@pytest.mark.parametrize("degree,bits,rows", [(0, 8, 64), (1, 8, 64), (3, 8, 64), (3, 5, 64), (1, 5, 384)])
def test_v3_round_trip_is_bit_exact_and_reencoding_gives_the_same_bytes(tmp_path, degree, bits, rows):
    s = replace(SMALL, codebook_bits=bits, codebook_size=rows)   # 384 rows: two index channels
    m = realistic_model(2000, degree=degree)
    path = tmp_path / "level_0.nifigs"
    stats = codec.write_level(m, path, version=3, settings=s)
    data = path.read_bytes()
    assert data[:8] == b"NIFIGS" + struct.pack("<H", 3) and stats.bytes == len(data) and stats.codec_version == 3
    expect = compact.quantize_compact(m.tensors(), degree, s)
    assert expect.version == 3 and codec.read_compact(path) == expect  # the integers, exactly
    decoded = codec.read_level(path)
    _bits_equal(compact.dequantize_compact(expect), decoded)           # the floats, bit for bit
    assert decoded.num_gaussians == 2000 and decoded.sh_degree == degree
    assert codec.encode_compact(expect) == data                        # deterministic encoder
    again = tmp_path / "again.nifigs"
    codec.write_level(decoded, again, version=3, settings=s)           # decode -> encode is a fixed point
    assert again.read_bytes() == data
    assert codec.read_level(again).num_gaussians == 2000
    assert sum(stats.breakdown.values()) == stats.bytes and set(stats.breakdown) == {"header", *codec.SECTIONS}
    q = decoded.quats.numpy().astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=2e-6)
    assert (q[:, 0] >= 0).all()
    if degree:
        book = codec.read_compact(path)
        # canonical codebook: unique, used, sorted rows; every varying column spans codes 0 .. 2^b - 1
        assert book.codebook.dtype == np.uint8 and book.codebook_bits == bits
        assert len(book.codebook) > 256 if rows > 256 else len(book.codebook) <= rows
        assert len(np.unique(book.codebook, axis=0)) == len(book.codebook) == len(np.unique(book.indices))
        assert (np.lexsort(book.codebook.T[::-1]) == np.arange(len(book.codebook))).all()
        vary = book.book_hi > book.book_lo
        assert (book.codebook.min(0)[vary] == 0).all() and (book.codebook.max(0)[vary] == (1 << bits) - 1).all()
        vals = book.codebook_values()
        assert np.array_equal(vals.min(0).view(np.uint32), book.book_lo.view(np.uint32))
        assert np.array_equal(vals.max(0).view(np.uint32), book.book_hi.view(np.uint32))


@pytest.mark.parametrize("bits", [8, 5])
def test_v3_codebook_is_a_fraction_of_the_float16_one(tmp_path, bits):
    m = realistic_model(3000, degree=3)
    s2 = codec.write_level(m, tmp_path / "a.nifigs", version=2, settings=SMALL)
    s3 = codec.write_level(m, tmp_path / "b.nifigs", version=3, settings=replace(SMALL, codebook_bits=bits))
    rows2 = len(codec.read_compact(tmp_path / "a.nifigs").codebook)
    rows3 = len(codec.read_compact(tmp_path / "b.nifigs").codebook)
    assert rows2 == rows3 == 64
    book2, book3 = rows2 * 45 * 2, (rows3 * 45 * bits + 7) // 8 + 8 * 45
    assert s2.breakdown["sh_rest"] - s3.breakdown["sh_rest"] == pytest.approx(book2 - book3, abs=64)


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.degrees(2 * np.arccos(np.clip(np.abs((a.astype(np.float64) * b).sum(1)), 0, 1)))


def test_smallest_three_rotations_are_finer_and_a_fixed_point():
    g = torch.Generator().manual_seed(4)
    q = torch.nn.functional.normalize(torch.randn(20000, 4, generator=g), dim=1).numpy()
    special = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, -1],
                        [np.sqrt(0.5), np.sqrt(0.5), 0, 0], [0, -np.sqrt(0.5), np.sqrt(0.5), 0], [-1, 0, 0, 0],
                        [0.6, 0.6, 0.52915026, 0], [0, 0, 0, 0]], np.float32)
    q = np.concatenate([q, special]).astype(np.float32)
    for bits in (4, 5, 6):
        codes = compact.quantize_rotation_s3(q, bits)
        assert codes.shape == (len(q), 4) and codes[:, 0].max() <= 3 and codes[:, 1:].max() < (1 << bits) - 1
        d = compact.dequantize_rotation_s3(codes, bits)
        np.testing.assert_allclose(np.linalg.norm(d.astype(np.float64), axis=1), 1.0, atol=2e-6)
        assert (d[:, 0] >= 0).all()
        assert np.array_equal(compact.quantize_rotation_s3(d, bits), codes)   # decode -> encode is a fixed point
        old = compact.dequantize_rotation(compact.quantize_rotation(q, bits), bits)
        err3, err2 = _angles(q[:-1], d[:-1]), _angles(q[:-1], old[:-1])
        assert err3.mean() < 0.6 * err2.mean() and err3.max() < err2.max()   # about half the error at the same bits
    np.testing.assert_array_equal(compact.dequantize_rotation_s3(compact.quantize_rotation_s3(q[-1:], 5), 5),
                                  [[1, 0, 0, 0]])                              # zero-length: the identity


def test_v3_tiny_and_empty_levels(tmp_path):
    for n, degree in ((1, 0), (1, 1), (7, 2), (64, 0), (64, 1)):
        m = realistic_model(n, degree=degree, seed=n)
        path = tmp_path / f"n{n}_{degree}.nifigs"
        codec.write_level(m, path, version=3)
        assert codec.read_compact(path) == compact.quantize_compact(m.tensors(), degree, V3)
        d = codec.read_level(path)
        assert d.num_gaussians == n
        codec.write_level(d, tmp_path / "again.nifigs", version=3)
        assert (tmp_path / "again.nifigs").read_bytes() == path.read_bytes()


def test_v3_bytes_per_gaussian_within_the_budget(tmp_path):
    m = realistic_model(6000, degree=3)
    plan = codec.plan_level(m, V3, 12.0)
    assert plan.version == 3
    stats = codec.write_level(m, tmp_path / "l.nifigs", version=3, settings=plan, budget_bytes_per_gaussian=12.0)
    assert stats.bytes_per_gaussian <= 12.0 and stats.codec_version == 3
    assert stats.codec_settings["version"] == 3 and stats.codec_settings["codebook_bits"] == V3.codebook_bits
    # the planner counts the quantized codebook: at least as many rows as version 2 under the same budget
    plan2 = codec.plan_level(m, replace(V3, version=2), 12.0)
    assert (plan.rest_degree, plan.codebook_size) >= (plan2.rest_degree, plan2.codebook_size)


def test_v3_corrupt_truncated_and_unknown_versions_raise(tmp_path):
    m = realistic_model(800, degree=1)
    path = tmp_path / "level_1.nifigs"
    codec.write_level(m, path, version=3, settings=SMALL)
    data = path.read_bytes()
    cases = {
        "flip.nifigs": data[:300] + bytes([data[300] ^ 0x5A]) + data[301:],
        "trunc.nifigs": data[: len(data) // 2],
        "short.nifigs": data[:50],
        "four.nifigs": data[:4],
        "magic.nifigs": b"PLYXXX" + data[6:],
        "version.nifigs": data[:6] + struct.pack("<H", 4) + data[8:],
        "as_v2.nifigs": data[:6] + struct.pack("<H", 2) + data[8:],
        "tail.nifigs": data + b"\0",
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(codec.BitstreamError) as e:
            codec.read_level(p)
        assert isinstance(e.value, NifiError) and str(p) in str(e.value), name

    def forge(body: bytes | bytearray) -> bytes:
        return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)) & 0xFFFFFFFF)

    # forged: a damaged byte with a recomputed checksum is caught or decodes to other content, never silently
    rng = np.random.default_rng(0)
    for at in rng.integers(8, len(data) - 4, 60):
        body = bytearray(data[:-4])
        body[at] ^= 0xFF
        try:
            assert codec.decode_compact(forge(body), "forged") != codec.decode_compact(data)
        except codec.BitstreamError as e:
            assert "forged" in str(e)
    # header fields out of range, with a valid checksum
    head = codec._HEAD3
    fields = list(head.unpack_from(data, 0))
    for i, bad in ((10, 0), (10, 9), (7, 1), (9, 0)):    # codebook bits 0 / 9, rotation bits 1, codebook rows 0
        f = list(fields)
        f[i] = bad
        with pytest.raises(codec.BitstreamError, match="forged.*inconsistent"):
            codec.decode_compact(forge(head.pack(*f) + data[head.size:-4]), "forged")
    with pytest.raises(codec.BitstreamError, match="version-3"):
        codec.decode_quantized(data, "x")                                # the v1 parser names the other version


def test_every_version_still_decodes_through_the_same_reader(tmp_path):
    m = realistic_model(1500, degree=3)
    for v in (1, 2, 3):
        path = tmp_path / f"v{v}.nifigs"
        stats = codec.write_level(m, path, version=v, settings=SMALL if v > 1 else None)
        data = path.read_bytes()
        assert codec.file_version(data) == v == stats.codec_version
        d = codec.read_level(path)
        assert d.num_gaussians == 1500 and d.sh_degree == 3
        if v == 1:
            _bits_equal(qz.dequantize(qz.quantize(m)), d)
        else:
            _bits_equal(compact.dequantize_compact(compact.quantize_compact(m.tensors(), 3, replace(SMALL, version=v))),
                        d)
    with pytest.raises(codec.BitstreamError, match="cannot write bitstream version 4"):
        codec.write_level(m, tmp_path / "v4.nifigs", version=4)


def test_v3_learned_codebook_forward_equals_the_decoded_file(tmp_path):
    m = realistic_model(1200, degree=2)
    ste = compact.StraightThrough(SMALL, m.sh_degree)
    assert ste.learn_codebook and ste.codebook_gain == 20.0
    params = m.clone().requires_grad_(True)
    out = ste(params)
    loss = (out.sh_rest * torch.linspace(-1, 1, out.sh_rest.numel()).reshape(out.sh_rest.shape)).sum()
    loss = loss + sum(t.sum() for name, t in out.tensors().items() if name != "sh_rest")
    loss.backward()
    assert torch.equal(params.sh_dc.grad, torch.ones_like(params.sh_dc))        # identity gradient
    # the SH rest's gradient goes to the rows: the members of a row get the same gradient
    assign = torch.from_numpy(ste._assign)
    g = params.sh_rest.grad.reshape(1200, -1)
    for j in range(3):
        members = g[assign == j]
        assert len(members) and torch.allclose(members, members[:1].expand_as(members)) and members.abs().sum() > 0
    # finalize puts every Gaussian on its row: the file of the snapped model decodes to the forward pass exactly
    snapped = ste.finalize(params.detach())
    assert len(np.unique(snapped.sh_rest.reshape(1200, -1).numpy(), axis=0)) <= 64
    codec.write_level(snapped, tmp_path / "l.nifigs", version=3, settings=SMALL)
    np.testing.assert_array_equal(_rows(out.detach()), _rows(codec.read_level(tmp_path / "l.nifigs")))
    # the version-2 path (k-means refits) still equals the file of the unsnapped model
    old = compact.StraightThrough(SMALL, m.sh_degree, learn_codebook=False)
    out = old(m.clone())
    codec.write_level(m, tmp_path / "k.nifigs", version=3, settings=SMALL)
    np.testing.assert_array_equal(_rows(out.detach()), _rows(codec.read_level(tmp_path / "k.nifigs")))
    for _ in range(12):                                                          # refits / reassignments run
        old(m)


def test_v3_quantization_aware_finetuning_brings_the_decoded_level_closer(tmp_path):
    from nifi_lib.gs.render import render
    from nifi_lib.synthesis.finetune import finetune
    from nifi_lib.synthesis.toy import ring_cameras, toy_model

    target = toy_model(120, sh_degree=1, seed=5)
    cams = ring_cameras(4, size=24)
    with torch.no_grad():
        images = torch.stack([render(target, c, backend="torch").image for c in cams])
    start = toy_model(120, sh_degree=1, seed=5)
    start.log_scales += 0.05 * torch.randn(120, 3, generator=torch.Generator().manual_seed(1))
    start.sh_rest += 0.3 * torch.randn(start.sh_rest.shape, generator=torch.Generator().manual_seed(2))
    coarse = compact.CompactSettings(opacity_bits=3, scale_bits=3, rotation_bits=4, dc_bits=4, codebook_size=4)

    def gap(qat: bool) -> float:
        quant = compact.StraightThrough(coarse, 1) if qat else None
        tuned, _ = finetune(start, cams, images, 25, backend="torch", progress=False, quantizer=quant)
        codec.write_level(tuned, tmp_path / "q.nifigs", version=3, settings=coarse)
        dec = codec.read_level(tmp_path / "q.nifigs")
        with torch.no_grad():
            err = [((render(dec, c, backend="torch").image - img) ** 2).mean() for c, img in zip(cams, images)]
        return float(torch.stack(err).mean())

    assert gap(True) < gap(False)

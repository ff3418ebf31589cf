"""The ``.nifigs`` bitstream: one file per pruned level (8-bit quantization + range coding, Sec. 3).

Layout (all integers little-endian)::

    offset  size        field
    0       6           magic b"NIFIGS"
    6       2           version (uint16) = 1
    8       4           N, number of Gaussians (uint32)
    12      1           SH degree d (uint8)
    13      2           C, number of channels (uint16) = 14 + 3 * ((d + 1)^2 - 1)
    15      1           r, resolution of the frequency tables (uint8, steps per doubling of a count)
    16      1           w, bin width of the frequency tables (uint8, codes per table entry)
    17      ceil(C/8)   predictor bitmask: bit c (LSB first) set = channel c is coded as differences to the
                        previous primitive mod 256 (``entropy.predict``), else directly
    ..      4 * C       lo per channel (float32)
    ..      4 * C       hi per channel (float32)
    ..      4           T, byte length of the frequency tables (uint32)
    ..      T           frequency tables: zlib(delta(log2 count table)), C x (256 / w) (``entropy.pack_table``)
    ..      4           P, byte length of the payload (uint32)
    ..      P           range-coded payload (uint32 words, ``entropy.encode_codes``)
    ..      4           CRC-32 of every byte before it (uint32)

Channel order and the exact dequantization rule are in :mod:`nifi_lib.synthesis.quantize`. The codec keeps
the order of the primitives; the pipeline stores every level in Morton order of its quantized means
(``quantize.morton_order``; rendering does not depend on the order), which makes the per-channel
difference predictor pay off. The rate of
a level is the size of its file on disk. A decoder restores the 8-bit codes exactly, so
``decode_level(path)`` equals ``dequantize(quantize(model))`` bit for bit.
"""
from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import NifiError
from ..io.atomic import atomic_write_bytes
from . import entropy
from .quantize import QuantizedScene, dequantize, quantize, sh_rest_coeffs

MAGIC = b"NIFIGS"
VERSION = 1
_HEAD = struct.Struct("<6sHIBHBB")
MAX_SH_DEGREE = 4


class BitstreamError(NifiError, ValueError):
    """A ``.nifigs`` file is corrupt, truncated or of an unknown version."""


@dataclass
class CodecStats:
    """Sizes of one coded level (bytes); ``bytes`` is the size of the file on disk."""

    num_gaussians: int
    num_channels: int
    bytes: int
    header_bytes: int
    table_bytes: int
    payload_bytes: int
    raw_8bit_bytes: int
    zlib_bytes: int
    lzma_bytes: int
    entropy_bound_bytes: float

    @property
    def mb(self) -> float:
        return self.bytes / 1e6

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mb"] = self.mb
        return d


def encode_quantized(q: QuantizedScene) -> bytes:
    """Serialise quantized codes into the ``.nifigs`` byte layout (module docstring)."""
    if not 0 <= q.sh_degree <= MAX_SH_DEGREE:
        raise BitstreamError(f"SH degree {q.sh_degree} is not supported (0..{MAX_SH_DEGREE})")
    c = q.num_channels
    if c != 14 + 3 * sh_rest_coeffs(q.sh_degree):
        raise BitstreamError(f"{c} channels do not match SH degree {q.sh_degree}")
    delta = entropy.choose_predictors(q.codes)
    width, resolution, table, words = entropy.encode_codes(entropy.predict(q.codes, delta))
    tables = entropy.pack_table(table)
    payload = words.astype("<u4").tobytes()
    body = b"".join([
        _HEAD.pack(MAGIC, VERSION, q.num_gaussians, q.sh_degree, c, resolution, width),
        np.packbits(delta.astype(np.uint8), bitorder="little").tobytes(),
        q.lo.astype("<f4").tobytes(), q.hi.astype("<f4").tobytes(),
        struct.pack("<I", len(tables)), tables,
        struct.pack("<I", len(payload)), payload,
    ])
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def decode_quantized(data: bytes, source: str = "<bytes>") -> QuantizedScene:
    """Parse and entropy-decode ``.nifigs`` bytes; every defect raises :class:`BitstreamError` naming ``source``."""
    def fail(msg: str) -> BitstreamError:
        return BitstreamError(f"{source}: {msg}")

    if len(data) < _HEAD.size + 4:
        raise fail(f"truncated: {len(data)} bytes is shorter than the {_HEAD.size + 4}-byte minimum")
    magic, version, n, degree, c, resolution, width = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise fail(f"not a .nifigs bitstream (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise fail(f"unsupported bitstream version {version} (this reader knows version {VERSION})")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != crc:
        raise fail("checksum mismatch: the file is corrupt or truncated")
    if degree > MAX_SH_DEGREE or c != 14 + 3 * sh_rest_coeffs(degree):
        raise fail(f"header is inconsistent (SH degree {degree}, {c} channels)")
    pos = _HEAD.size
    end = len(data) - 4

    def take(k: int, what: str) -> bytes:
        nonlocal pos
        if pos + k > end:
            raise fail(f"truncated inside the {what} ({end - pos} bytes left, {k} needed)")
        out = data[pos:pos + k]
        pos += k
        return out

    nmask = (c + 7) // 8
    delta = np.unpackbits(np.frombuffer(take(nmask, "predictor bitmask"), dtype=np.uint8), bitorder="little")[:c]
    lo = np.frombuffer(take(4 * c, "min side info"), dtype="<f4").astype(np.float32)
    hi = np.frombuffer(take(4 * c, "max side info"), dtype="<f4").astype(np.float32)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
        raise fail("min/max side info is not finite or not ordered")
    (tlen,) = struct.unpack("<I", take(4, "table length"))
    tables = take(tlen, "frequency tables")
    (plen,) = struct.unpack("<I", take(4, "payload length"))
    if plen % 4:
        raise fail(f"payload length {plen} is not a multiple of 4")
    payload = take(plen, "payload")
    if pos != end:
        raise fail(f"{end - pos} unexpected bytes after the payload")
    try:
        if width not in entropy.BIN_WIDTHS or resolution not in entropy.TABLE_RESOLUTIONS:
            raise entropy.EntropyCodingError(f"unknown table layout (bin width {width}, resolution {resolution})")
        table = entropy.unpack_table(tables, c, width)
        res = entropy.decode_codes(np.frombuffer(payload, dtype="<u4").astype(np.uint32), table, n, width, resolution)
        codes = entropy.unpredict(res, delta.astype(bool))
    except entropy.EntropyCodingError as e:
        raise fail(str(e)) from e
    return QuantizedScene(codes=codes, lo=lo, hi=hi, sh_degree=int(degree))


def baseline_sizes(q: QuantizedScene) -> dict[str, int]:
    """Sanity baselines on the same raw 8-bit bytes: raw, zlib (level 9), lzma (preset 9)."""
    raw = q.raw_bytes()
    return {"raw_8bit_bytes": len(raw), "zlib_bytes": len(zlib.compress(raw, 9)),
            "lzma_bytes": len(lzma.compress(raw, preset=9))}


def write_level(model, path: str | Path) -> CodecStats:
    """Quantize + entropy-code ``model`` into ``path`` (atomic write); return sizes measured on disk."""
    return write_quantized(quantize(model), path)


def write_quantized(q: QuantizedScene, path: str | Path) -> CodecStats:
    path = Path(path)
    data = encode_quantized(q)
    atomic_write_bytes(path, data)
    on_disk = path.stat().st_size
    side = _HEAD.size + (q.num_channels + 7) // 8 + 8 * q.num_channels  # fixed fields, bitmask, min/max
    head = side + 4 + 4 + 4  # + two lengths + CRC
    (tlen,) = struct.unpack_from("<I", data, side)
    base = baseline_sizes(q)
    return CodecStats(num_gaussians=q.num_gaussians, num_channels=q.num_channels, bytes=on_disk,
                      header_bytes=head, table_bytes=tlen, payload_bytes=on_disk - head - tlen,
                      entropy_bound_bytes=entropy.empirical_entropy_bits(q.codes) / 8.0, **base)


def read_quantized(path: str | Path) -> QuantizedScene:
    path = Path(path)
    if not path.is_file():
        raise BitstreamError(f"{path}: bitstream file not found")
    return decode_quantized(path.read_bytes(), source=str(path))


def read_level(path: str | Path):
    """Decode a ``.nifigs`` file into the dequantized ``GaussianModel``."""
    return dequantize(read_quantized(path))

"""The ``.nifigs`` bitstream: one file per pruned level (quantization + range coding, Sec. 3).

Three versions, told apart by the uint16 after the magic; :func:`read_level` decodes all of them,
:func:`write_level` writes any (``version=3`` is what the pipeline writes by default).

Version 3 is version 2 with three changes (attribute content in :mod:`nifi_lib.synthesis.compact`)::

    offset  size        field
    0..19               as version 2, with version (uint16) = 3
    20      1           b_k, bits per SH-rest codebook coefficient (uint8, 1..8)
    21      40          lo (float32 x 10), as version 2
    61      40          hi (float32 x 10)
    101     ...         the six sections, as version 2, except:
                        rotation: entropy block of 4 channels (index of the largest component 0..3, then the
                          codes of the other three in order, on 2^b_r - 1 levels over [-1/sqrt(2), 1/sqrt(2)])
                        SH rest: (K > 0 only) column lo (float32 x D), column hi (float32 x D), the K x D codebook
                          codes at b_k bits each, row-major, MSB first, zero-padded to a byte (D = 3((d'+1)^2-1));
                          then the entropy block of the row indices, as version 2
    ..      4           CRC-32 of every byte before it (uint32)

Version 2 (compact; attribute content and exact dequantization in :mod:`nifi_lib.synthesis.compact`;
all integers little-endian)::

    offset  size        field
    0       6           magic b"NIFIGS"
    6       2           version (uint16) = 2
    8       4           N, number of Gaussians (uint32)
    12      1           d', SH degree of the decoded model (uint8, 0..4)
    13      1           b_p, position bits per axis (uint8, 1..21)
    14      1           b_o, opacity bits (1..8)
    15      1           b_s, log-scale bits (1..8)
    16      1           b_r, rotation bits (2..8; 2^b_r - 1 levels)
    17      1           b_c, SH DC bits (1..8)
    18      2           K, SH-rest codebook rows (uint16; 0 iff d' = 0 or N = 0)
    20      40          lo (float32 x 10): positions x y z, opacity, log-scales x y z, SH DC r g b
    60      40          hi (float32 x 10), same order
    100     4 + P       positions section: uint32 byte length P, then
                          uint32 E, an entropy block of E bytes with the bit lengths e of the Morton-key gaps
                          (sorted keys of the 3 b_p-bit position codes, first gap to 0), then the gaps' mantissas,
                          e - 1 raw bits each, MSB first, zero-padded to a byte
    ..      4 + P       opacity section: length, entropy block of 1 channel
    ..      4 + P       scale section: length, entropy block of 3 channels
    ..      4 + P       rotation section: length, entropy block of 3 channels (x, y, z)
    ..      4 + P       SH DC section: length, entropy block of 3 channels
    ..      4 + P       SH rest section: length, codebook (K x 3((d'+1)^2-1) float16, row-major), then an entropy
                        block of the row indices: 1 channel (K <= 256) or 2 (low byte, high byte)
    ..      4           CRC-32 of every byte before it (uint32)

An entropy block codes ``C`` uint8 channels of N symbols with the static per-channel models of
:mod:`nifi_lib.synthesis.entropy`: bin width w (uint8), table resolution r (uint8), the predictor bitmask
(ceil(C/8) bytes, as in version 1), uint16 T, T bytes of packed frequency tables, then the range-coded
payload (uint32 words) to the end of the block. The primitives of a version-2 file are in Morton order;
the decoded level is a pure function of the bytes, and re-encoding it gives the same file.

Version 1 (per-channel 8-bit, kept readable and writable)::

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import NifiError
from ..io.atomic import atomic_write_bytes
from . import entropy
from . import compact
from .compact import CompactScene, CompactSettings
from .quantize import QuantizedScene, dequantize, quantize, sh_rest_coeffs

MAGIC = b"NIFIGS"
VERSION = 3           # what the pipeline writes by default
VERSIONS = (1, 2, 3)  # what read_level reads
V1 = 1
COMPACT = (2, 3)      # the compact layouts (nifi_lib.synthesis.compact)
_HEAD2 = struct.Struct("<6sHIBBBBBBH")
_HEAD3 = struct.Struct("<6sHIBBBBBBHB")   # version 3: + b_k, codebook bits
SECTIONS = ("positions", "opacity", "scale", "rotation", "sh_dc", "sh_rest")
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
    codec_version: int = V1
    breakdown: dict | None = None        # bytes per part of the file (header, each attribute section)
    codec_settings: dict | None = None   # version 2: the settings the file was written with

    @property
    def bytes_per_gaussian(self) -> float:
        return self.bytes / max(1, self.num_gaussians)

    @property
    def mb(self) -> float:
        return self.bytes / 1e6

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mb"] = self.mb
        d["bytes_per_gaussian"] = self.bytes_per_gaussian
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
        _HEAD.pack(MAGIC, V1, q.num_gaussians, q.sh_degree, c, resolution, width),
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
    if version in COMPACT:
        raise fail(f"is a version-{version} bitstream (read it with decode_compact or read_level)")
    if version != V1:
        raise fail(f"unsupported bitstream version {version} (this reader knows versions {VERSIONS})")
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


# --- version 2 ---------------------------------------------------------------------------------------------

def _block(codes: np.ndarray) -> tuple[bytes, int, float]:
    """Entropy block of uint8 channels -> (bytes, table bytes, entropy bound in bytes)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    delta = entropy.choose_predictors(codes)
    res = entropy.predict(codes, delta)
    width, resolution, table, words = entropy.encode_codes(res)
    tables = entropy.pack_table(table)
    data = b"".join([struct.pack("<BB", width, resolution), np.packbits(delta.astype(np.uint8), bitorder="little")
                     .tobytes(), struct.pack("<H", len(tables)), tables, words.astype("<u4").tobytes()])
    return data, len(tables), entropy.empirical_entropy_bits(res) / 8.0


def _unblock(data: bytes, n: int, c: int, what: str) -> np.ndarray:
    nmask = (c + 7) // 8
    if len(data) < 4 + nmask:
        raise entropy.EntropyCodingError(f"{what}: entropy block of {len(data)} bytes is truncated")
    width, resolution = struct.unpack_from("<BB", data, 0)
    delta = np.unpackbits(np.frombuffer(data[2:2 + nmask], dtype=np.uint8), bitorder="little")[:c].astype(bool)
    (tlen,) = struct.unpack_from("<H", data, 2 + nmask)
    start = 4 + nmask + tlen
    if start > len(data) or (len(data) - start) % 4:
        raise entropy.EntropyCodingError(f"{what}: entropy block lengths are inconsistent")
    if width not in entropy.BIN_WIDTHS or resolution not in entropy.TABLE_RESOLUTIONS:
        raise entropy.EntropyCodingError(f"{what}: unknown table layout (bin width {width}, resolution {resolution})")
    table = entropy.unpack_table(data[4 + nmask:start], c, width)
    words = np.frombuffer(data[start:], dtype="<u4").astype(np.uint32)
    return entropy.unpredict(entropy.decode_codes(words, table, n, width, resolution), delta)


def _index_channels(indices: np.ndarray, rows: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.uint16)
    if rows <= 256:
        return idx.astype(np.uint8)[:, None]
    return np.stack([(idx & 0xFF).astype(np.uint8), (idx >> 8).astype(np.uint8)], axis=1)


def _sections(c: CompactScene) -> tuple[dict[str, bytes], dict[str, int], float]:
    """The six sections' bytes, their table bytes and the entropy bound of everything range coded."""
    out, tables, bound = {}, {}, 0.0
    e, mant, lengths = compact.split_key_gaps(compact.morton_keys(c.positions, c.position_bits))
    blk, t, b = _block(e.astype(np.uint8)[:, None])
    out["positions"] = struct.pack("<I", len(blk)) + blk + compact.pack_bits(mant, lengths)
    tables["positions"], bound = t, bound + b + compact.mantissa_bytes(lengths)
    for name, codes in (("opacity", c.opacity), ("scale", c.scales), ("rotation", c.rotation), ("sh_dc", c.sh_dc)):
        out[name], tables[name], b = _block(codes)
        bound += b
    if c.version == 2:
        book = np.ascontiguousarray(c.codebook, dtype="<f2").tobytes()
    elif len(c.codebook) == 0:
        book = b""
    else:
        codes = np.ascontiguousarray(c.codebook, dtype=np.uint8).reshape(-1).astype(np.uint64)
        book = (c.book_lo.astype("<f4").tobytes() + c.book_hi.astype("<f4").tobytes()
                + compact.pack_bits(codes, np.full(len(codes), c.codebook_bits, np.int64)))
    if c.sh_degree > 0 and c.num_gaussians:
        blk, t, b = _block(_index_channels(c.indices, len(c.codebook)))
    else:
        blk, t, b = b"", 0, 0.0
    out["sh_rest"], tables["sh_rest"], bound = book + blk, t + len(book), bound + b
    return out, tables, bound


def encode_compact(c: CompactScene) -> bytes:
    """Serialise a :class:`CompactScene` into the version-2 or version-3 byte layout of ``c.version`` (module
    docstring)."""
    return _encode_compact(c)[0]


def _encode_compact(c: CompactScene) -> tuple[bytes, dict[str, int], int, float]:
    if not 0 <= c.sh_degree <= MAX_SH_DEGREE:
        raise BitstreamError(f"SH degree {c.sh_degree} is not supported (0..{MAX_SH_DEGREE})")
    rows = len(c.codebook) if c.sh_degree > 0 and c.num_gaussians else 0
    if rows > 65535 or (c.sh_degree > 0 and c.num_gaussians and rows == 0):
        raise BitstreamError(f"codebook of {rows} rows cannot be stored (1..65535)")
    if c.version not in COMPACT:
        raise BitstreamError(f"cannot write compact bitstream version {c.version} (versions {COMPACT})")
    sections, tables, bound = _sections(c)
    fields = (MAGIC, c.version, c.num_gaussians, c.sh_degree, c.position_bits, c.opacity_bits, c.scale_bits,
              c.rotation_bits, c.dc_bits, rows)
    head = (_HEAD2.pack(*fields) if c.version == 2 else _HEAD3.pack(*fields, c.codebook_bits)) + \
        c.lo.astype("<f4").tobytes() + c.hi.astype("<f4").tobytes()
    body = head + b"".join(struct.pack("<I", len(sections[k])) + sections[k] for k in SECTIONS)
    data = body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    breakdown = {"header": len(head) + 4 * len(SECTIONS) + 4, **{k: len(sections[k]) for k in SECTIONS}}
    return data, breakdown, sum(tables.values()), bound


def decode_compact(data: bytes, source: str = "<bytes>") -> CompactScene:
    """Parse and entropy-decode version-2 or version-3 bytes; every defect raises :class:`BitstreamError` naming
    ``source``."""
    def fail(msg: str) -> BitstreamError:
        return BitstreamError(f"{source}: {msg}")

    if len(data) < 8:
        raise fail(f"truncated: {len(data)} bytes is shorter than the 8-byte magic and version")
    magic, version = struct.unpack_from("<6sH", data, 0)
    if magic != MAGIC:
        raise fail(f"not a .nifigs bitstream (magic {magic!r}, expected {MAGIC!r})")
    if version not in COMPACT:
        raise fail(f"unsupported bitstream version {version} (this reader knows versions {VERSIONS}; "
                   f"{COMPACT} are the compact ones)")
    head = _HEAD2 if version == 2 else _HEAD3
    minimum = head.size + 80 + 4 * len(SECTIONS) + 4
    if len(data) < minimum:
        raise fail(f"truncated: {len(data)} bytes is shorter than the {minimum}-byte minimum of version {version}")
    if version == 2:
        magic, version, n, degree, bp, bo, bs, br, bc, rows = _HEAD2.unpack_from(data, 0)
        bk = 0
    else:
        magic, version, n, degree, bp, bo, bs, br, bc, rows, bk = _HEAD3.unpack_from(data, 0)
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != crc:
        raise fail("checksum mismatch: the file is corrupt or truncated")
    if (degree > MAX_SH_DEGREE or not 1 <= bp <= compact.MAX_POSITION_BITS
            or not all(1 <= b <= compact.MAX_BITS for b in (bo, bs, bc)) or not 2 <= br <= compact.MAX_BITS
            or (rows == 0) != (degree == 0 or n == 0) or (version == 3 and not 1 <= bk <= compact.MAX_BITS)):
        raise fail(f"header is inconsistent (SH degree {degree}, bits {bp}/{bo}/{bs}/{br}/{bc}/{bk}, {rows} codebook "
                   "rows)")
    lo = np.frombuffer(data, dtype="<f4", count=10, offset=head.size).astype(np.float32)
    hi = np.frombuffer(data, dtype="<f4", count=10, offset=head.size + 40).astype(np.float32)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
        raise fail("min/max side info is not finite or not ordered")
    pos, end = head.size + 80, len(data) - 4
    parts = {}
    for name in SECTIONS:
        if pos + 4 > end:
            raise fail(f"truncated before the {name} section")
        (length,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + length > end:
            raise fail(f"truncated inside the {name} section ({end - pos - 4} bytes left, {length} needed)")
        parts[name] = data[pos + 4:pos + 4 + length]
        pos += 4 + length
    if pos != end:
        raise fail(f"{end - pos} unexpected bytes after the last section")
    k = sh_rest_coeffs(degree)
    try:
        p = parts["positions"]
        if len(p) < 4:
            raise entropy.EntropyCodingError("positions: section is truncated")
        (elen,) = struct.unpack_from("<I", p, 0)
        if 4 + elen > len(p):
            raise entropy.EntropyCodingError("positions: gap block is longer than the section")
        e = _unblock(p[4:4 + elen], n, 1, "positions")[:, 0].astype(np.int64)
        if n and e.max() > 3 * bp:
            raise entropy.EntropyCodingError(f"positions: a key gap of {e.max()} bits exceeds {3 * bp}-bit keys")
        lengths = np.maximum(e - 1, 0)
        if len(p) - 4 - elen != compact.mantissa_bytes(lengths):
            raise entropy.EntropyCodingError(f"positions: {len(p) - 4 - elen} mantissa bytes, "
                                             f"{compact.mantissa_bytes(lengths)} expected")
        mant = compact.unpack_bits(p[4 + elen:], lengths)
        top = np.where(e > 0, np.left_shift(np.uint64(1), lengths.astype(np.uint64)), np.uint64(0))
        gaps = (top + mant).astype(np.uint64)
        if n and int(gaps.astype(object).sum()) >= (1 << (3 * bp)):
            raise entropy.EntropyCodingError("positions: keys run past the position grid")
        keys = np.cumsum(gaps, dtype=np.uint64)
        positions = compact.morton_decode(keys, bp)
        opacity = _unblock(parts["opacity"], n, 1, "opacity")
        scales = _unblock(parts["scale"], n, 3, "scale")
        rotation = _unblock(parts["rotation"], n, 3 if version == 2 else 4, "rotation")
        sh_dc = _unblock(parts["sh_dc"], n, 3, "sh_dc")
        for name, codes, bits in (("opacity", opacity, bo), ("scale", scales, bs), ("sh_dc", sh_dc, bc)):
            if n and int(codes.max()) >= (1 << bits):
                raise entropy.EntropyCodingError(f"{name}: a code exceeds {bits} bits")
        if n and int(rotation[:, version - 2:].max()) >= (1 << br) - 1:
            raise entropy.EntropyCodingError(f"rotation: a code exceeds {(1 << br) - 2}")
        if version == 3 and n and int(rotation[:, 0].max()) > 3:
            raise entropy.EntropyCodingError("rotation: a largest-component index exceeds 3")
        r = parts["sh_rest"]
        dim = 3 * k
        extra = {}
        if version == 2:
            nbook = rows * dim * 2
            if len(r) < nbook:
                raise entropy.EntropyCodingError(f"sh_rest: {len(r)} bytes, the codebook alone needs {nbook}")
            book = np.frombuffer(r[:nbook], dtype="<f2").astype(np.float16).reshape(rows, dim)
            if not np.isfinite(book).all():
                raise entropy.EntropyCodingError("sh_rest: the codebook has non-finite values")
        else:
            nbook = 8 * dim + (rows * dim * bk + 7) // 8 if rows else 0
            if len(r) < nbook:
                raise entropy.EntropyCodingError(f"sh_rest: {len(r)} bytes, the codebook alone needs {nbook}")
            blo = np.frombuffer(r, dtype="<f4", count=dim if rows else 0).astype(np.float32)
            bhi = np.frombuffer(r, dtype="<f4", count=dim if rows else 0, offset=4 * dim if rows else 0
                                ).astype(np.float32)
            if not (np.isfinite(blo).all() and np.isfinite(bhi).all() and (bhi >= blo).all()):
                raise entropy.EntropyCodingError("sh_rest: the codebook ranges are not finite or not ordered")
            book = compact.unpack_bits(r[8 * dim:nbook] if rows else b"", np.full(rows * dim, bk, np.int64)
                                       ).astype(np.uint8).reshape(rows, dim)
            extra = dict(version=3, codebook_bits=int(bk), book_lo=blo if rows else np.zeros(0, np.float32),
                         book_hi=bhi if rows else np.zeros(0, np.float32))
        if rows:
            ch = _unblock(r[nbook:], n, 1 if rows <= 256 else 2, "sh_rest")
            idx = ch[:, 0].astype(np.int64) + (ch[:, 1].astype(np.int64) << 8 if ch.shape[1] == 2 else 0)
            if n and idx.max() >= rows:
                raise entropy.EntropyCodingError(f"sh_rest: an index exceeds the {rows} codebook rows")
        else:
            if len(r) != nbook:
                raise entropy.EntropyCodingError("sh_rest: unexpected bytes after an empty codebook")
            idx = np.zeros(n, np.int64)
    except entropy.EntropyCodingError as err:
        raise fail(str(err)) from err
    return CompactScene(sh_degree=int(degree), position_bits=int(bp), opacity_bits=int(bo), scale_bits=int(bs),
                        rotation_bits=int(br), dc_bits=int(bc), positions=positions, opacity=opacity, scales=scales,
                        rotation=rotation, sh_dc=sh_dc, indices=idx.astype(np.uint16), codebook=book, lo=lo, hi=hi,
                        **extra)


def probe_other_bytes(model, settings: CompactSettings) -> int:
    """Coded bytes of a level without its SH rest (what :func:`compact.plan_settings` budgets around)."""
    from dataclasses import replace

    c = compact.quantize_compact(model.tensors(), model.sh_degree, replace(settings, rest_degree=0))
    return len(encode_compact(c))


def plan_level(model, settings: CompactSettings | None = None, budget_bytes_per_gaussian: float | None = 12.0,
               margin: float = 0.97) -> CompactSettings:
    """The settings of a level: the richest SH degree / codebook whose estimated file fits ``margin`` x the budget."""
    s = (settings or CompactSettings()).validate()
    if budget_bytes_per_gaussian is None:
        return s
    n = model.num_gaussians
    return compact.plan_settings(s, probe_other_bytes(model, s), n, model.sh_degree,
                                 margin * budget_bytes_per_gaussian * n)


def encode_model(model, settings: CompactSettings | None = None, budget_bytes_per_gaussian: float | None = None
                 ) -> tuple[bytes, CompactScene, CompactSettings]:
    """Version-2 bytes of ``model``; with a budget, step down (:func:`compact.cheaper`) until the file fits."""
    s = (settings or CompactSettings()).validate()
    while True:
        c = compact.quantize_compact(model.tensors(), model.sh_degree, s)
        data = encode_compact(c)
        if budget_bytes_per_gaussian is None or len(data) <= budget_bytes_per_gaussian * max(1, c.num_gaussians):
            return data, c, s
        nxt = compact.cheaper(s, model.sh_degree, model.num_gaussians)
        if nxt is None:
            return data, c, s
        s = nxt


def write_level(model, path: str | Path, version: int = V1, settings: CompactSettings | None = None,
                budget_bytes_per_gaussian: float | None = None) -> CodecStats:
    """Code ``model`` into ``path`` (atomic write) as ``version`` 1 (8-bit), 2 or 3 (compact; ``version`` overrides
    ``settings.version``); sizes measured on disk.

    Versions 2 and 3 write the primitives in Morton order of their position codes; ``budget_bytes_per_gaussian``
    steps the settings down until the file fits (:func:`encode_model`).
    """
    if version == V1:
        return write_quantized(quantize(model), path)
    if version not in COMPACT:
        raise BitstreamError(f"cannot write bitstream version {version} (versions {VERSIONS})")
    path = Path(path)
    data, c, s = encode_model(model, replace(settings or CompactSettings(), version=version),
                              budget_bytes_per_gaussian)
    _, breakdown, table_bytes, bound = _encode_compact(c)
    atomic_write_bytes(path, data)
    on_disk = path.stat().st_size
    base = baseline_sizes(quantize(model))
    return CodecStats(num_gaussians=c.num_gaussians, num_channels=14 + 3 * sh_rest_coeffs(c.sh_degree),
                      bytes=on_disk, header_bytes=breakdown["header"], table_bytes=table_bytes,
                      payload_bytes=on_disk - breakdown["header"] - table_bytes, entropy_bound_bytes=bound,
                      codec_version=version, breakdown=breakdown, codec_settings=s.to_dict(), **base)


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
                      entropy_bound_bytes=entropy.empirical_entropy_bits(q.codes) / 8.0, **base,
                      codec_version=V1, breakdown={"header": head, "tables": tlen, "payload": on_disk - head - tlen})


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise BitstreamError(f"{path}: bitstream file not found")
    return path.read_bytes()


def file_version(data: bytes, source: str = "<bytes>") -> int:
    """The version field of ``.nifigs`` bytes (magic checked)."""
    if len(data) < 8:
        raise BitstreamError(f"{source}: truncated: {len(data)} bytes is shorter than the 8-byte magic and version")
    magic, version = struct.unpack_from("<6sH", data, 0)
    if magic != MAGIC:
        raise BitstreamError(f"{source}: not a .nifigs bitstream (magic {magic!r}, expected {MAGIC!r})")
    if version not in VERSIONS:
        raise BitstreamError(f"{source}: unsupported bitstream version {version} (this reader knows versions "
                             f"{VERSIONS})")
    return int(version)


def read_quantized(path: str | Path) -> QuantizedScene:
    """The 8-bit codes of a version-1 file."""
    return decode_quantized(_read_bytes(path), source=str(path))


def read_compact(path: str | Path) -> CompactScene:
    """The content of a version-2 or version-3 file."""
    return decode_compact(_read_bytes(path), source=str(path))


def decode_level(data: bytes, source: str = "<bytes>"):
    """Decode ``.nifigs`` bytes of either version into the ``GaussianModel`` they stand for."""
    if file_version(data, source) == V1:
        return dequantize(decode_quantized(data, source))
    return compact.dequantize_compact(decode_compact(data, source))


def read_level(path: str | Path):
    """Decode a ``.nifigs`` file (version 1, 2 or 3) into the dequantized ``GaussianModel``."""
    return decode_level(_read_bytes(path), source=str(path))

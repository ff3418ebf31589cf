"""The compact attribute coding of ``.nifigs`` versions 2 and 3: per-attribute bit depths and a k-means SH codebook.

What version 2 stores per Gaussian (the byte layout is in :mod:`nifi_lib.synthesis.codec`; version 3's changes
follow the list):

- **positions**: ``b_p`` bits per axis (v2 default 14, v3 12) on the grid of the bounding box; the primitives are
  sorted by the Morton (Z-order) key of the three codes (``3 b_p`` bits) and the key differences are coded
  (:func:`split_key_gaps`).
- **opacity** (logit), **log-scales** (3), **SH DC** (3): uniform grids between the channel's min and max,
  ``b_o``, ``b_s``, ``b_c`` bits (v2 defaults 5, 6, 7; v3 6, 6, 6).
- **rotation**: the unit quaternion with ``w >= 0``; ``x, y, z`` (v2 default ``b_r = 5``) on a grid of
  ``2^b_r - 1`` levels over [-1, 1] (odd, so 0 is a level), ``w = sqrt(max(0, 1 - (x^2 + y^2) - z^2))``. The
  encoder moves the largest component one level towards 0 until ``x^2 + y^2 + z^2 <= 1`` in float32, so the
  decoded quaternion is unit.
- **SH rest**: the coefficients up to degree ``d' <= d`` (``3 ((d' + 1)^2 - 1)`` numbers) as one vector,
  replaced by the nearest row of a k-means codebook of ``K`` rows stored as float16 (rows deduplicated,
  unused rows dropped, sorted lexicographically by their float16 bit patterns); degree 0 stores nothing.

Version 3 (``CompactSettings.version = 3``, the default) differs in two attributes:

- **rotation**, smallest three: the index ``i`` of the largest-magnitude component of the unit quaternion (sign
  chosen so that it is positive) and the other three, in order, on ``2^b_r - 1`` levels over [-1/sqrt(2),
  1/sqrt(2)]; decoded, component ``i`` is ``sqrt(max(0, 1 - (a^2 + b^2) - c^2))``, then the quaternion is negated
  where ``w < 0``. The encoder moves the code farthest from 0 one level towards 0 until the decoded quaternion is
  unit and component ``i`` is the largest by a margin of 2^-12 (so re-encoding the decoded quaternion picks the
  same ``i`` and codes). About 0.35x the angular error of version 2 at the same bits on random rotations.
- **SH-rest codebook**: each of the ``D`` columns is a uniform ``b_k``-bit grid (default 5) between its own min
  and max (float32 ``book_lo``, ``book_hi``); the rows are unique code rows, all used, sorted lexicographically,
  and every varying column holds codes 0 and ``2^b_k - 1``, so the decoded rows' column min / max are exactly
  the stored bounds (:func:`build_codebook_q`).

Dequantization of a grid channel with ``L`` levels, bounds ``lo, hi`` (float32), code ``q``::

    step = float32((hi - lo) / float32(L - 1));   x' = lo + float32(q) * step  (q < L - 1);   x' = hi  (q = L - 1)

all in float32 with numpy semantics (version 3's codebook columns use the same rule). Every decoded value is a
pure function of the bytes, and re-quantizing a decoded model gives the same codes, bounds and codebook (the top
level is exactly ``hi``, the codebook rows are exactly the decoded vectors), so re-encoding a decoded level
reproduces its file byte for byte.

:func:`plan_settings` picks the SH degree and codebook size of a level from a bytes-per-Gaussian budget;
:class:`StraightThrough` is the quantization-aware forward pass of fine-tuning (the values the file will hold,
gradients passed straight through).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from .quantize import QuantizationError, attributes_to_channels, canonical_quats, sh_rest_coeffs

MAX_POSITION_BITS = 21   # 3 x 21 = 63-bit Morton keys
MAX_BITS = 8             # opacity, scale, rotation, SH DC, codebook coefficients
VERSIONS = (2, 3)        # the compact layouts
S3 = np.float32(np.sqrt(0.5))   # version 3: bound of the three smallest quaternion components
_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], dtype=np.int64)


@dataclass(frozen=True)
class CompactSettings:
    """Encoder settings of one level (the bit depths, ``rest_degree`` and ``codebook_size`` go into the file)."""

    # defaults from the lego lever measurements of docs/codec.md (version 3): 12-bit positions and 6-bit SH DC cost
    # < 0.01 dB; 6-bit opacity and 6-bit smallest-three rotations pay for their bytes; the rest of the budget goes
    # to codebook rows (the planner), each coefficient at 5 bits (no measurable loss against float16)
    position_bits: int = 12
    opacity_bits: int = 6
    scale_bits: int = 6
    rotation_bits: int = 6
    dc_bits: int = 6
    rest_degree: int | None = None   # None: the model's SH degree
    codebook_size: int = 4096        # maximum rows of the SH-rest codebook (the planner picks within the budget)
    kmeans_iterations: int = 12
    kmeans_sample: int = 16384       # rows used to fit the codebook (all rows are assigned)
    seed: int = 0
    version: int = 3                 # file layout: 2 (float16 codebook, x y z rotations) or 3 (module docstring)
    codebook_bits: int = 5           # version 3: bits per codebook coefficient (per-column float32 range)

    def validate(self) -> "CompactSettings":
        if self.version not in VERSIONS:
            raise QuantizationError(f"version must be one of {VERSIONS}, got {self.version}")
        if not 1 <= self.codebook_bits <= MAX_BITS:
            raise QuantizationError(f"codebook_bits must be in 1..{MAX_BITS}, got {self.codebook_bits}")
        if not 1 <= self.position_bits <= MAX_POSITION_BITS:
            raise QuantizationError(f"position_bits must be in 1..{MAX_POSITION_BITS}, got {self.position_bits}")
        for name in ("opacity_bits", "scale_bits", "dc_bits"):
            if not 1 <= getattr(self, name) <= MAX_BITS:
                raise QuantizationError(f"{name} must be in 1..{MAX_BITS}, got {getattr(self, name)}")
        if not 2 <= self.rotation_bits <= MAX_BITS:
            raise QuantizationError(f"rotation_bits must be in 2..{MAX_BITS}, got {self.rotation_bits}")
        if not 1 <= self.codebook_size <= 65535:
            raise QuantizationError(f"codebook_size must be in 1..65535, got {self.codebook_size}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CompactScene:
    """The integer content of a version-2 file (what the bitstream stores, before entropy coding)."""

    sh_degree: int                 # degree of the decoded model (d')
    position_bits: int
    opacity_bits: int
    scale_bits: int
    rotation_bits: int
    dc_bits: int
    positions: np.ndarray          # uint32 (N, 3), Morton-sorted
    opacity: np.ndarray            # uint8 (N, 1)
    scales: np.ndarray             # uint8 (N, 3)
    rotation: np.ndarray           # uint8: v2 (N, 3) codes of x, y, z; v3 (N, 4) largest index, 3 codes
    sh_dc: np.ndarray              # uint8 (N, 3)
    indices: np.ndarray            # uint16 (N,), rows of ``codebook`` (zeros when degree 0)
    codebook: np.ndarray           # (K, 3 * ((d' + 1)^2 - 1)): v2 float16 values; v3 uint8 codes
    lo: np.ndarray                 # float32 (10,): positions 3, opacity 1, scales 3, SH DC 3
    hi: np.ndarray                 # float32 (10,)
    version: int = 2
    codebook_bits: int = 0         # v3: bits per codebook code (0 in v2)
    book_lo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))   # v3: float32 (D,) per column
    book_hi: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def num_gaussians(self) -> int:
        return int(self.positions.shape[0])

    def codebook_values(self) -> np.ndarray:
        """float32 ``(K, D)`` rows of the SH-rest codebook as decoded."""
        if self.version == 2:
            return self.codebook.astype(np.float32)
        return grid_dequantize(self.codebook, self.book_lo, self.book_hi, 1 << self.codebook_bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactScene):
            return NotImplemented
        ints = ("version", "sh_degree", "position_bits", "opacity_bits", "scale_bits", "rotation_bits", "dc_bits",
                "codebook_bits")
        arrays = ("positions", "opacity", "scales", "rotation", "sh_dc", "indices")
        floats = ("lo", "hi", "book_lo", "book_hi")
        book = (self.codebook.view(np.uint16), other.codebook.view(np.uint16)) if self.version == 2 else (
            self.codebook, other.codebook)
        return (all(getattr(self, k) == getattr(other, k) for k in ints)
                and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in arrays)
                and self.codebook.shape == other.codebook.shape and self.codebook.dtype == other.codebook.dtype
                and np.array_equal(*book)
                and all(np.array_equal(np.asarray(getattr(self, k), np.float32).view(np.uint32),
                                       np.asarray(getattr(other, k), np.float32).view(np.uint32)) for k in floats))


# --- uniform grids ---------------------------------------------------------------------------------------

# the version-2 encoder defaults (what docs/codec.md measured version 2 with; the v2 column of the codec bench)
def v2_settings(**overrides) -> "CompactSettings":
    return CompactSettings(**{**dict(version=2, position_bits=14, opacity_bits=5, scale_bits=6, rotation_bits=5,
                                     dc_bits=7, codebook_size=256, codebook_bits=8), **overrides})


def grid_quantize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """``round((x - lo) / (hi - lo) * (levels - 1))`` in float64, clipped; 0 where ``hi == lo``. int64 codes."""
    x = np.asarray(x, dtype=np.float64)
    lo64, hi64 = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    span = hi64 - lo64
    q = np.rint((x - lo64) / np.where(span > 0, span, 1.0) * (levels - 1))
    return np.clip(np.where(span > 0, q, 0.0), 0, levels - 1).astype(np.int64)


def grid_dequantize(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """The exact float32 rule of the module docstring (top level = ``hi``)."""
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    step = ((hi - lo) / np.float32(levels - 1)).astype(np.float32)
    q = np.asarray(codes)
    x = (lo + q.astype(np.float32) * step).astype(np.float32)
    return np.where(q == levels - 1, np.broadcast_to(hi, x.shape), x).astype(np.float32)


def _bounds(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)
    return x.min(axis=0).astype(np.float32), x.max(axis=0).astype(np.float32)


# --- rotation -----------------------------------------------------------------------------------------------

def _rot_grid(bits: int) -> tuple[int, np.ndarray, np.ndarray]:
    return (1 << bits) - 1, np.full(3, -1.0, np.float32), np.full(3, 1.0, np.float32)


def _sum_sq(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    return ((v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1]) + v[:, 2] * v[:, 2]).astype(np.float32)


def quantize_rotation(quats: np.ndarray, bits: int) -> np.ndarray:
    """Codes of ``x, y, z`` of the canonical unit quaternion; the decoded vector never leaves the unit ball."""
    levels, lo, hi = _rot_grid(bits)
    xyz = canonical_quats(quats)[:, 1:]
    q = grid_quantize(xyz, lo, hi, levels)
    centre = (levels - 1) // 2
    for _ in range(4 * levels):
        bad = np.flatnonzero(_sum_sq(grid_dequantize(q[:, :], lo, hi, levels)) > np.float32(1.0))
        if not len(bad):
            break
        dist = np.abs(q[bad] - centre)
        j = np.argmax(dist, axis=1)
        q[bad, j] -= np.sign(q[bad, j] - centre)
    return q.astype(np.uint8)


def dequantize_rotation(codes: np.ndarray, bits: int) -> np.ndarray:
    """``(N, 4)`` float32 quaternions (w, x, y, z) of the rule in the module docstring."""
    levels, lo, hi = _rot_grid(bits)
    xyz = grid_dequantize(codes, lo, hi, levels)
    w = np.sqrt(np.maximum(np.float32(1.0) - _sum_sq(xyz), np.float32(0.0))).astype(np.float32)
    return np.concatenate([w[:, None], xyz], axis=1).astype(np.float32)


def _s3_grid(bits: int) -> tuple[int, np.float32, np.float32]:
    return (1 << bits) - 1, -S3, S3


def _s3_decode(index: np.ndarray, codes: np.ndarray, bits: int) -> np.ndarray:
    """(N, 4) float32 quaternions of version 3, before the sign that makes w >= 0."""
    levels, lo, hi = _s3_grid(bits)
    small = grid_dequantize(codes, lo, hi, levels)
    big = np.sqrt(np.maximum(np.float32(1.0) - _sum_sq(small), np.float32(0.0))).astype(np.float32)
    out = np.zeros((len(index), 4), np.float32)
    rows = np.arange(len(index))
    out[rows, index] = big
    out[rows[:, None], _OTHERS[index]] = small
    return out


def _s3_consistent(index: np.ndarray, codes: np.ndarray, bits: int) -> np.ndarray:
    """Rows whose decoded quaternion is unit (the three codes inside the unit ball) and whose reconstructed
    component is the largest by a margin of 2^-12 (so that re-encoding the decoded quaternion, normalised, picks
    the same index)."""
    levels, lo, hi = _s3_grid(bits)
    small = grid_dequantize(codes, lo, hi, levels)
    ss = _sum_sq(small)
    big = np.sqrt(np.maximum(np.float32(1.0) - ss, np.float32(0.0))).astype(np.float32)
    return (ss <= np.float32(1.0)) & (big > np.abs(small).max(axis=1) * np.float32(1.0 + 2.0 ** -12))


def quantize_rotation_s3(quats: np.ndarray, bits: int) -> np.ndarray:
    """Version-3 codes ``(N, 4)``: the index of the largest component of the unit quaternion (sign chosen so it is
    positive) and the other three, in order, on ``2^bits - 1`` levels over [-1/sqrt(2), 1/sqrt(2)].

    Where the decoded quaternion would not be unit or its reconstructed component would not be the largest, the
    code farthest from 0 moves one level towards 0 until it is (so decoding then re-encoding is a fixed point).
    """
    levels, lo, hi = _s3_grid(bits)
    q = canonical_quats(quats)
    n = len(q)
    rows = np.arange(n)
    index = np.argmax(np.abs(q), axis=1) if n else np.zeros(0, np.int64)
    q = q * np.where(q[rows, index] < 0, np.float32(-1.0), np.float32(1.0))[:, None]
    codes = grid_quantize(q[rows[:, None], _OTHERS[index]], lo, hi, levels)
    centre = (levels - 1) // 2
    for _ in range(4 * levels):
        bad = np.flatnonzero(~_s3_consistent(index, codes, bits))
        if not len(bad):
            break
        j = np.argmax(np.abs(codes[bad] - centre), axis=1)
        codes[bad, j] -= np.sign(codes[bad, j] - centre)
    return np.concatenate([index[:, None], codes], axis=1).astype(np.uint8)


def dequantize_rotation_s3(codes: np.ndarray, bits: int) -> np.ndarray:
    """``(N, 4)`` float32 unit quaternions (w, x, y, z) of version-3 codes: the three stored components, the
    fourth ``sqrt(max(0, 1 - (a^2 + b^2) - c^2))`` at the stored index, then negated where w < 0."""
    codes = np.asarray(codes)
    q = _s3_decode(codes[:, 0].astype(np.int64), codes[:, 1:], bits)
    return np.where(q[:, :1] < 0, -q, q).astype(np.float32)


# --- Morton order of the position codes ------------------------------------------------------------------

def morton_keys(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint64 Z-order keys: bit ``b`` of axis ``a`` goes to bit ``3 b + a``."""
    c = np.asarray(codes, dtype=np.uint64)
    key = np.zeros(len(c), dtype=np.uint64)
    for b in range(bits):
        for a in range(3):
            key |= ((c[:, a] >> np.uint64(b)) & np.uint64(1)) << np.uint64(3 * b + a)
    return key


def morton_decode(keys: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`morton_keys` -> uint32 ``(N, 3)``."""
    k = np.asarray(keys, dtype=np.uint64)
    out = np.zeros((len(k), 3), dtype=np.uint64)
    for b in range(bits):
        for a in range(3):
            out[:, a] |= ((k >> np.uint64(3 * b + a)) & np.uint64(1)) << np.uint64(b)
    return out.astype(np.uint32)


def bit_lengths(values: np.ndarray) -> np.ndarray:
    """Number of significant bits of each uint64 (< 2^63), 0 for 0."""
    v = np.asarray(values, dtype=np.uint64)
    out = np.zeros(len(v), dtype=np.int64)
    rest = v.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        big = rest >= (np.uint64(1) << np.uint64(shift))
        out += np.where(big, shift, 0)
        rest = np.where(big, rest >> np.uint64(shift), rest)
    return out + (rest > 0)


def split_key_gaps(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted keys -> (bit length e of each gap to the previous key (first: to 0), mantissas, mantissa lengths).

    A gap ``g > 0`` is ``2^(e-1) + m`` with ``m < 2^(e-1)``: ``e`` is entropy coded, ``m`` stored in ``e - 1`` raw bits.
    """
    k = np.asarray(keys, dtype=np.uint64)
    gaps = np.diff(k, prepend=np.uint64(0)).astype(np.uint64) if len(k) else k
    e = bit_lengths(gaps)
    lengths = np.maximum(e - 1, 0)
    top = np.where(e > 0, np.left_shift(np.uint64(1), np.maximum(e - 1, 0).astype(np.uint64)), np.uint64(0))
    return e, (gaps - top).astype(np.uint64), lengths


def pack_bits(values: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenate the ``lengths[i]`` low bits of each value, most significant first; zero-padded to bytes."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths) or lengths.max() == 0:
        return b""
    width = int(lengths.max())
    j = np.arange(width, dtype=np.int64)[None, :]
    valid = j < lengths[:, None]
    shift = np.where(valid, lengths[:, None] - 1 - j, 0).astype(np.uint64)
    bits = ((np.asarray(values, np.uint64)[:, None] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits[valid]).tobytes()


def unpack_bits(blob: bytes, lengths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits` (the caller checks ``len(blob)``)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(len(lengths), dtype=np.uint64)
    if not len(lengths) or lengths.max() == 0:
        return out
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8)).astype(np.uint64)
    width = int(lengths.max())
    start = np.cumsum(lengths) - lengths
    j = np.arange(width, dtype=np.int64)[None, :]
    valid = j < lengths[:, None]
    idx = np.where(valid, start[:, None] + j, 0)
    shift = np.where(valid, lengths[:, None] - 1 - j, 0).astype(np.uint64)
    vals = np.where(valid, bits[idx] << shift, np.uint64(0))
    return np.bitwise_or.reduce(vals, axis=1).astype(np.uint64)


def mantissa_bytes(lengths: np.ndarray) -> int:
    return (int(np.asarray(lengths, dtype=np.int64).sum()) + 7) // 8


# --- k-means codebook --------------------------------------------------------------------------------------

def kmeans(x: np.ndarray, k: int, iterations: int = 12, sample: int = 16384, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means (seeded random init from a seeded subsample of at most ``sample`` rows); float32 ``(k', D)``."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    g = torch.Generator().manual_seed(int(seed))
    data = torch.from_numpy(x)
    if n > sample:
        data = data[torch.randperm(n, generator=g)[:sample]]
    k = min(int(k), len(data))
    cent = data[torch.randperm(len(data), generator=g)[:k]].clone()
    sq = (data * data).sum(1, keepdim=True)
    for _ in range(int(iterations)):
        assign = torch.argmin(sq - 2.0 * data @ cent.T + (cent * cent).sum(1)[None, :], dim=1)
        sums = torch.zeros_like(cent).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=k).to(data.dtype)[:, None]
        cent = torch.where(counts > 0, sums / counts.clamp_min(1.0), cent)
    return cent.numpy().astype(np.float32)


def nearest_rows(x: np.ndarray, codebook: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest codebook row (squared distance, ties to the lower index) of each row of ``x``."""
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    cb = torch.from_numpy(np.ascontiguousarray(codebook, dtype=np.float32))
    cn = (cb * cb).sum(1)[None, :]
    out = [torch.argmin(cn - 2.0 * part @ cb.T + (part * part).sum(1, keepdim=True), dim=1)
           for part in xs.split(chunk)] if len(xs) else [torch.zeros(0, dtype=torch.long)]
    return torch.cat(out).numpy().astype(np.int64)


def build_codebook(rest: np.ndarray, size: int, iterations: int, sample: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(float16 codebook, uint16 indices) of the SH-rest vectors ``rest`` (N, D) in canonical form.

    Canonical: rows unique and used, sorted lexicographically by their float16 bit patterns. When the float16
    vectors have at most ``size`` distinct values (a decoded level, or fewer vectors than rows) the codebook is
    exactly those values; else k-means (:func:`kmeans`) and nearest-row assignment.
    """
    n, dim = rest.shape
    if dim == 0 or n == 0:
        return np.zeros((0, dim), np.float16), np.zeros(n, np.uint16)
    r16 = np.clip(rest, -65504.0, 65504.0).astype(np.float16)
    uniq, inverse = np.unique(np.ascontiguousarray(r16).view(np.uint16), axis=0, return_inverse=True)
    if len(uniq) <= size:
        return np.ascontiguousarray(uniq).view(np.float16), inverse.reshape(-1).astype(np.uint16)
    book = np.clip(kmeans(rest, size, iterations, sample, seed), -65504.0, 65504.0).astype(np.float16)
    book = np.ascontiguousarray(np.unique(np.ascontiguousarray(book).view(np.uint16), axis=0)).view(np.float16)
    idx = nearest_rows(rest, book.astype(np.float32))
    used = np.unique(idx)
    return np.ascontiguousarray(book[used]), np.searchsorted(used, idx).astype(np.uint16)


def _column_bounds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = _bounds(np.asarray(rows, np.float32))
    return (lo + np.float32(0.0)).astype(np.float32), (hi + np.float32(0.0)).astype(np.float32)   # no -0.0


def _quantized_book(rows: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float rows -> (unique uint8 code rows sorted lexicographically, column lo, column hi, inverse)."""
    lo, hi = _column_bounds(rows)
    codes = grid_quantize(rows, lo, hi, 1 << bits).astype(np.uint8)
    uniq, inverse = np.unique(codes, axis=0, return_inverse=True)
    return np.ascontiguousarray(uniq), lo, hi, inverse.reshape(-1)


def build_codebook_q(rest: np.ndarray, size: int, bits: int, iterations: int, sample: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Version 3: (uint8 code rows (K, D), float32 column lo (D,), hi (D,), uint16 indices) of the SH-rest vectors.

    Each codebook column is a uniform ``bits``-bit grid between its own min and max. Canonical: rows unique and
    used, sorted lexicographically by their codes, and ``lo`` / ``hi`` the min / max of the used rows (so every
    column holds code 0 and code ``2^bits - 1`` and decodes to exactly ``lo`` and ``hi``). At most ``size`` distinct
    float32 vectors (a decoded level) are quantized as they are; else k-means (:func:`kmeans`), then, until every
    row is used: quantize the rows, assign each vector to its nearest decoded row, drop the unused rows.
    """
    n, dim = rest.shape
    if dim == 0 or n == 0:
        return np.zeros((0, dim), np.uint8), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(n, np.uint16)
    rest = np.ascontiguousarray(rest, dtype=np.float32)
    uniq, inverse = np.unique(rest.view(np.uint32), axis=0, return_inverse=True)
    if len(uniq) <= size:
        codes, lo, hi, inv = _quantized_book(np.ascontiguousarray(uniq).view(np.float32), bits)
        return codes, lo, hi, inv[inverse.reshape(-1)].astype(np.uint16)
    rows = kmeans(rest, size, iterations, sample, seed)
    levels = 1 << bits
    while True:
        codes, lo, hi, _ = _quantized_book(rows, bits)
        values = grid_dequantize(codes, lo, hi, levels)
        idx = nearest_rows(rest, values)
        used = np.unique(idx)
        if len(used) == len(codes):
            return codes, lo, hi, idx.astype(np.uint16)
        rows = values[used]


# --- quantize / dequantize a model ---------------------------------------------------------------------------

def _rest_vectors(sh_rest: np.ndarray, degree: int) -> np.ndarray:
    k = sh_rest_coeffs(degree)
    return np.ascontiguousarray(sh_rest[:, :k, :].reshape(len(sh_rest), 3 * k), dtype=np.float32)


def quantize_compact(tensors: dict, sh_degree: int, settings: CompactSettings | None = None,
                     codebook: tuple[np.ndarray, np.ndarray] | None = None, sort: bool = True) -> CompactScene:
    """The version-2 content of a model's attributes, sorted into Morton order of the position codes.

    ``codebook``: a precomputed codebook in the model's order (fine-tuning passes the one it already fitted), as
    :func:`fit_codebook` returns it; None fits one. ``sort=False`` keeps the model's order (what the
    straight-through forward pass needs; a file is always sorted). ``settings.version`` picks the layout.
    """
    s = (settings or CompactSettings()).validate()
    x = attributes_to_channels(tensors, sh_degree)   # validates shapes and finiteness
    n = x.shape[0]
    degree = int(sh_degree if s.rest_degree is None else min(s.rest_degree, sh_degree))
    means, logs, quats, opac, dc = x[:, 0:3], x[:, 3:6], x[:, 6:10], x[:, 10:11], x[:, 11:14]
    lo_p, hi_p = _bounds(means)
    lo_o, hi_o = _bounds(opac)
    lo_s, hi_s = _bounds(logs)
    lo_c, hi_c = _bounds(dc)
    pos = grid_quantize(means, lo_p, hi_p, 1 << s.position_bits)
    order = np.argsort(morton_keys(pos, s.position_bits), kind="stable") if sort else np.arange(n)
    rest_all = np.asarray(tensors["sh_rest"].detach().cpu().numpy() if torch.is_tensor(tensors["sh_rest"])
                          else tensors["sh_rest"], dtype=np.float32).reshape(n, -1, 3)
    if codebook is None:
        codebook = fit_codebook(_rest_vectors(rest_all, degree), s)
    if s.version == 2:
        book, idx = codebook
        extra = dict(codebook=np.asarray(book, dtype=np.float16))
        rotation = quantize_rotation(quats, s.rotation_bits)
    else:
        book, book_lo, book_hi, idx = codebook
        extra = dict(codebook=np.asarray(book, dtype=np.uint8), codebook_bits=s.codebook_bits,
                     book_lo=np.asarray(book_lo, np.float32), book_hi=np.asarray(book_hi, np.float32))
        rotation = quantize_rotation_s3(quats, s.rotation_bits)
    return CompactScene(
        sh_degree=degree, position_bits=s.position_bits, opacity_bits=s.opacity_bits, scale_bits=s.scale_bits,
        rotation_bits=s.rotation_bits, dc_bits=s.dc_bits,
        positions=pos[order].astype(np.uint32),
        opacity=grid_quantize(opac, lo_o, hi_o, 1 << s.opacity_bits)[order].astype(np.uint8),
        scales=grid_quantize(logs, lo_s, hi_s, 1 << s.scale_bits)[order].astype(np.uint8),
        rotation=rotation[order],
        sh_dc=grid_quantize(dc, lo_c, hi_c, 1 << s.dc_bits)[order].astype(np.uint8),
        indices=np.asarray(idx, dtype=np.uint16)[order],
        lo=np.concatenate([lo_p, lo_o, lo_s, lo_c]).astype(np.float32),
        hi=np.concatenate([hi_p, hi_o, hi_s, hi_c]).astype(np.float32), version=s.version, **extra)


def fit_codebook(rest: np.ndarray, settings: CompactSettings) -> tuple:
    """The SH-rest codebook of ``settings.version`` for vectors ``rest`` (N, D): v2 ``(float16 rows, indices)``
    (:func:`build_codebook`), v3 ``(uint8 code rows, column lo, column hi, indices)`` (:func:`build_codebook_q`)."""
    s = settings
    if s.version == 2:
        return build_codebook(rest, s.codebook_size, s.kmeans_iterations, s.kmeans_sample, s.seed)
    return build_codebook_q(rest, s.codebook_size, s.codebook_bits, s.kmeans_iterations, s.kmeans_sample, s.seed)


def dequantize_compact_arrays(c: CompactScene) -> dict[str, np.ndarray]:
    """float32 attribute arrays of a :class:`CompactScene` (the exact decode rule)."""
    n = c.num_gaussians
    k = sh_rest_coeffs(c.sh_degree)
    rest = (c.codebook_values()[c.indices.astype(np.int64)].reshape(n, k, 3) if k
            else np.zeros((n, 0, 3), np.float32))
    rot = dequantize_rotation if c.version == 2 else dequantize_rotation_s3
    return {"means": grid_dequantize(c.positions, c.lo[0:3], c.hi[0:3], 1 << c.position_bits),
            "log_scales": grid_dequantize(c.scales, c.lo[4:7], c.hi[4:7], 1 << c.scale_bits),
            "quats": rot(c.rotation, c.rotation_bits),
            "opacity_logits": grid_dequantize(c.opacity, c.lo[3:4], c.hi[3:4], 1 << c.opacity_bits)[:, 0],
            "sh_dc": grid_dequantize(c.sh_dc, c.lo[7:10], c.hi[7:10], 1 << c.dc_bits),
            "sh_rest": np.ascontiguousarray(rest, dtype=np.float32)}


def dequantize_compact(c: CompactScene):
    """The ``GaussianModel`` a version-2 file stands for."""
    from ..gs.model import GaussianModel

    return GaussianModel.from_tensors({k: torch.from_numpy(np.ascontiguousarray(v))
                                       for k, v in dequantize_compact_arrays(c).items()})


# --- rate planning ----------------------------------------------------------------------------------------

def rest_candidates(sh_degree: int, n: int, max_codebook: int = 4096, min_codebook: int = 16, fine: bool = False
                    ) -> list[tuple[int, int]]:
    """(degree, codebook rows) from the richest to the cheapest: every degree from ``sh_degree`` down to 1 with
    power-of-two codebooks of at most ``n / 4`` rows (``fine``: also 3/4 of each power of two), then degree 0."""
    sizes, k = [], int(max_codebook)
    while k >= min_codebook:
        sizes += [k, 3 * k // 4] if fine and 3 * k // 4 >= min_codebook else [k]
        k //= 2
    out = []
    for d in range(int(sh_degree), 0, -1):
        out += [(d, k) for k in sizes if k <= max(min_codebook, n // 4)]
    return out + [(0, 1)]


def estimate_rest_bytes(n: int, degree: int, rows: int, version: int = 2, codebook_bits: int = 8) -> float:
    """Codebook (v2: float16; v3: ``codebook_bits`` per coefficient plus the float32 column ranges) plus indices
    at ~log2(rows) bits each (an upper estimate) plus a table."""
    if degree == 0:
        return 0.0
    rows = min(rows, n)
    dim = 3 * sh_rest_coeffs(degree)
    book = rows * dim * 2 if version == 2 else (rows * dim * codebook_bits + 7) // 8 + 8 * dim
    return book + n * np.log2(max(rows, 2)) / 8.0 + 64


def plan_settings(base: CompactSettings, other_bytes: int, n: int, sh_degree: int, budget_bytes: float | None
                  ) -> CompactSettings:
    """The richest (degree, codebook) of :func:`rest_candidates` whose estimate fits ``budget_bytes`` next to
    ``other_bytes`` (the coded size of everything but the SH rest); ``None`` budget keeps ``base``."""
    if budget_bytes is None:
        return base
    degree_cap = sh_degree if base.rest_degree is None else min(base.rest_degree, sh_degree)
    for d, k in rest_candidates(degree_cap, n, base.codebook_size, fine=base.version >= 3):
        if other_bytes + estimate_rest_bytes(n, d, k, base.version, base.codebook_bits) <= budget_bytes:
            return replace(base, rest_degree=d, codebook_size=k)
    return replace(base, rest_degree=0, codebook_size=1)


def cheaper(settings: CompactSettings, sh_degree: int, n: int) -> CompactSettings | None:
    """The next step down: a (degree, codebook) of :func:`rest_candidates` with a smaller estimate, else one bit
    less for scales, rotations, opacity or SH DC (not below 4); None when nothing is left."""
    degree = sh_degree if settings.rest_degree is None else min(settings.rest_degree, sh_degree)
    v, b = settings.version, settings.codebook_bits
    now = estimate_rest_bytes(n, degree, settings.codebook_size, v, b)
    for d, k in rest_candidates(degree, n, settings.codebook_size, fine=v >= 3):
        if estimate_rest_bytes(n, d, k, v, b) < now:
            return replace(settings, rest_degree=d, codebook_size=k)
    for name in ("scale_bits", "rotation_bits", "opacity_bits", "dc_bits"):
        if getattr(settings, name) > 4:
            return replace(settings, **{name: getattr(settings, name) - 1})
    return None


# --- quantization-aware fine-tuning --------------------------------------------------------------------------

class StraightThrough:
    """Forward pass of quantization-aware fine-tuning: each attribute becomes the value the file will decode to
    (:func:`quantize_compact` + :func:`dequantize_compact_arrays`, exactly), with the identity as its gradient.
    Rotations are passed as their canonical unit quaternion, so the gradient is taken at the point that is rendered.

    The SH rest, ``learn_codebook`` (default): on the first call a codebook is fitted with the file's k-means and the
    assignment is kept; row ``j`` is then ``r0_j + gain (mean_j - r0_j)``, with ``mean_j`` the mean of the SH-rest
    parameters assigned to it and ``r0_j`` its first value, so the rows are learned from the rendering loss (with
    Adam each row moves ``gain`` times the SH-rest learning rate; ``codebook_gain`` 20 gives the SH-DC rate). The
    forward pass renders the rows as the file stores them (version 3: the per-column grids; version 2: float16),
    the gradient passes straight through to the rows. :meth:`finalize` (called by ``finetune``) sets every
    Gaussian's SH rest to its row, so the file's encoder takes the learned rows as its codebook and the forward pass
    of the last parameters is exactly the decoded file.

    ``learn_codebook=False`` (version 2's fine-tuning): the nearest row of a k-means codebook refitted every
    ``refit_every`` calls (the assignment refreshed every ``assign_every`` calls); the final file refits it once more.
    """

    def __init__(self, settings: CompactSettings, sh_degree: int, refit_every: int = 100, assign_every: int = 10,
                 start: int = 0, quantize_rest: bool = True, learn_codebook: bool = True, codebook_gain: float = 20.0):
        self.start, self.quantize_rest, self.learn_codebook = int(start), bool(quantize_rest), bool(learn_codebook)
        self.codebook_gain = float(codebook_gain)
        self.settings = settings.validate()
        self.sh_degree = int(sh_degree)
        self.degree = self.sh_degree if settings.rest_degree is None else min(settings.rest_degree, self.sh_degree)
        self.refit_every, self.assign_every = max(1, int(refit_every)), max(1, int(assign_every))
        self.calls = 0
        self._book: tuple | None = None    # fit_codebook's tuple (the indices last)
        self._values: np.ndarray | None = None
        self._assign: np.ndarray | None = None   # learned codebook: the fixed assignment (model order)
        self._origin: torch.Tensor | None = None  # learned codebook: the rows at the first call

    def _codebook(self, rest: np.ndarray) -> tuple:
        s = self.settings
        if self._book is None or self.calls % self.refit_every == 0:
            self._book = fit_codebook(rest, s)
            head = self._book[:-1]
            self._values = (head[0].astype(np.float32) if s.version == 2
                            else grid_dequantize(head[0], head[1], head[2], 1 << s.codebook_bits))
        elif self.calls % self.assign_every == 0:
            self._book = (*self._book[:-1], nearest_rows(rest, self._values).astype(np.uint16))
        return self._book

    def decoded_arrays(self, model) -> dict[str, np.ndarray]:
        """The decoded attributes in the model's own order for the current parameters."""
        t = {k: v.detach().cpu() for k, v in model.tensors().items()}
        book = self._codebook(_rest_vectors(t["sh_rest"].numpy(), self.degree)) if self.degree > 0 else None
        c = quantize_compact(t, self.sh_degree, replace(self.settings, rest_degree=self.degree), codebook=book,
                             sort=False)
        return dequantize_compact_arrays(c)

    def _rows(self, model) -> torch.Tensor:
        """Learned codebook: row j is the mean of the SH-rest vectors assigned to it (differentiable), ``(K, D)``."""
        n, k = model.num_gaussians, sh_rest_coeffs(self.degree)
        x = model.sh_rest[:, :k, :].reshape(n, 3 * k)
        idx = torch.from_numpy(self._assign.astype(np.int64)).to(x.device)
        rows = int(self._assign.max()) + 1
        sums = torch.zeros(rows, 3 * k, dtype=x.dtype, device=x.device).index_add(0, idx, x)
        counts = torch.bincount(idx, minlength=rows).to(x.dtype).clamp_min(1.0)[:, None]
        mean = sums / counts
        if self.codebook_gain == 1.0:
            return mean
        if self._origin is None:
            self._origin = mean.detach().clone()
        return self._origin + self.codebook_gain * (mean - self._origin)   # rows move gain x as fast as members

    def finalize(self, model):
        """After fine-tuning with a learned codebook: the model with its SH rest set to the rows (the file's encoder
        then takes them as its codebook) and the dropped bands zeroed; else ``model`` unchanged."""
        if not (self.learn_codebook and self.degree > 0 and self._assign is not None):
            return model
        out = model.detach().clone()
        n, k = out.num_gaussians, sh_rest_coeffs(self.degree)
        with torch.no_grad():
            rows = self._rows(out)
            rest = torch.zeros_like(out.sh_rest)
            rest[:, :k, :] = rows[torch.from_numpy(self._assign.astype(np.int64)).to(rows.device)].reshape(n, k, 3)
            out.sh_rest.copy_(rest)
        return out

    def _learned_rest(self, model) -> torch.Tensor:
        """Forward SH rest of the learned codebook: the file's quantized rows (version 3: column grids of the mean
        rows, as the encoder stores them; version 2: float16), gradient to the rows, i.e. to their members."""
        n, k = model.num_gaussians, sh_rest_coeffs(self.degree)
        if self._assign is None:
            book = fit_codebook(_rest_vectors(model.sh_rest.detach().cpu().numpy(), self.degree), self.settings)
            self._assign = np.asarray(book[-1], dtype=np.int64)
        rows = self._rows(model)
        r = rows.detach().cpu().numpy().astype(np.float32)
        if self.settings.version == 2:
            q = r.astype(np.float16).astype(np.float32)
        else:
            lo, hi = _column_bounds(r)
            levels = 1 << self.settings.codebook_bits
            q = grid_dequantize(grid_quantize(r, lo, hi, levels), lo, hi, levels)
        rows = torch.from_numpy(q).to(rows.device) + (rows - rows.detach())
        return rows[torch.from_numpy(self._assign).to(rows.device)].reshape(n, k, 3)

    def __call__(self, model):
        from ..gs.model import GaussianModel

        if self.calls < self.start:   # plain fine-tuning first
            self.calls += 1
            return model
        if self.learn_codebook and self.degree > 0:
            t = {k: v.detach().cpu() for k, v in model.tensors().items()}
            dec = dequantize_compact_arrays(quantize_compact(t, self.sh_degree, replace(self.settings, rest_degree=0),
                                                             sort=False))   # the SH rest comes from the rows
        else:
            dec = self.decoded_arrays(model)
        self.calls += 1
        dev = model.means.device

        def ste(x: torch.Tensor, target: np.ndarray) -> torch.Tensor:
            y = torch.from_numpy(np.ascontiguousarray(target)).to(dev)
            return y + (x - x.detach())   # forward exactly y (x - x is 0), gradient the identity

        q = model.quats / model.quats.norm(dim=1, keepdim=True).clamp_min(1e-12)
        q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
        k = sh_rest_coeffs(self.degree)
        rest = model.sh_rest[:, :k, :]
        if k and self.learn_codebook:
            rest = self._learned_rest(model)
        elif k and self.quantize_rest:
            rest = ste(rest, dec["sh_rest"])
        if model.sh_rest.shape[1] > k:  # dropped bands render as zero
            rest = torch.cat([rest, model.sh_rest[:, k:, :] * 0.0], dim=1)
        return GaussianModel(means=ste(model.means, dec["means"]), log_scales=ste(model.log_scales, dec["log_scales"]),
                             quats=ste(q, dec["quats"]), opacity_logits=ste(model.opacity_logits,
                                                                            dec["opacity_logits"]),
                             sh_dc=ste(model.sh_dc, dec["sh_dc"]), sh_rest=rest)

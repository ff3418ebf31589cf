"""Entropy coding of the 8-bit attribute codes with ``constriction`` (range coding, Sec. 3 "entropy coding").

Each scalar channel gets its own static model over the 256 codes, built from a frequency table stored in
the bitstream header, so the decoder builds the identical model. All channels are range coded
(``constriction.stream.queue.RangeEncoder``) one after another into one stream of 32-bit words.

The table of a channel has ``256 / w`` entries, one per bin of ``w`` consecutive codes (``w`` in
{1, 2, 4, 8}); each entry is the bin's count on a log2 scale with ``r`` steps per doubling
(``count_table``; ``r`` in {1, 2, 4, 8}); the codes of a bin share its frequency. An all-zero row means
"uniform, 8 bits per symbol" and is chosen for a channel whose table would cost more than it saves; with
``w = 1``, a row with a single used code costs no payload bits. The encoder picks the ``(w, r)`` that
makes tables + payload smallest (coarse tables for small levels, exact ones for large). Tables are
delta-coded along the alphabet and zlib-compressed. Optionally a channel is coded as differences to the
previous primitive (:func:`predict`), chosen per channel by empirical entropy.

Frequencies are exact float64 values (integer mantissas times powers of two, ``table_frequencies``),
so every platform builds bit-identical models.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..errors import NifiError

ALPHABET = 256
TABLE_RESOLUTIONS = (1, 2, 4, 8)   # table steps per doubling of a count
BIN_WIDTHS = (1, 2, 4, 8)          # codes per table entry
UNIFORM = np.ones(ALPHABET, dtype=np.float64)  # model of a channel whose table row is all zeros

# 2 ** (i / r) in 16-bit fixed point, hard-coded so that every platform builds bit-identical models
# (a libm exp2 could differ in the last ulp, and the range coder's fixed-point model with it).
_MANTISSA = {1: (65536,), 2: (65536, 92682), 4: (65536, 77936, 92682, 110218),
             8: (65536, 71468, 77936, 84990, 92682, 101070, 110218, 120194)}


class EntropyCodingError(NifiError, ValueError):
    """The entropy-coded payload or its frequency tables are invalid."""


# --- statistics ---------------------------------------------------------------------------------------

def symbol_counts(codes: np.ndarray) -> np.ndarray:
    """``(C, 256)`` int64 counts of each code per channel of a uint8 ``(N, C)`` array."""
    codes = np.asarray(codes, dtype=np.uint8)
    n, c = codes.shape
    offsets = (np.arange(c, dtype=np.int64) * ALPHABET)[None, :]
    flat = (codes.astype(np.int64) + offsets).ravel()
    return np.bincount(flat, minlength=c * ALPHABET).reshape(c, ALPHABET)


def _entropy_bits_per_channel(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return -(counts * np.log2(np.where(counts > 0, p, 1.0))).sum(axis=1)


def empirical_entropy_bits(codes: np.ndarray) -> float:
    """Sum over channels of N * H(channel) in bits: the ideal payload of static per-channel models."""
    return float(_entropy_bits_per_channel(symbol_counts(codes)).sum())


# --- prediction ---------------------------------------------------------------------------------------

def predict(codes: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Residuals to code: channel c as is, or (``delta[c]``) minus the previous primitive's code, mod 256.

    With primitives in a spatially coherent order (Morton order, ``quantize.morton_order``) neighbours
    have similar positions and often similar colours and scales, so the differences are peaked.
    """
    codes = np.asarray(codes, dtype=np.uint8)
    res = codes.copy()
    d = np.flatnonzero(np.asarray(delta, dtype=bool))
    if len(d) and codes.shape[0]:
        res[:, d] = np.diff(codes[:, d].astype(np.int16), axis=0, prepend=0).astype(np.uint8)  # mod 256
    return res


def unpredict(res: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Inverse of :func:`predict` (cumulative sums mod 256)."""
    codes = np.asarray(res, dtype=np.uint8).copy()
    d = np.flatnonzero(np.asarray(delta, dtype=bool))
    if len(d) and codes.shape[0]:
        codes[:, d] = (np.cumsum(codes[:, d].astype(np.int64), axis=0) % ALPHABET).astype(np.uint8)
    return codes


def choose_predictors(codes: np.ndarray) -> np.ndarray:
    """Per channel, True where coding differences has lower empirical entropy than coding the codes."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape[0] < 2:
        return np.zeros(codes.shape[1], dtype=bool)
    every = np.ones(codes.shape[1], dtype=bool)
    return _entropy_bits_per_channel(symbol_counts(predict(codes, every))) < _entropy_bits_per_channel(
        symbol_counts(codes))


# --- frequency tables -----------------------------------------------------------------------------------

def bin_counts(counts: np.ndarray, width: int) -> np.ndarray:
    """``(C, 256)`` counts -> ``(C, 256 / width)`` counts per bin of ``width`` consecutive codes."""
    counts = np.asarray(counts, dtype=np.int64)
    return counts.reshape(counts.shape[0], ALPHABET // int(width), int(width)).sum(axis=2)


def count_table(counts: np.ndarray, resolution: int) -> np.ndarray:
    """Quantize counts to the uint8 table stored in the header.

    ``t = 0`` for an unused entry, else ``t = clip(round(r * log2(count)) + 1, 1, 255)``. Encoder and
    decoder both use :func:`table_frequencies`, so the table need only be close to the histogram.
    """
    c = np.asarray(counts, dtype=np.int64)
    t = np.rint(int(resolution) * np.log2(np.maximum(c, 1))) + 1
    return np.where(c > 0, np.clip(t, 1, 255), 0).astype(np.uint8)


def table_frequencies(table: np.ndarray, resolution: int, width: int = 1) -> np.ndarray:
    """Per-code model frequencies ``~ 2 ** ((t - 1) / r)`` of the code's bin (0 for t = 0), ``(C, 256)`` float64.

    Computed exactly as ``mantissa[(t - 1) % r] * 2 ** ((t - 1) // r)`` with integer mantissas
    (``_MANTISSA``): every value is an exact float64, so encoder and decoder agree bit for bit.
    """
    t = np.asarray(table, dtype=np.int64)
    r = int(resolution)
    mant = np.asarray(_MANTISSA[r], dtype=np.float64)
    e = np.maximum(t - 1, 0)
    f = np.where(t > 0, np.ldexp(mant[e % r], (e // r).astype(np.int32)), 0.0)
    return np.repeat(f, int(width), axis=1)


def _row_cost(table_row: np.ndarray) -> int:
    """Approximate bytes a table row adds to the packed tables (its zlib size minus zlib's fixed overhead)."""
    delta = np.diff(table_row.astype(np.int16), prepend=0).astype(np.uint8)
    return max(1, len(zlib.compress(delta.tobytes(), 9)) - 8)


def _single(table: np.ndarray, width: int) -> np.ndarray:
    """Rows that code a constant channel at zero bits (one used code; needs bins of one code)."""
    return (np.count_nonzero(table, axis=1) == 1) if width == 1 else np.zeros(len(table), dtype=bool)


def table_for(counts: np.ndarray, width: int, resolution: int) -> tuple[np.ndarray, float]:
    """The table for ``(width, resolution)`` with the per-channel uniform fallback, and its estimated total bytes."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    table = count_table(bin_counts(counts, width), resolution)
    f = table_frequencies(table, resolution, width)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = f / np.maximum(f.sum(axis=1, keepdims=True), 1e-300)
        bits = -(counts * np.log2(np.where(counts > 0, p, 1.0))).sum(axis=1)
    single = _single(table, width)
    bits = np.where(single, 0.0, bits)
    for ch in range(table.shape[0]):
        if not single[ch] and (8.0 * n[ch] - bits[ch]) / 8.0 <= _row_cost(table[ch]):
            table[ch] = 0
            bits[ch] = 8.0 * n[ch]
    return table, float(bits.sum()) / 8.0 + len(pack_table(table))


def choose_table(counts: np.ndarray) -> tuple[int, int, np.ndarray]:
    """``(width, resolution, table)`` over ``BIN_WIDTHS x TABLE_RESOLUTIONS`` minimising tables + payload."""
    best = None
    for w in BIN_WIDTHS:
        for r in TABLE_RESOLUTIONS:
            table, total = table_for(counts, w, r)
            if best is None or total < best[0]:
                best = (total, w, r, table)
    return best[1], best[2], best[3]


def pack_table(table: np.ndarray) -> bytes:
    """uint8 table -> zlib of its differences along the alphabet (smooth histograms compress well)."""
    t = np.asarray(table, dtype=np.uint8)
    delta = np.diff(t.astype(np.int16), axis=1, prepend=0).astype(np.uint8)  # mod 256
    return zlib.compress(delta.tobytes(), 9)


def unpack_table(blob: bytes, num_channels: int, width: int = 1) -> np.ndarray:
    """Inverse of :func:`pack_table`; raises :class:`EntropyCodingError` on malformed tables."""
    try:
        raw = zlib.decompress(blob)
    except zlib.error as e:
        raise EntropyCodingError(f"frequency tables cannot be decompressed ({e})") from e
    entries = ALPHABET // int(width)
    if len(raw) != num_channels * entries:
        raise EntropyCodingError(f"frequency tables hold {len(raw)} bytes, expected {num_channels * entries}")
    delta = np.frombuffer(raw, dtype=np.uint8).reshape(num_channels, entries)
    return np.cumsum(delta.astype(np.int64), axis=1).astype(np.uint8)  # wraps mod 256 like the encoder


# --- range coding ---------------------------------------------------------------------------------------

def _categorical(freq_row: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(np.ascontiguousarray(freq_row, dtype=np.float64), perfect=False)


def encode_codes(codes: np.ndarray, width: int | None = None, resolution: int | None = None
                 ) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Range-code a uint8 ``(N, C)`` array channel by channel.

    Returns ``(width, resolution, table uint8 (C, 256 / width), words uint32)``; ``None`` picks the
    cheapest (:func:`choose_table`).
    """
    import constriction

    codes = np.asarray(codes, dtype=np.uint8)
    counts = symbol_counts(codes)
    if width is None or resolution is None:
        width, resolution, table = choose_table(counts)
    else:
        table, _ = table_for(counts, width, resolution)
    freqs = table_frequencies(table, resolution, width)
    single = _single(table, width)
    enc = constriction.stream.queue.RangeEncoder()
    for ch in range(codes.shape[1]):
        if single[ch] or codes.shape[0] == 0:
            continue
        used = np.count_nonzero(table[ch])
        enc.encode(codes[:, ch].astype(np.int32), _categorical(freqs[ch] if used else UNIFORM))
    return int(width), int(resolution), table, np.asarray(enc.get_compressed(), dtype=np.uint32)


def decode_codes(words: np.ndarray, table: np.ndarray, num_symbols: int, width: int, resolution: int) -> np.ndarray:
    """Inverse of :func:`encode_codes`: restore the uint8 ``(N, C)`` array exactly."""
    import constriction

    if int(resolution) not in TABLE_RESOLUTIONS or int(width) not in BIN_WIDTHS:
        raise EntropyCodingError(f"unknown table layout (bin width {width}, resolution {resolution})")
    table = np.asarray(table, dtype=np.uint8)
    freqs = table_frequencies(table, resolution, width)
    single = _single(table, width)
    c = table.shape[0]
    out = np.zeros((num_symbols, c), dtype=np.uint8)
    if num_symbols == 0:
        return out
    dec = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    for ch in range(c):
        if single[ch]:
            out[:, ch] = np.flatnonzero(table[ch])[0]
            continue
        used = np.count_nonzero(table[ch])
        try:
            sym = np.asarray(dec.decode(_categorical(freqs[ch] if used else UNIFORM), num_symbols), dtype=np.int64)
        except Exception as e:  # constriction raises on exhausted or invalid data
            raise EntropyCodingError(f"channel {ch}: payload cannot be decoded ({e})") from e
        if sym.min() < 0 or sym.max() >= ALPHABET or (used and not (freqs[ch][sym] > 0).all()):
            raise EntropyCodingError(f"channel {ch}: decoded a code the frequency table marks unused (corrupt payload)")
        out[:, ch] = sym.astype(np.uint8)
    return out

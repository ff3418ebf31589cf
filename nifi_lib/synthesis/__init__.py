"""Sec. 3 Artifact Synthesis: prune a dense 3DGS scene to L geometrically spaced levels (GoDe importance),
fine-tune, store with 8-bit quantization + entropy coding (``.nifigs``), and render (clean, degraded) pairs.

Modules: ``schedule`` (level sizes, rate labels), ``importance`` (GoDe scores, top-k), ``finetune``,
``quantize`` (8-bit), ``entropy`` (range coding), ``codec`` (the ``.nifigs`` file), ``scene`` (reading
source scenes), ``pairs`` (layout, manifest, staging), ``proxy``, ``precomputed``, ``pipeline``, ``cli``.
"""
from .codec import BitstreamError, CodecStats, read_level, read_quantized, write_level
from .importance import gode_importance, prune_top_k, top_k_indices
from .schedule import level_sizes, rate_labels

__all__ = ["BitstreamError", "CodecStats", "gode_importance", "level_sizes", "prune_top_k", "rate_labels",
           "read_level", "read_quantized", "top_k_indices", "write_level"]

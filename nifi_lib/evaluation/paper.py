"""Table 1 of the paper (Sec. 4.2) as data: LPIPS / DISTS of every method on three datasets at three rates.

Transcribed once from ``shared/PAPER.md`` (the project's digest of arXiv 2602.04549); a test re-parses that
file and checks every number here. Rates are the HAC++ lambda values 0.1, 0.5, 1.0 (the smallest lambda gives
the largest file); sizes are the HAC++ stream sizes in MB. Lower LPIPS/DISTS is better.
"""
from __future__ import annotations

import math
import re

DATASETS = ("mipnerf360", "tanks_temples", "deepblending")
DATASET_TITLES = {"mipnerf360": "Mip-NeRF360", "tanks_temples": "Tanks & Temples", "deepblending": "DeepBlending"}
RATES = ("0.1", "0.5", "1.0")

# Table 1 method name -> rows (dataset -> (lpips, dists) at lambda 0.1, 0.5, 1.0)
_T = {
    "HAC++": {
        "mipnerf360": ((0.285, 0.158), (0.409, 0.201), (0.455, 0.220)),
        "tanks_temples": ((0.210, 0.113), (0.317, 0.169), (0.364, 0.193)),
        "deepblending": ((0.201, 0.161), (0.282, 0.215), (0.337, 0.249))},
    "+ BM3D": {
        "mipnerf360": ((0.308, 0.164), (0.423, 0.206), (0.466, 0.226)),
        "tanks_temples": ((0.225, 0.124), (0.325, 0.175), (0.371, 0.199)),
        "deepblending": ((0.209, 0.172), (0.286, 0.222), (0.340, 0.254))},
    "+ SwinIR": {
        "mipnerf360": ((0.346, 0.218), (0.436, 0.239), (0.468, 0.248)),
        "tanks_temples": ((0.281, 0.159), (0.350, 0.192), (0.381, 0.209)),
        "deepblending": ((0.236, 0.180), (0.290, 0.213), (0.333, 0.237))},
    "+ Img2Img (SD3)": {
        "mipnerf360": ((0.341, 0.156), (0.438, 0.200), (0.477, 0.220)),
        "tanks_temples": ((0.299, 0.128), (0.372, 0.174), (0.408, 0.197)),
        "deepblending": ((0.246, 0.169), (0.313, 0.218), (0.362, 0.249))},
    "+ DiffBIR": {
        "mipnerf360": ((0.350, 0.178), (0.417, 0.203), (0.446, 0.215)),
        "tanks_temples": ((0.283, 0.154), (0.338, 0.179), (0.375, 0.196)),
        "deepblending": ((0.298, 0.208), (0.368, 0.228), (0.410, 0.241))},
    "+ Difix3D": {
        "mipnerf360": ((0.238, 0.133), (0.300, 0.145), (0.330, 0.152)),
        "tanks_temples": ((0.165, 0.088), (0.235, 0.116), (0.272, 0.131)),
        "deepblending": ((0.158, 0.111), (0.216, 0.143), (0.257, 0.161))},
    "+ NiFi": {
        "mipnerf360": ((0.178, 0.109), (0.235, 0.133), (0.265, 0.153)),
        "tanks_temples": ((0.128, 0.076), (0.180, 0.095), (0.212, 0.109)),
        "deepblending": ((0.133, 0.101), (0.180, 0.131), (0.218, 0.156))},
    "+ NiFi w/o t0": {
        "mipnerf360": ((0.211, 0.129), (0.287, 0.174), (0.324, 0.197)),
        "tanks_temples": ((0.153, 0.104), (0.229, 0.147), (0.269, 0.173)),
        "deepblending": ((0.162, 0.147), (0.231, 0.193), (0.282, 0.223))},
}
# our method keys -> Table 1 row titles (HAC++ alone = the compressed render, our "none")
METHOD_ROWS = {"hacpp": "HAC++", "bm3d": "+ BM3D", "swinir": "+ SwinIR", "img2img": "+ Img2Img (SD3)",
               "diffbir": "+ DiffBIR", "difix3d": "+ Difix3D", "nifi": "+ NiFi", "nifi_wo_t0": "+ NiFi w/o t0"}
METHODS = tuple(METHOD_ROWS)
# the restoration methods of this repo that have a Table 1 row
OUR_METHOD_TO_PAPER = {"none": "hacpp", "bm3d": "bm3d", "img2img": "img2img", "nifi": "nifi", "nifi_wo_t0": "nifi_wo_t0"}

TABLE1: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    m: {d: {r: {"lpips": v[0], "dists": v[1]} for r, v in zip(RATES, _T[title][d])} for d in DATASETS}
    for m, title in METHOD_ROWS.items()}

SIZES_MB: dict[str, dict[str, float]] = {
    "mipnerf360": dict(zip(RATES, (1.152, 0.357, 0.223))),
    "tanks_temples": dict(zip(RATES, (1.312, 0.381, 0.230))),
    "deepblending": dict(zip(RATES, (0.599, 0.183, 0.110))),
}
UNCOMPRESSED_3DGS: dict[str, dict[str, float]] = {   # 3DGS-30K
    "mipnerf360": {"size_mb": 576.0, "lpips": 0.156, "dists": 0.078},
    "tanks_temples": {"size_mb": 339.0, "lpips": 0.125, "dists": 0.067},
    "deepblending": {"size_mb": 555.0, "lpips": 0.125, "dists": 0.098},
}

_DATASET_ALIASES = {
    "mipnerf360": "mipnerf360", "mip-nerf360": "mipnerf360", "mipnerf-360": "mipnerf360", "mip_nerf_360": "mipnerf360",
    "mip-nerf-360": "mipnerf360", "mip_nerf360": "mipnerf360", "m360": "mipnerf360", "360_v2": "mipnerf360",
    "tanks_temples": "tanks_temples", "tanksandtemples": "tanks_temples", "tanks-temples": "tanks_temples",
    "tanks_and_temples": "tanks_temples", "tandt": "tanks_temples", "tnt": "tanks_temples", "t&t": "tanks_temples",
    "deepblending": "deepblending", "deep_blending": "deepblending", "deep-blending": "deepblending",
    "db": "deepblending",
}


def canonical_dataset(name: str) -> str | None:
    """``mipnerf360`` / ``tanks_temples`` / ``deepblending`` for common spellings; None if not in Table 1."""
    key = str(name).strip().lower().replace(" ", "_")
    return _DATASET_ALIASES.get(key)


def canonical_rate(label) -> str | None:
    """``"0.1"``/``"0.5"``/``"1.0"`` for labels like ``rate_0.1``, ``0.10``, ``lambda_1``, 1.0; else None."""
    s = str(label).strip().lower()
    s = re.sub(r"^(rate|lambda|lam)[_-]?", "", s)
    try:
        v = float(s)
    except ValueError:
        return None
    for r in RATES:
        if math.isclose(v, float(r), rel_tol=0, abs_tol=1e-9):
            return r
    return None


def canonical_method(name: str) -> str | None:
    """Our method name or a Table 1 key -> Table 1 key (``none`` -> ``hacpp``); None if not in Table 1."""
    raw = str(name).strip().lower()
    if raw in ("hac++", "+ hac++"):
        return "hacpp"
    key = raw.replace("+", "").strip().replace("-", "_").replace(" ", "_")
    key = {"hac": "hacpp", "nifi_w/o_t0": "nifi_wo_t0", "img2img_(sd3)": "img2img"}.get(key, key)
    if key in OUR_METHOD_TO_PAPER:
        return OUR_METHOD_TO_PAPER[key]
    return key if key in TABLE1 else None


def lookup(method: str, dataset: str, rate) -> dict[str, float] | None:
    """``{"lpips", "dists", "size_mb"}`` of Table 1, or None when the method/dataset/rate is not in it."""
    m, d, r = canonical_method(method), canonical_dataset(dataset), canonical_rate(rate)
    if m is None or d is None or r is None:
        return None
    return {**TABLE1[m][d][r], "size_mb": SIZES_MB[d][r]}


def table_rows():
    """Flat rows ``(method, dataset, rate, lpips, dists, size_mb)`` (for notebooks and tests)."""
    for m in METHODS:
        for d in DATASETS:
            for r in RATES:
                v = TABLE1[m][d][r]
                yield m, d, r, v["lpips"], v["dists"], SIZES_MB[d][r]


__all__ = ["DATASETS", "DATASET_TITLES", "RATES", "METHODS", "METHOD_ROWS", "OUR_METHOD_TO_PAPER", "TABLE1",
           "SIZES_MB", "UNCOMPRESSED_3DGS", "canonical_dataset", "canonical_rate", "canonical_method", "lookup",
           "table_rows"]

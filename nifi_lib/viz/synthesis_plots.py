"""Figures and tables of notebook 01 (Sec. 3 Artifact Synthesis). Style: :mod:`nifi_lib.viz.style`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .style import METHOD_COLORS, PANEL_INCH

LEVEL_COLORS = {"0.1": "#2ca02c", "0.5": "#ff7f0e", "1.0": "#d62728"}


def _to_hwc(img) -> np.ndarray:
    try:
        import torch

        if torch.is_tensor(img):
            return img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(img)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a


def plot_render_vs_gt(gt, rendered, title_gt: str = "ground truth", title_render: str = "3DGS render",
                      extra: dict | None = None):
    """Ground truth next to a render (and optional extra panels ``{title: image}``)."""
    panels = [(title_gt, gt), (title_render, rendered)] + list((extra or {}).items())
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_INCH * len(panels), PANEL_INCH + 0.3))
    for ax, (t, im) in zip(np.atleast_1d(axes), panels):
        ax.imshow(_to_hwc(im))
        ax.set_title(t)
        ax.axis("off")
    return fig


def plot_schedule(num_gaussians: int, sizes: Sequence[int], c_min: int, labels: Sequence[str]):
    """Sec. 3 level sizes: |G_l| = c_min exp(l (log N_top - log c_min)/(L-1)) on a log axis, with N for reference."""
    L = len(sizes)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    if L > 1:
        ls = np.linspace(0, L - 1, 100)
        curve = c_min * np.exp(ls * (math.log(sizes[-1]) - math.log(c_min)) / (L - 1))
        ax.plot(ls, curve, color="0.6", lw=1, label=r"$c_{min}\,e^{l(\log N_{top}-\log c_{min})/(L-1)}$")
    for l, (k, lab) in enumerate(zip(sizes, labels)):
        ax.plot(l, k, "o", ms=8, color=LEVEL_COLORS.get(lab, "C0"))
        ax.annotate(f"G_{l}: {k:,} (rate {lab})", (l, k), xytext=(8, -4), textcoords="offset points", fontsize=9)
    ax.axhline(num_gaussians, color=METHOD_COLORS["uncompressed"], ls="--", lw=1, label=f"dense scene N = {num_gaussians:,}")
    ax.set_yscale("log")
    ax.set_xticks(range(L))
    ax.set_xlabel("level l")
    ax.set_ylabel("primitives |G_l|")
    ax.set_xlim(-0.3, L - 0.3 + 0.9)
    ax.set_title("Pruning schedule (Sec. 3)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _crop_box(h: int, w: int, crop: Sequence[float] | None) -> tuple[int, int, int, int]:
    """(y0, x0, size_y, size_x) of a square crop; ``crop = (cy, cx, frac)`` in relative units."""
    cy, cx, frac = crop if crop is not None else (0.5, 0.5, 0.3)
    s = max(4, int(round(frac * min(h, w))))
    y0 = int(np.clip(round(cy * h - s / 2), 0, h - s))
    x0 = int(np.clip(round(cx * w - s / 2), 0, w - s))
    return y0, x0, s, s


def plot_rate_grid(clean, degraded: dict, psnrs: dict | None = None, crop: Sequence[float] | None = None,
                   title: str | None = None):
    """Row 1: clean | one panel per rate (largest level first); row 2: the same zoomed crop of each."""
    from .rates import rate_labels

    rl = {k: v.replace(" (", "\n(", 1) for k, v in rate_labels(list(degraded)).items()}   # which file is largest
    cols = [("clean (ground truth)", clean)] + [(rl[k] + (f"\n{psnrs[k]:.2f} dB" if psnrs and k in psnrs else ""), v)
                                                for k, v in degraded.items()]
    imgs = [_to_hwc(im) for _, im in cols]
    h, w = imgs[0].shape[:2]
    y0, x0, sy, sx = _crop_box(h, w, crop)
    fig, axes = plt.subplots(2, len(cols), figsize=(PANEL_INCH * len(cols), 2 * PANEL_INCH + 0.6))
    for j, ((t, _), im) in enumerate(zip(cols, imgs)):
        axes[0, j].imshow(im)
        axes[0, j].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), sx, sy, fill=False, ec="yellow", lw=1.2))
        axes[0, j].set_title(t)
        axes[1, j].imshow(im[y0:y0 + sy, x0:x0 + sx], interpolation="nearest")
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    axes[1, 0].set_ylabel("zoom")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def levels_table(levels: Sequence[dict], full: dict | None = None) -> str:
    """Markdown table of levels (dicts with label, level, num_gaussians, bytes, raw_8bit_bytes, zlib_bytes,
    lzma_bytes, psnr); ``full`` = {"num_gaussians", "bytes", "psnr"} of the uncompressed scene."""
    head = ("| rate | level | primitives | file (MB) | raw 8-bit (MB) | zlib (MB) | lzma (MB) | x smaller than PLY "
            "| PSNR test (dB) |\n|---|---|---|---|---|---|---|---|---|")
    rows = []
    if full:
        rows.append(f"| dense | - | {full['num_gaussians']:,} | {full['bytes'] / 1e6:.3f} (PLY) | - | - | - | 1 "
                    f"| {full.get('psnr', float('nan')):.2f} |")
    for lv in levels:
        ratio = (full["bytes"] / lv["bytes"]) if full and lv.get("bytes") else float("nan")
        mb = lambda k: f"{lv[k] / 1e6:.4f}" if lv.get(k) is not None else "-"  # noqa: E731
        rows.append(f"| {lv['label']} | {lv.get('level', '-')} | {lv.get('num_gaussians') or 0:,} | {mb('bytes')} | "
                    f"{mb('raw_8bit_bytes')} | {mb('zlib_bytes')} | {mb('lzma_bytes')} | {ratio:.0f} | "
                    f"{lv.get('psnr', float('nan')):.2f} |")
    return "\n".join([head] + rows)


def plot_rate_distortion(levels: Sequence[dict], full: dict | None = None, title: str = "Rate-distortion (test views)"):
    """PSNR vs size on disk (log x) for each level; the dense scene as reference, annotated x-times smaller."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    lv = sorted(levels, key=lambda d: d["bytes"])
    xs = [d["bytes"] / 1e6 for d in lv]
    ys = [d["psnr"] for d in lv]
    ax.plot(xs, ys, "-", color=METHOD_COLORS["nifi"], lw=1.2, label="pruned + 8-bit + range coded")
    from .rates import rate_labels

    rl = rate_labels([d["label"] for d in lv], {d["label"]: d["bytes"] / 1e6 for d in lv})
    for d, x, y in zip(lv, xs, ys):
        ax.plot(x, y, "o", ms=7, color=LEVEL_COLORS.get(d["label"], "C0"))
        note = rl[d["label"]].replace(" (", "\n(", 1)
        if full:
            note += f"\n{full['bytes'] / d['bytes']:.0f}x smaller"
        ax.annotate(note, (x, y), xytext=(6, -16), textcoords="offset points", fontsize=8)
    if full:
        fx = full["bytes"] / 1e6
        ax.plot(fx, full["psnr"], "s", ms=7, color=METHOD_COLORS["uncompressed"], label="dense 3DGS (PLY, float32)")
        ax.annotate(f"dense: {full['num_gaussians']:,} Gaussians", (fx, full["psnr"]), xytext=(-8, -14),
                    textcoords="offset points", fontsize=8, ha="right")
        ax.axhline(full["psnr"], color=METHOD_COLORS["uncompressed"], ls=":", lw=1)
    top = max(ys + ([full["psnr"]] if full else []))
    ax.set_ylim(min(ys) - 0.15 * (top - min(ys) + 1), top + 0.08 * (top - min(ys) + 1))
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    if full:
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, max(hi, full["bytes"] / 1e6 * 2))
    return fig


def read_pair(pairs_dir: str | Path, label: str, split: str, name: str):
    """(clean, degraded) uint8 arrays of one view from the pair layout."""
    from ..io.images import read_rgb

    d = Path(pairs_dir) / f"rate_{label}" / split
    return read_rgb(d / "clean" / f"{name}.png"), read_rgb(d / "degraded" / f"{name}.png")


def rate_pairs(pairs_dir: str | Path, manifest: dict, split: str, name: str):
    """One view at every level of a ``codec_pairs`` manifest: ``(clean, {label: degraded}, {label: PSNR})``,
    uint8 arrays in the manifest's level order and each level's PSNR over the split."""
    labels = [lv["label"] for lv in manifest["levels"]]
    clean, _ = read_pair(pairs_dir, labels[0], split, name)
    degraded = {lab: read_pair(pairs_dir, lab, split, name)[1] for lab in labels}
    return clean, degraded, {lv["label"]: lv["psnr"] for lv in manifest["levels"]}


def format_levels(levels: Sequence[dict]) -> str:
    """One line per coded level of a synthesis (``meta["levels"]``): primitives, file bytes and their parts,
    the entropy bound and the raw / zlib / lzma sizes of the same codes."""
    return "\n".join(
        f"level {lv['level']} (rate {lv['label']}): {lv['num_gaussians']:>7,} Gaussians  file {lv['bytes']:>9,} B  "
        f"(header {lv['header_bytes']} + tables {lv['table_bytes']} + payload {lv['payload_bytes']:,}; entropy bound "
        f"{lv['entropy_bound_bytes']:,.0f})  raw 8-bit {lv['raw_8bit_bytes']:,}  zlib {lv['zlib_bytes']:,}  "
        f"lzma {lv['lzma_bytes']:,}  [{lv['seconds']:.1f} s]" for lv in levels)


def level_rows(levels: Sequence[dict], psnrs: dict) -> list[dict]:
    """The levels of a synthesis, highest level (largest file) first, each with its test PSNR (``psnrs[label]``):
    the rows of :func:`levels_table` and :func:`plot_rate_distortion`."""
    return [{**lv, "psnr": psnrs[lv["label"]]} for lv in sorted(levels, key=lambda d: -d["level"])]


def level_numbers(rows: Sequence[dict], full_bytes: int) -> dict[str, dict[str, float]]:
    """Per rate label: the level's bytes, test PSNR, compression factor against the dense PLY (``full_bytes``)
    and zlib bytes, keyed as notebook 01 records them."""
    return {"level_bytes": {lv["label"]: lv["bytes"] for lv in rows},
            "level_psnr_test": {lv["label"]: lv["psnr"] for lv in rows},
            "compression_x": {lv["label"]: full_bytes / lv["bytes"] for lv in rows},
            "zlib_bytes": {lv["label"]: lv["zlib_bytes"] for lv in rows}}

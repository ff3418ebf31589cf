"""Side-by-side looks at restored frames: crops, difference maps, a split composite, grids (notebook 08).

Everything works on ``(H, W, 3)`` float arrays in [0, 1] (tensors ``(3, H, W)`` and uint8 arrays are
converted by :func:`as_image`) and returns plain data: the pure functions return arrays, the figure builders
return a :class:`PanelGrid` (panels, titles, the crop box) whose ``.figure()`` draws it with matplotlib in the
series' style and ``.save(name)`` writes ``figures/<name>.png`` through :func:`nifi_lib.viz.style.save_figure`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .style import DIFF_CMAP, METHOD_COLORS, PANEL_INCH

REFERENCE_COLOR = METHOD_COLORS["uncompressed"]   # clean frames
INPUT_COLOR = METHOD_COLORS["none"]               # compressed renders
_FALLBACK = ("#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")


def method_color(name: str) -> str:
    """The series' colour of a method (``clean``/``degraded`` included); unknown names get a stable colour."""
    if name == "clean":
        return REFERENCE_COLOR
    if name == "degraded":
        return INPUT_COLOR
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return _FALLBACK[sum(map(ord, name)) % len(_FALLBACK)]


def as_image(img) -> np.ndarray:
    """``(H, W, 3)`` float32 in [0, 1] from a ``(3, H, W)`` tensor, a uint8 or float ``(H, W[, 3])`` array."""
    try:
        import torch

        if torch.is_tensor(img):
            t = img.detach().float().cpu()
            if t.ndim == 3 and t.shape[0] in (1, 3):
                t = t.permute(1, 2, 0)
            img = t.numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(img)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image (H, W, 3) or (3, H, W), got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(a, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# crop boxes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """A rectangle in pixels of the full frame: columns ``x:x+w``, rows ``y:y+h``."""

    x: int
    y: int
    w: int
    h: int

    def clip(self, width: int, height: int) -> "CropBox":
        """The box shrunk to fit a ``width x height`` frame and shifted inside it (same size when possible)."""
        w, h = max(1, min(int(self.w), width)), max(1, min(int(self.h), height))
        x, y = min(max(0, int(self.x)), width - w), min(max(0, int(self.y)), height - h)
        return CropBox(x, y, w, h)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)

    def overlaps(self, other: "CropBox") -> bool:
        return not (self.x + self.w <= other.x or other.x + other.w <= self.x
                    or self.y + self.h <= other.y or other.y + other.h <= self.y)

    @classmethod
    def centered(cls, width: int, height: int, frac: float = 0.4) -> "CropBox":
        """A square box of ``frac`` of the shorter side in the middle of the frame."""
        s = max(1, int(round(min(width, height) * frac)))
        return cls((width - s) // 2, (height - s) // 2, s, s)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


def crop(img, box: CropBox) -> np.ndarray:
    """The pixels of ``img`` inside ``box`` (clipped to the frame)."""
    a = as_image(img)
    b = box.clip(a.shape[1], a.shape[0])
    ys, xs = b.slices()
    return a[ys, xs]


def diff_map(img, ref, reduce: str | None = "mean") -> np.ndarray:
    """``|img - ref|`` per pixel: ``(H, W)`` averaged over RGB (``reduce="mean"``), ``"max"``, or ``(H, W, 3)``."""
    a, b = as_image(img), as_image(ref)
    if a.shape != b.shape:
        raise ValueError(f"diff_map: shapes differ {a.shape} vs {b.shape}")
    d = np.abs(a - b)
    if reduce is None:
        return d
    if reduce == "mean":
        return d.mean(axis=-1)
    if reduce == "max":
        return d.max(axis=-1)
    raise ValueError(f"reduce must be 'mean', 'max' or None, got {reduce!r}")


def split_composite(a, b, position: int) -> np.ndarray:
    """The before/after split: columns ``[0, position)`` from ``a``, the rest from ``b`` (position clipped)."""
    a, b = as_image(a), as_image(b)
    if a.shape != b.shape:
        raise ValueError(f"split_composite: shapes differ {a.shape} vs {b.shape}")
    p = int(min(max(int(position), 0), a.shape[1]))
    out = b.copy()
    out[:, :p] = a[:, :p]
    return out


def paste_boxes(base, source, boxes: Sequence[CropBox]) -> np.ndarray:
    """``base`` with the pixels of ``source`` inside every box (the paper's Fig. 3 overlay)."""
    out, src = as_image(base).copy(), as_image(source)
    if out.shape != src.shape:
        raise ValueError(f"paste_boxes: shapes differ {out.shape} vs {src.shape}")
    for bx in boxes:
        ys, xs = bx.clip(out.shape[1], out.shape[0]).slices()
        out[ys, xs] = src[ys, xs]
    return out


def resize_nearest(img, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W[, C])`` array to ``height x width`` (pixels stay visible)."""
    a = np.asarray(img)
    ys = (np.arange(max(1, int(height))) * a.shape[0]) // max(1, int(height))
    xs = (np.arange(max(1, int(width))) * a.shape[1]) // max(1, int(width))
    return a[ys][:, xs]


def frame_with_zooms(img, boxes: Sequence[CropBox], gap: int = 2, background: float = 1.0
                     ) -> tuple[np.ndarray, list[CropBox]]:
    """The full frame ``img`` with its ``boxes`` enlarged beside it (right), stacked top to bottom.

    Returns ``(composite, zoom_boxes)``: ``composite[:H, :W]`` is exactly ``img``; zoom ``k`` (the crop of
    ``boxes[k]`` resized by nearest neighbour to the height of one slot, aspect kept; a slot is ``H / n`` and
    never smaller than the box, so a zoom never shrinks - the composite then grows below ``H``) sits at
    ``zoom_boxes[k]`` in the composite; the rest is ``background``. No boxes: just the frame."""
    a = as_image(img)
    H, W = a.shape[:2]
    bxs = [b.clip(W, H) for b in boxes]
    if not bxs:
        return a.copy(), []
    n = len(bxs)
    slot = max(1, (H - gap * (n - 1)) // n, max(b.h for b in bxs))
    sizes = [(slot, max(1, int(round(b.w * slot / b.h)))) for b in bxs]
    zw = max(w for _, w in sizes)
    out = np.full((max(H, n * slot + gap * (n - 1)), W + gap + zw, 3), background, dtype=np.float32)
    out[:H, :W] = a
    zooms = []
    for k, (b, (h, w)) in enumerate(zip(bxs, sizes)):
        y, x = k * (slot + gap), W + gap
        out[y:y + h, x:x + w] = resize_nearest(crop(a, b), h, w)
        zooms.append(CropBox(x, y, w, h))
    return out, zooms


def hex_rgb(color: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(color), dtype=np.float32)


def draw_box(img, box: CropBox, color: str = "#ffffff", thickness: int = 1) -> np.ndarray:
    """A copy of ``img`` with the outline of ``box`` drawn inside its border pixels."""
    out = as_image(img).copy()
    b = box.clip(out.shape[1], out.shape[0])
    c = hex_rgb(color)
    t = max(1, min(int(thickness), b.w, b.h))
    out[b.y:b.y + t, b.x:b.x + b.w] = c
    out[b.y + b.h - t:b.y + b.h, b.x:b.x + b.w] = c
    out[b.y:b.y + b.h, b.x:b.x + t] = c
    out[b.y:b.y + b.h, b.x + b.w - t:b.x + b.w] = c
    return out


def upscale(img, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (pixels stay visible)."""
    a = np.asarray(img)
    f = max(1, int(factor))
    return a if f == 1 else np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def colorize(values: np.ndarray, vmax: float | None = None, cmap: str = DIFF_CMAP) -> np.ndarray:
    """A ``(H, W)`` map -> ``(H, W, 3)`` RGB with ``cmap`` over ``[0, vmax]`` (``vmax`` default: the map's max)."""
    import matplotlib

    v = np.asarray(values, dtype=np.float32)
    top = float(vmax) if vmax else float(v.max()) or 1.0
    return matplotlib.colormaps[cmap](np.clip(v / top, 0, 1))[..., :3].astype(np.float32)


def pick_boxes(clean, degraded, n: int = 2, frac: float = 0.3, exclude: Sequence[CropBox] = (),
               gap: int = 2) -> list[CropBox]:
    """``n`` square boxes (side ``frac`` of the shorter side) where ``|degraded - clean|`` summed over the box is
    largest, at least ``gap`` pixels apart. Exhaustive over positions (integral image); ties go to the
    top-left-most box. Deterministic.
    """
    err = diff_map(degraded, clean)
    H, W = err.shape
    s = max(1, int(round(min(H, W) * frac)))
    ii = np.zeros((H + 1, W + 1), dtype=np.float64)
    ii[1:, 1:] = err.cumsum(0).cumsum(1)
    sums = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]   # (H-s+1, W-s+1), top-left anchored
    boxes: list[CropBox] = []
    taken = list(exclude)
    order = np.argsort(-sums, axis=None, kind="stable")
    for flat in order:
        y, x = divmod(int(flat), sums.shape[1])
        b = CropBox(x, y, s, s)
        grown = CropBox(x - gap, y - gap, s + 2 * gap, s + 2 * gap)
        if any(grown.overlaps(t) for t in taken):
            continue
        boxes.append(b)
        taken.append(b)
        if len(boxes) >= n:
            break
    return boxes


# ------------------------------------------------------------------------------------------------
# panels and grids
# ------------------------------------------------------------------------------------------------
@dataclass
class Panel:
    """One image of a grid. ``kind``: ``image`` (RGB), ``diff`` (a ``(H, W)`` map shown with ``DIFF_CMAP``)
    or ``blank``. ``boxes`` are outlined on top in ``color``."""

    title: str
    image: np.ndarray | None
    kind: str = "image"
    color: str | None = None
    boxes: list[CropBox] = field(default_factory=list)
    vmax: float | None = None


@dataclass
class PanelGrid:
    """Rows of panels with optional row labels; ``figure()`` draws it, ``save(name)`` writes the PNG."""

    rows: list[list[Panel]]
    row_labels: list[str] = field(default_factory=list)
    title: str | None = None
    crop: CropBox | None = None
    columns: list[str] = field(default_factory=list)
    panel_inch: float = PANEL_INCH
    note: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), max((len(r) for r in self.rows), default=0))

    @property
    def titles(self) -> list[list[str]]:
        return [[p.title for p in r] for r in self.rows]

    @property
    def panels(self) -> list[Panel]:
        return [p for r in self.rows for p in r]

    def figure(self):
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        nr, nc = self.shape
        heights = []
        for r in self.rows:
            ratios = [p.image.shape[0] / p.image.shape[1] for p in r if p.image is not None]
            heights.append(max(ratios, default=1.0))
        fig_h = self.panel_inch * sum(heights) + 0.35 * nr + (0.4 if self.title else 0) + (0.3 if self.note else 0)
        fig, axes = plt.subplots(nr, nc, figsize=(self.panel_inch * nc + (0.5 if self.row_labels else 0), fig_h),
                                 squeeze=False, gridspec_kw={"height_ratios": heights}, layout="constrained")
        for i, row in enumerate(self.rows):
            for j in range(nc):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for sp in ax.spines.values():
                    sp.set_visible(False)
                if j >= len(row) or row[j].kind == "blank" or row[j].image is None:
                    if j < len(row):
                        ax.set_title(row[j].title)
                    continue
                p = row[j]
                if p.kind == "diff":
                    im = ax.imshow(p.image, cmap=DIFF_CMAP, vmin=0, vmax=p.vmax or float(p.image.max()) or 1.0,
                                   interpolation="nearest")
                    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
                    cb.ax.tick_params(labelsize=7)
                else:
                    ax.imshow(p.image, interpolation="nearest", vmin=0, vmax=1)
                for b in p.boxes:
                    ax.add_patch(Rectangle((b.x - 0.5, b.y - 0.5), b.w, b.h, fill=False, lw=1.6,
                                           edgecolor=p.color or "#ffffff"))
                ax.set_title(p.title, color=p.color if p.color and p.kind == "image" and p.boxes else "black")
                if p.color and p.kind == "image":
                    for sp in ax.spines.values():
                        sp.set_visible(True)
                        sp.set_edgecolor(p.color)
                        sp.set_linewidth(1.5)
            if i < len(self.row_labels) and self.row_labels[i]:
                axes[i][0].set_ylabel(self.row_labels[i], fontsize=9)
        if self.title:
            fig.suptitle(self.title)
        if self.note:
            fig.supxlabel(self.note, fontsize=8, color="0.35")
        return fig

    def save(self, name: str | Path, folder: str | Path | None = None) -> Path:
        """Write the figure: a bare name -> ``figures/<name>.png`` (:func:`save_figure`); a path -> that file."""
        return _save(self.figure, name, folder)


def _save(make_figure, name: str | Path, folder: str | Path | None) -> Path:
    """Build the figure, write it (a bare name -> ``figures/<name>.png``; a path -> that file) and close it."""
    import matplotlib.pyplot as plt

    from .style import save_figure

    p = Path(name)
    if folder is None and (p.suffix == ".png" or len(p.parts) > 1):
        folder, name = p.parent, p.stem if p.suffix == ".png" else p.name
    fig = make_figure()
    try:
        return save_figure(fig, str(name), folder)
    finally:
        plt.close(fig)


def _metric_caption(metrics: Mapping | None) -> str:
    if not metrics:
        return ""
    if metrics.get("lpips") is not None:
        return f"LPIPS {metrics['lpips']:.3f}"
    if metrics.get("psnr") is not None:
        return f"{metrics['psnr']:.1f} dB"
    return ""


def _title(name: str, metrics: Mapping | None = None) -> str:
    cap = _metric_caption(metrics)
    return f"{name}\n{cap}" if cap else name


def comparison_grid(clean, degraded, restored: Mapping[str, object], crop_box: CropBox | None = None,
                    diff: bool = True, metrics: Mapping[str, Mapping] | None = None, title: str | None = None,
                    zoom_frac: float = 0.4) -> PanelGrid:
    """Columns clean | degraded | each method; rows: the full frame with the crop box drawn, the zoomed crop
    (the same box for every column) and, with ``diff``, ``|x - clean|`` of the crop (one colour scale)."""
    clean = as_image(clean)
    H, W = clean.shape[:2]
    box = (crop_box or CropBox.centered(W, H, zoom_frac)).clip(W, H)
    cols = [("clean", clean), ("degraded", as_image(degraded))] + [(m, as_image(x)) for m, x in restored.items()]
    metrics = metrics or {}
    full = [Panel(_title(n, metrics.get(n)), x, color=method_color(n), boxes=[box]) for n, x in cols]
    zoom = [Panel(f"{n} (zoom)", crop(x, box), color=method_color(n)) for n, x in cols]
    rows, labels = [full, zoom], ["full frame", f"crop {box.w}x{box.h} at ({box.x}, {box.y})"]
    if diff:
        diffs = [diff_map(crop(x, box), crop(clean, box)) for _, x in cols]
        vmax = max(float(d.max()) for d in diffs) or 1.0
        rows.append([Panel("", None, kind="blank")] +
                     [Panel(f"|{n} - clean|", d, kind="diff", vmax=vmax) for (n, _), d in zip(cols[1:], diffs[1:])])
        labels.append("difference (crop)")
    return PanelGrid(rows, labels, title, box, [n for n, _ in cols])


def diff_grid(clean, images: Mapping[str, object], title: str | None = None) -> PanelGrid:
    """Full-frame difference maps ``|x - clean|`` of each image, one shared colour scale."""
    diffs = {n: diff_map(x, clean) for n, x in images.items()}
    vmax = max((float(d.max()) for d in diffs.values()), default=1.0) or 1.0
    return PanelGrid([[Panel(f"|{n} - clean|", d, kind="diff", vmax=vmax) for n, d in diffs.items()]],
                     title=title, columns=list(diffs))


@dataclass
class SplitView:
    """A before/after split at column ``position``: ``composite`` = left from ``before``, right from ``after``."""

    before: np.ndarray
    after: np.ndarray
    position: int
    labels: tuple[str, str] = ("degraded", "restored")
    crop: CropBox | None = None

    @property
    def composite(self) -> np.ndarray:
        return split_composite(self.before, self.after, self.position)

    def grid(self) -> PanelGrid:
        boxes = [self.crop] if self.crop else []
        return PanelGrid([[Panel(f"{self.labels[0]} | {self.labels[1]} (split at x = {self.position})",
                                 self.composite, color=method_color(self.labels[1]), boxes=boxes)]], crop=self.crop,
                         panel_inch=PANEL_INCH * 1.6)

    def figure(self):
        fig = self.grid().figure()
        ax = fig.axes[0]
        ax.axvline(self.position - 0.5, color="white", lw=1.2)
        return fig

    def save(self, name: str | Path, folder: str | Path | None = None) -> Path:
        """As :meth:`PanelGrid.save`."""
        return _save(self.figure, name, folder)


def split_view(before, after, position: int | float | None = None, labels: tuple[str, str] = ("degraded", "restored"),
               crop_box: CropBox | None = None) -> SplitView:
    """:class:`SplitView`; ``position`` in columns (a float in (0, 1) is a fraction of the width; None: middle)."""
    b, a = as_image(before), as_image(after)
    W = b.shape[1]
    if position is None:
        position = W // 2
    elif isinstance(position, float) and 0 < position < 1:
        position = int(round(position * W))
    return SplitView(b, a, int(min(max(int(position), 0), W)), labels, crop_box)


__all__ = ["CropBox", "Panel", "PanelGrid", "SplitView", "as_image", "crop", "diff_map", "split_composite",
           "paste_boxes", "resize_nearest", "frame_with_zooms", "draw_box", "upscale", "colorize", "pick_boxes", "method_color", "comparison_grid",
           "diff_grid", "split_view", "REFERENCE_COLOR", "INPUT_COLOR"]

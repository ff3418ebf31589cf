"""Paper-style figures of restored frames (notebook 08): the Fig. 3 overlay and contact sheets per rate.

- :func:`fig3_overlay` - the paper's Fig. 3: one column per image (the compressed render, each method's
  restoration, the clean reference), each showing that image's *full frame* with 1-2 highlighted boxes
  (outlined in the column's colour) and the boxes enlarged beside it; one row per example view.
- :func:`contact_sheet` - rows: views; columns: clean, degraded, each method.
- :func:`save_rate_figures` - either of them for every rate of a run, saved through a notebook's
  :class:`~nifi_lib.viz.style.FigureLog` (:func:`export_rate_figures`: both, closed after saving).

Both return a :class:`nifi_lib.viz.compare.PanelGrid` (``.figure()``, ``.save(name)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..evaluation.outputs import RunIndex, ViewImages
from .compare import (INPUT_COLOR, REFERENCE_COLOR, CropBox, Panel, PanelGrid, _metric_caption, _title,
                      frame_with_zooms, method_color, pick_boxes)
from .rates import pairs_sizes_mb, rate_label
from .style import PANEL_INCH, FigureLog


def display_methods(index: RunIndex, methods: Sequence[str] | None = None) -> list[str]:
    """``methods`` that the run has (in the run's order), or all of them except ``none`` (= the degraded input)."""
    if methods:
        missing = [m for m in methods if m not in index.methods]
        if missing:
            from ..evaluation.outputs import OutputsError

            raise OutputsError(f"{index.outputs_root}: no outputs of {', '.join(missing)} "
                               f"(have: {', '.join(index.methods) or 'none'})")
        return list(methods)
    return [m for m in index.methods if m != "none"]


def fig3_overlay(examples: Sequence[ViewImages], methods: Sequence[str], boxes: Sequence[Sequence[CropBox]] | None = None,
                 n_boxes: int = 2, box_frac: float = 0.3, title: str | None = None, note: str | None = None,
                 reference: bool = True, sizes_mb: dict[str, float] | None = None,
                 rates: Sequence[str] | None = None) -> PanelGrid:
    """Fig. 3 style: per example, every column is one image's full frame (compressed, each of ``methods``, the
    clean reference) with the same boxes outlined and enlarged beside it (:func:`frame_with_zooms`).

    ``boxes[i]`` are example ``i``'s boxes; default: :func:`pick_boxes` (where the compressed render is worst).
    Row labels name the rate with its file size (``sizes_mb``, measured) or its place among ``rates``.
    """
    rows, labels = [], []

    def panel(name: str, img, color: str, bxs: list[CropBox], metrics=None) -> Panel:
        composite, zooms = frame_with_zooms(img, bxs)
        return Panel(_title(name, metrics), composite, color=color, boxes=[*bxs, *zooms])

    for i, ex in enumerate(examples):
        bxs = list(boxes[i]) if boxes is not None else pick_boxes(ex.clean, ex.degraded, n_boxes, box_frac)
        row = [panel("compressed", ex.degraded, INPUT_COLOR, bxs, ex.metrics.get("degraded"))]
        for m in methods:
            if m not in ex.restored:
                row.append(Panel(f"{m}\n(no output)", None, kind="blank"))
                continue
            row.append(panel(m, ex.restored[m], method_color(m), bxs, ex.metrics.get(m)))
        if reference:
            row.append(panel("clean (reference)", ex.clean, REFERENCE_COLOR, bxs))
        rows.append(row)
        labels.append(f"{ex.view.label}\n{rate_label(ex.view.rate, sizes_mb, rates)}")
    cols = ["compressed", *methods] + (["clean"] if reference else [])
    return PanelGrid(rows, labels, title, None, cols, panel_inch=PANEL_INCH * 1.4, note=note)


def contact_sheet(views: Sequence[ViewImages], methods: Sequence[str], title: str | None = None,
                  note: str | None = None, panel_inch: float = PANEL_INCH * 0.6) -> PanelGrid:
    """Rows: views; columns: clean, degraded, each method (metric of the view in the title when known)."""
    rows, labels = [], []
    for i, ex in enumerate(views):
        def t(name, key):   # names on the first row only, the view's metric on every row
            cap = _metric_caption(ex.metrics.get(key))
            return _title(name, ex.metrics.get(key)) if i == 0 else cap

        row = [Panel("clean" if i == 0 else "", ex.clean, color=REFERENCE_COLOR),
               Panel(t("degraded", "degraded"), ex.degraded, color=INPUT_COLOR)]
        for m in methods:
            row.append(Panel(t(m, m), ex.restored[m], color=method_color(m))
                       if m in ex.restored else Panel(f"{m}\n(no output)", None, kind="blank"))
        rows.append(row)
        labels.append(ex.view.label)
    return PanelGrid(rows, labels, title, None, ["clean", "degraded", *methods], panel_inch=panel_inch, note=note)


def fig3_for_rate(index: RunIndex, rate: str, methods: Sequence[str] | None = None, per_scene: int = 1,
                  max_rows: int = 3, **kw) -> PanelGrid:
    """:func:`fig3_overlay` of the first ``per_scene`` view(s) of each scene at ``rate``."""
    ms = display_methods(index, methods)
    ex = index.load_rate(rate, ms, max_views=max_rows, per_scene=per_scene)
    sizes, rates = _sizes(index), index.rates()
    label = rate_label(rate, sizes, rates)
    return fig3_overlay(ex, ms, title=kw.pop("title", f"Full frames with enlarged boxes, {label}"),
                        sizes_mb=sizes, rates=rates, **kw)


def _sizes(index: RunIndex) -> dict[str, float]:
    """Measured bytes per rate of the run's pairs (``manifest.json``), ``{}`` when the run has none (demo runs)."""
    try:
        return pairs_sizes_mb(index.pairs_root)
    except OSError:
        return {}


def contact_sheet_for_rate(index: RunIndex, rate: str, methods: Sequence[str] | None = None,
                           max_views: int | None = 8, **kw) -> PanelGrid:
    ms = display_methods(index, methods)
    views = index.load_rate(rate, ms, max_views=max_views)
    label = rate_label(rate, _sizes(index), index.rates())
    return contact_sheet(views, ms, title=kw.pop("title", f"Contact sheet, {label} (split '{index.split}')"), **kw)


RATE_FIGURES = {"fig3": "fig3_{rate}", "contact": "contact_rate_{rate}"}   # kind -> name after the prefix


def save_rate_figures(log: FigureLog, index: RunIndex, kind: str, methods: Sequence[str] | None = None,
                      max_views: int | None = 8, note: str | None = None, rates: Sequence[str] | None = None,
                      close: bool = False) -> dict[str, Path]:
    """One figure per rate of the run, saved through ``log`` as ``<prefix>_fig3_<rate>`` (``kind="fig3"``:
    :func:`fig3_for_rate`) or ``<prefix>_contact_rate_<rate>`` (``"contact"``: :func:`contact_sheet_for_rate`,
    up to ``max_views`` rows). The figures stay open (a notebook shows them) unless ``close``."""
    import matplotlib.pyplot as plt

    if kind not in RATE_FIGURES:
        raise ValueError(f"unknown rate figure {kind!r} (choose from {', '.join(RATE_FIGURES)})")
    out: dict[str, Path] = {}
    for r in rates or index.rates():
        grid = (fig3_for_rate(index, r, methods, note=note) if kind == "fig3"
                else contact_sheet_for_rate(index, r, methods, max_views, note=note))
        fig = grid.figure()
        out[r] = log.save(fig, RATE_FIGURES[kind].format(rate=r))
        if close:
            plt.close(fig)
    return out


def export_rate_figures(index: RunIndex, prefix: str = "08_visual_comparison", methods: Sequence[str] | None = None,
                        rates: Sequence[str] | None = None, max_views: int | None = 8, folder: str | Path | None = None,
                        note: str | None = None) -> dict[str, dict[str, Path]]:
    """Write ``<prefix>_fig3_<rate>.png`` and ``<prefix>_contact_rate_<rate>.png`` for every rate; returns the paths."""
    log = FigureLog(prefix, folder)
    by_kind = {k: save_rate_figures(log, index, k, methods, max_views, note, rates, close=True) for k in RATE_FIGURES}
    return {r: {k: by_kind[k][r] for k in RATE_FIGURES} for r in by_kind["fig3"]}


def fly_through_strip(summary: dict, n: int = 4) -> PanelGrid:
    """``n`` evenly spaced frames of a ``nifi render-path`` run (its ``render_path.json`` as a dict): rows
    compressed, restored, clean (the still that stands for the video where no player runs)."""
    from ..io.images import load_image
    from ..paths import repo_path
    from .compare import as_image

    total = int(summary["frames"])
    picks = sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(min(n, total))})
    rows, labels = [], []
    for stream in summary["video_layout"]:
        folder = repo_path(summary["frames_dirs"][stream])
        rows.append([Panel(f"frame {i}", as_image(load_image(folder / f"{i:05d}.png"))) for i in picks])
        labels.append(stream if stream != "clean" else f"clean ({summary['clean_source']})")
    f = summary["flicker"]
    note = (f"flicker (mean |f_t+1 - f_t|): compressed {f['compressed']:.4f}, restored {f['restored']:.4f}, "
            f"clean {f['clean']:.4f}" if f.get("clean") is not None else None)
    return PanelGrid(rows, row_labels=labels, note=note,
                     title=f"{summary['scene']}, rate {summary['rate']}, {summary['path']} path")


__all__ = ["display_methods", "fig3_overlay", "contact_sheet", "fig3_for_rate", "contact_sheet_for_rate",
           "save_rate_figures", "export_rate_figures", "RATE_FIGURES", "fly_through_strip"]

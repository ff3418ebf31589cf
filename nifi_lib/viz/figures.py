"""Paper-style figures of restored frames (notebook 08): the Fig. 3 overlay and contact sheets per rate.

- :func:`fig3_overlay` - the paper's Fig. 3: the full compressed render with 1-2 highlighted boxes in which a
  method's restored pixels are pasted, outlined in the method's colour; one column per method (plus the plain
  compressed render and the clean reference pasted the same way), one row per example view.
- :func:`contact_sheet` - rows: views; columns: clean, degraded, each method.

Both return a :class:`nifi_lib.viz.compare.PanelGrid` (``.figure()``, ``.save(name)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..evaluation.outputs import RunIndex, ViewImages
from .compare import (INPUT_COLOR, REFERENCE_COLOR, CropBox, Panel, PanelGrid, _metric_caption, _title, method_color,
                      paste_boxes, pick_boxes)
from .style import PANEL_INCH


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
                 reference: bool = True) -> PanelGrid:
    """Fig. 3 style: per example, the compressed frame with ``methods``' restorations pasted inside the boxes.

    ``boxes[i]`` are example ``i``'s boxes; default: :func:`pick_boxes` (where the compressed render is worst).
    """
    rows, labels = [], []
    for i, ex in enumerate(examples):
        bxs = list(boxes[i]) if boxes is not None else pick_boxes(ex.clean, ex.degraded, n_boxes, box_frac)
        row = [Panel(_title("compressed", ex.metrics.get("degraded")), ex.degraded, color=INPUT_COLOR, boxes=bxs)]
        for m in methods:
            if m not in ex.restored:
                row.append(Panel(f"{m}\n(no output)", None, kind="blank"))
                continue
            row.append(Panel(_title(m, ex.metrics.get(m)), paste_boxes(ex.degraded, ex.restored[m], bxs),
                             color=method_color(m), boxes=bxs))
        if reference:
            row.append(Panel("clean (reference)", paste_boxes(ex.degraded, ex.clean, bxs), color=REFERENCE_COLOR,
                             boxes=bxs))
        rows.append(row)
        labels.append(f"{ex.view.label} (rate {ex.view.rate})")
    cols = ["compressed", *methods] + (["clean"] if reference else [])
    return PanelGrid(rows, labels, title, None, cols, note=note)


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
    return fig3_overlay(ex, ms, title=kw.pop("title", f"Restorations pasted into the compressed render, rate {rate}"),
                        **kw)


def contact_sheet_for_rate(index: RunIndex, rate: str, methods: Sequence[str] | None = None,
                           max_views: int | None = 8, **kw) -> PanelGrid:
    ms = display_methods(index, methods)
    views = index.load_rate(rate, ms, max_views=max_views)
    return contact_sheet(views, ms, title=kw.pop("title", f"Contact sheet, rate {rate} (split '{index.split}')"), **kw)


def export_rate_figures(index: RunIndex, prefix: str = "08_visual_comparison", methods: Sequence[str] | None = None,
                        rates: Sequence[str] | None = None, max_views: int | None = 8, folder: str | Path | None = None,
                        note: str | None = None) -> dict[str, dict[str, Path]]:
    """Write ``<prefix>_fig3_<rate>.png`` and ``<prefix>_contact_rate_<rate>.png`` for every rate; returns the paths."""
    out: dict[str, dict[str, Path]] = {}
    for r in rates or index.rates():
        out[r] = {"fig3": fig3_for_rate(index, r, methods, note=note).save(f"{prefix}_fig3_{r}", folder),
                  "contact": contact_sheet_for_rate(index, r, methods, max_views, note=note)
                  .save(f"{prefix}_contact_rate_{r}", folder)}
    return out


__all__ = ["display_methods", "fig3_overlay", "contact_sheet", "fig3_for_rate", "contact_sheet_for_rate",
           "export_rate_figures"]

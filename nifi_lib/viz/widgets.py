"""An interactive before/after comparison of restored frames (notebook 08), built on plain ``ipywidgets``.

:class:`CompareWidget` shows, for the view picked with Dropdowns (dataset, scene, rate, view), a split
composite of two images (``before`` = degraded by default, ``after`` = a method) whose split column is an
``IntSlider``, and a row of zoomed crops of every image (clean, degraded, each method) that all share one crop
box (x, y, size sliders): synchronized zoom. A checkbox turns the crops into ``|x - clean|`` maps.

The ``ipywidgets`` tree is built lazily (``.widget``, or displaying the object); without it the object is a
plain state machine: ``select(...)`` changes the selection, ``selection`` reports it, ``composite()``,
``zoom_panels()``, ``render_main()`` give the pixels shown, ``snapshot()`` a static
:class:`nifi_lib.viz.compare.PanelGrid` of the current state (``.figure()``, ``.save(name)``), so it runs
headless (papermill, nbval, tests) and the static figures do not need a browser.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from ..evaluation.outputs import OutputsError, RunIndex, ViewImages, ViewKey
from .compare import (CropBox, Panel, PanelGrid, SplitView, as_image, colorize, comparison_grid, crop, diff_map,
                      draw_box, method_color, split_composite, upscale)
from .figures import display_methods

FIELDS = ("dataset", "scene", "rate", "view", "before", "after", "split", "crop", "diff")


def png_bytes(img) -> bytes:
    """``(H, W, 3)`` float in [0, 1] or uint8 -> PNG bytes."""
    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(np.round(as_image(a) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class CompareWidget:
    """Split before/after view + synchronized zoomed crops of one run (see the module docstring).

    ``index``: a :class:`RunIndex`; ``methods``: which methods to show (default all but ``none``);
    ``scene``/``rate``/``view``/``dataset``: the first selection (``None``: the first available);
    ``split``: the split column (``None``: the middle; a float in (0, 1): a fraction of the width);
    ``crop``: a :class:`CropBox` (default: a centred box of ``zoom_frac`` of the frame).
    """

    def __init__(self, index: RunIndex, methods: Sequence[str] | None = None, scene: str | None = None,
                 rate: str | None = None, view: str | None = None, dataset: str | None = None,
                 before: str = "degraded", after: str | None = None, split: int | float | None = None,
                 crop_box: CropBox | None = None, zoom_frac: float = 0.4, display_px: int = 320, zoom_px: int = 144):
        self.index = index
        self.methods = display_methods(index, methods)
        self.display_px, self.zoom_px, self.zoom_frac = int(display_px), int(zoom_px), float(zoom_frac)
        vk = index.view(scene=scene, rate=None if rate is None else str(rate),
                        name=None if view is None else str(view), dataset=dataset)
        self._state: dict = {"dataset": vk.dataset, "scene": vk.scene, "rate": vk.rate, "view": vk.name,
                             "before": before, "after": after or (self.methods[-1] if self.methods else "clean"),
                             "split": None, "crop": crop_box, "diff": False}
        self._cache: dict[ViewKey, ViewImages] = {}
        self._widget = None
        self.controls: dict = {}
        self._syncing = False
        self._check_sides()
        H, W = self.current().clean.shape[:2]
        if split is None:
            split = W // 2
        elif isinstance(split, float) and 0 < split < 1:
            split = int(round(split * W))
        self._state["split"] = int(min(max(int(split), 0), W))
        self._state["crop"] = (crop_box or CropBox.centered(W, H, self.zoom_frac)).clip(W, H)

    # --- state ------------------------------------------------------------------------------------
    @property
    def selection(self) -> dict:
        """The current selection: dataset, scene, rate, view, before, after, split (column), crop, diff."""
        return dict(self._state)

    @property
    def sides(self) -> list[str]:
        """What ``before``/``after`` may be: clean, degraded and each method."""
        return ["degraded", "clean", *self.methods]

    @property
    def view_key(self) -> ViewKey:
        s = self._state
        return self.index.view(scene=s["scene"], rate=s["rate"], name=s["view"], dataset=s["dataset"])

    def _check_sides(self) -> None:
        for k in ("before", "after"):
            if self._state[k] not in self.sides:
                raise OutputsError(f"{k}='{self._state[k]}' is not one of {', '.join(self.sides)}")

    def current(self) -> ViewImages:
        """The images of the selected view (cached)."""
        vk = self.view_key
        if vk not in self._cache:
            self._cache[vk] = self.index.load(vk, [m for m in self.methods if m in self.index.methods_for(vk)])
        return self._cache[vk]

    def image(self, name: str) -> np.ndarray | None:
        """``clean``, ``degraded`` or a method's image of the selected view (``None`` if that method has none)."""
        cur = self.current()
        if name in ("clean", "degraded") or name in cur.restored:
            return cur.image(name)
        return None

    def select(self, **changes) -> "CompareWidget":
        """Change the selection (any of :data:`FIELDS`); dependent choices fall back to the first valid one."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise OutputsError(f"unknown selection field(s) {', '.join(sorted(unknown))} (use {', '.join(FIELDS)})")
        s = dict(self._state)
        s.update({k: v for k, v in changes.items() if k not in ("split", "crop")})
        idx = self.index
        if s["dataset"] not in idx.datasets():
            raise OutputsError(f"dataset '{s['dataset']}' not in the run (have {idx.datasets()})")
        if s["scene"] not in idx.scenes(s["dataset"]):
            if "scene" in changes:
                raise OutputsError(f"scene '{s['scene']}' not in the run (have {', '.join(idx.scenes(s['dataset']))})")
            s["scene"] = idx.scenes(s["dataset"])[0]
        rates = idx.rates(s["scene"], s["dataset"])
        s["rate"] = str(s["rate"])
        if s["rate"] not in rates:
            if "rate" in changes:
                raise OutputsError(f"rate '{s['rate']}' not available for {s['scene']} (have {', '.join(rates)})")
            s["rate"] = rates[0]
        views = idx.views(s["scene"], s["rate"], s["dataset"])
        s["view"] = str(s["view"])
        if s["view"] not in views:
            if "view" in changes:
                raise OutputsError(f"view '{s['view']}' not available (have {', '.join(views)})")
            s["view"] = views[0]
        old = self._state
        self._state = s
        try:
            self._check_sides()
            H, W = self.current().clean.shape[:2]
        except Exception:
            self._state = old
            raise
        split = changes.get("split", s["split"])
        if isinstance(split, float) and 0 < split < 1:
            split = int(round(split * W))
        s["split"] = int(min(max(int(split), 0), W))
        box = changes.get("crop", s["crop"])
        if isinstance(box, (tuple, list)):
            box = CropBox(*box)
        s["crop"] = (box or CropBox.centered(W, H, self.zoom_frac)).clip(W, H)
        s["diff"] = bool(s["diff"])
        if self._widget is not None:
            self._sync_controls()
            self._refresh()
        return self

    # --- pixels -----------------------------------------------------------------------------------
    def _side(self, name: str) -> np.ndarray:
        img = self.image(name)
        return img if img is not None else self.current().degraded

    def composite(self) -> np.ndarray:
        """Columns ``[0, split)`` from ``before``, the rest from ``after`` (float, full resolution)."""
        return split_composite(self._side(self._state["before"]), self._side(self._state["after"]),
                               self._state["split"])

    def split_view(self) -> SplitView:
        s = self._state
        return SplitView(self._side(s["before"]), self._side(s["after"]), s["split"], (s["before"], s["after"]),
                         s["crop"])

    def panel_names(self) -> list[str]:
        return ["clean", "degraded", *self.methods]

    def zoom_panels(self) -> list[Panel]:
        """The zoomed crop of every image with the one shared crop box (or ``|x - clean|`` of it with ``diff``)."""
        box, cur = self._state["crop"], self.current()
        out = []
        for n in self.panel_names():
            img = self.image(n)
            if img is None:
                out.append(Panel(f"{n} (no output)", None, kind="blank", boxes=[box]))
            elif self._state["diff"]:
                out.append(Panel(f"|{n} - clean|", diff_map(crop(img, box), crop(cur.clean, box)), kind="diff",
                                 boxes=[box]))
            else:
                out.append(Panel(n, crop(img, box), color=method_color(n), boxes=[box]))
        if self._state["diff"]:
            vmax = max((float(p.image.max()) for p in out if p.image is not None), default=0.0) or 1.0
            for p in out:
                p.vmax = vmax
        return out

    def scale(self) -> int:
        W = self.current().clean.shape[1]
        return max(1, self.display_px // W)

    def render_main(self) -> np.ndarray:
        """What the main image shows: the composite enlarged, the crop box and the split line drawn."""
        f = self.scale()
        comp = upscale(self.composite(), f)
        b = self._state["crop"]
        comp = draw_box(comp, CropBox(b.x * f, b.y * f, b.w * f, b.h * f), "#ffff00", thickness=max(1, f // 3))
        p = self._state["split"] * f
        if 0 < p < comp.shape[1]:
            comp[:, max(0, p - 1):p + 1] = 1.0
        return comp

    def render_zoom(self) -> list[np.ndarray]:
        """What the zoom row shows (enlarged crops or colourised difference maps)."""
        box = self._state["crop"]
        f = max(1, self.zoom_px // max(box.w, box.h))
        out = []
        for p in self.zoom_panels():
            if p.image is None:
                out.append(np.full((box.h * f, box.w * f, 3), 0.5, dtype=np.float32))
            elif p.kind == "diff":
                out.append(upscale(colorize(p.image, p.vmax), f))
            else:
                out.append(upscale(p.image, f))
        return out

    def snapshot(self, diff: bool = True) -> PanelGrid:
        """A static grid of the current state: full frames with the crop box, the zoomed crops, ``|x - clean|``."""
        cur = self.current()
        s = self._state
        restored = {m: cur.restored[m] for m in self.methods if m in cur.restored}
        return comparison_grid(cur.clean, cur.degraded, restored, crop_box=s["crop"], diff=diff, metrics=cur.metrics,
                               title=f"{cur.view.label}, rate {s['rate']} (split '{cur.view.split}')")

    # --- the ipywidgets tree ----------------------------------------------------------------------
    @property
    def widget(self):
        """The ``ipywidgets`` tree (built on first access)."""
        if self._widget is None:
            self._build()
        return self._widget

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _build(self) -> None:
        import ipywidgets as W

        s = self._state
        H, Wd = self.current().clean.shape[:2]
        def lay() -> "W.Layout":   # one Layout per control: a Layout is a shared model, hiding one would hide all
            return W.Layout(width="220px")
        c = {
            "dataset": W.Dropdown(description="dataset", options=[d or "-" for d in self.index.datasets()],
                                  value=s["dataset"] or "-", layout=lay()),
            "scene": W.Dropdown(description="scene", layout=lay()),
            "rate": W.Dropdown(description="rate", layout=lay()),
            "view": W.Dropdown(description="view", layout=lay()),
            "before": W.Dropdown(description="left", options=self.sides, value=s["before"], layout=lay()),
            "after": W.Dropdown(description="right", options=self.sides, value=s["after"], layout=lay()),
            "split": W.IntSlider(description="split", min=0, max=Wd, value=s["split"], continuous_update=True,
                                 layout=W.Layout(width=f"{max(300, self.scale() * Wd)}px")),
            "crop_x": W.IntSlider(description="crop x", min=0, max=Wd - 1, value=s["crop"].x),
            "crop_y": W.IntSlider(description="crop y", min=0, max=H - 1, value=s["crop"].y),
            "crop_size": W.IntSlider(description="crop size", min=2, max=min(H, Wd), value=s["crop"].w),
            "diff": W.Checkbox(description="|x - clean| in the crops", value=s["diff"]),
        }
        if len(self.index.datasets()) < 2:
            c["dataset"].layout.display = "none"
        self.controls = c
        self.main_image = W.Image(format="png")
        self.caption = W.HTML()
        self.zoom_images = [W.Image(format="png") for _ in self.panel_names()]
        self.zoom_labels = [W.HTML() for _ in self.panel_names()]
        zoom_row = W.HBox([W.VBox([lab, im]) for lab, im in zip(self.zoom_labels, self.zoom_images)],
                          layout=W.Layout(flex_flow="row wrap"))
        self._widget = W.VBox([
            W.HBox([c["dataset"], c["scene"], c["rate"], c["view"]]),
            W.HBox([c["before"], c["after"]]),
            self.main_image, c["split"], self.caption,
            W.HTML("<b>synchronized zoom</b>: one crop box for every panel"),
            W.HBox([c["crop_x"], c["crop_y"], c["crop_size"], c["diff"]]),
            zoom_row,
        ])
        self._sync_controls()
        for name, ctl in c.items():
            ctl.observe(self._on_change(name), names="value")
        self._refresh()

    def _on_change(self, name: str):
        def handler(change):
            if self._syncing:
                return
            v = change["new"]
            if name == "dataset":
                self.select(dataset=None if v == "-" else v)
            elif name in ("crop_x", "crop_y", "crop_size"):
                b = self._state["crop"]
                x, y, size = b.x, b.y, b.w
                if name == "crop_x":
                    x = v
                elif name == "crop_y":
                    y = v
                else:
                    cx, cy = b.x + b.w / 2, b.y + b.h / 2
                    size = v
                    x, y = int(round(cx - size / 2)), int(round(cy - size / 2))
                self.select(crop=CropBox(x, y, size, size))
            else:
                self.select(**{name: v})
        return handler

    def _sync_controls(self) -> None:
        c, s, idx = self.controls, self._state, self.index
        H, Wd = self.current().clean.shape[:2]
        self._syncing = True
        try:
            c["dataset"].value = s["dataset"] or "-"
            c["scene"].options = idx.scenes(s["dataset"])
            c["scene"].value = s["scene"]
            c["rate"].options = idx.rates(s["scene"], s["dataset"])
            c["rate"].value = s["rate"]
            c["view"].options = idx.views(s["scene"], s["rate"], s["dataset"])
            c["view"].value = s["view"]
            c["before"].value, c["after"].value = s["before"], s["after"]
            c["split"].max = Wd
            c["split"].value = s["split"]
            b = s["crop"]
            c["crop_size"].max = min(H, Wd)
            c["crop_size"].value = b.w
            c["crop_x"].max, c["crop_y"].max = Wd - b.w, H - b.h
            c["crop_x"].value, c["crop_y"].value = b.x, b.y
            c["diff"].value = s["diff"]
        finally:
            self._syncing = False

    @staticmethod
    def _show(image_widget, arr: np.ndarray) -> None:
        """Set the PNG and pin the displayed size to the array's (the frontend would stretch it otherwise)."""
        image_widget.value = png_bytes(arr)
        h, w = arr.shape[:2]
        image_widget.layout.width, image_widget.layout.height = f"{w}px", f"{h}px"
        image_widget.layout.min_width = f"{w}px"

    def _refresh(self) -> None:
        s, cur = self._state, self.current()
        self._show(self.main_image, self.render_main())
        mets = cur.metrics
        def cap(n):
            m = mets.get("degraded" if n == "degraded" else n) or {}
            parts = [f"{k} {v:.3f}" if k != "psnr" else f"psnr {v:.1f} dB" for k, v in m.items()
                     if k in ("psnr", "lpips", "dists") and v is not None]
            return f"{n}" + (f" ({', '.join(parts)})" if parts else "")
        self.caption.value = (f"<b>{cur.view.key}</b>: left of the line <b>{cap(s['before'])}</b>, right "
                              f"<b>{cap(s['after'])}</b>; split at column {s['split']} of {cur.clean.shape[1]}")
        for lab, im, p, arr in zip(self.zoom_labels, self.zoom_images, self.zoom_panels(), self.render_zoom()):
            lab.value = f"<span style='color:{p.color or '#000'}'>{p.title}</span>"
            self._show(im, arr)


__all__ = ["CompareWidget", "png_bytes", "FIELDS"]

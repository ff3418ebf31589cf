"""The before/after widget: its state without any frontend, the lazily built ipywidgets tree, controls driving
the selection, the split composite and the synchronized crop checked pixel by pixel."""
from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from PIL import Image

from nifi_lib.evaluation.outputs import OutputsError, RunIndex
from nifi_lib.viz.compare import CropBox
from nifi_lib.viz.widgets import CompareWidget, png_bytes
from test_viz_outputs import H, W, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    truth = make_run(root)
    return RunIndex.from_run(root), truth


def u8(a):
    return np.round(a * 255).astype(np.uint8)


def test_state_without_frontend(run):
    idx, truth = run
    w = CompareWidget(idx)
    assert w._widget is None                        # nothing built yet
    s = w.selection
    assert (s["dataset"], s["scene"], s["rate"], s["view"]) == ("ds", "a", "0.1", "v0")
    assert s["before"] == "degraded" and s["after"] == "nifi" and s["split"] == W // 2
    assert w.methods == ["bm3d", "nifi"]            # "none" (= the input) left out by default
    t = truth["ds/a/rate_0.1/test/v0"]
    w.select(split=5)
    comp = u8(w.composite())
    assert np.array_equal(comp[:, :5], t["degraded"][:, :5]) and np.array_equal(comp[:, 5:], t["nifi"][:, 5:])
    w.select(before="clean", after="bm3d", split=0.25)
    p = round(0.25 * W)
    assert w.selection["split"] == p
    assert np.array_equal(u8(w.composite()), np.concatenate([t["clean"][:, :p], t["bm3d"][:, p:]], 1))
    # scene b has no nifi output: the dependent choices fall back, the missing side shows the input
    w.select(scene="b", after="nifi")
    assert (w.selection["rate"], w.selection["view"]) == ("0.1", "v0") and w.image("nifi") is None
    with pytest.raises(OutputsError, match="rate '0.7'"):
        w.select(rate="0.7")
    with pytest.raises(OutputsError, match="unknown selection"):
        w.select(zoom=3)
    assert w.selection["scene"] == "b"              # a failed select leaves the state as it was


def test_synchronized_crop_and_snapshot(run):
    idx, truth = run
    w = CompareWidget(idx, scene="a", rate="1.0", view="v1", crop_box=CropBox(3, 2, 6, 6))
    t = truth["ds/a/rate_1.0/test/v1"]
    panels = w.zoom_panels()
    assert [p.title for p in panels] == ["clean", "degraded", "bm3d", "nifi"]
    for p, name in zip(panels, ["clean", "degraded", "bm3d", "nifi"]):
        assert p.boxes == [CropBox(3, 2, 6, 6)] and np.array_equal(u8(p.image), t[name][2:8, 3:9])
    w.select(crop=(20, 20, 6, 6), diff=True)        # clipped into the frame, diff maps of the same box
    box = w.selection["crop"]
    assert box == CropBox(W - 6, H - 6, 6, 6)
    for p, name in zip(w.zoom_panels(), ["clean", "degraded", "bm3d", "nifi"]):
        ref = np.abs(t[name][H - 6:, W - 6:].astype(np.float32) - t["clean"][H - 6:, W - 6:]) / 255
        assert p.kind == "diff" and np.allclose(p.image, ref.mean(-1), atol=1e-6)
    g = w.snapshot()
    assert g.crop == box and all(p.boxes == [box] for p in g.rows[0])
    assert len({r.shape for r in w.render_zoom()}) == 1


def test_widget_tree_controls_drive_the_state(run):
    idx, truth = run
    w = CompareWidget(idx, display_px=64)
    tree = w.widget
    import ipywidgets

    assert isinstance(tree, ipywidgets.VBox) and w.widget is tree           # built once
    c = w.controls
    assert isinstance(c["split"], ipywidgets.IntSlider) and isinstance(c["scene"], ipywidgets.Dropdown)
    # one dataset: its selector is hidden, every other control stays visible (a Layout is a shared model:
    # the browser check found all six dropdowns hidden when they shared one)
    assert c["dataset"].layout.display == "none"
    assert all(c[k].layout.display != "none" for k in c if k != "dataset")
    assert len({id(c[k].layout) for k in c}) == len(c)
    assert list(c["scene"].options) == ["a", "b"] and list(c["rate"].options) == ["0.1", "1.0"]
    c["split"].value = 3
    assert w.selection["split"] == 3
    main = np.asarray(Image.open(io.BytesIO(w.main_image.value)).convert("RGB"))
    assert np.array_equal(main, np.asarray(Image.open(io.BytesIO(png_bytes(w.render_main()))).convert("RGB")))
    f = w.scale()
    assert f == 64 // W and main.shape == (H * f, W * f, 3)
    # the split line sits at column 3 (scaled); left of it the degraded frame, right the method
    t = truth["ds/a/rate_0.1/test/v0"]
    assert np.all(main[:, 3 * f - 1] == 255)
    assert np.array_equal(main[0, 0], t["degraded"][0, 0]) and np.array_equal(main[0, -1], t["nifi"][0, -1])
    c["scene"].value = "b"
    assert w.selection["scene"] == "b" and list(c["view"].options) == ["v0", "v1"]
    c["view"].value = "v1"
    c["crop_size"].value = 4
    c["crop_x"].value = 1
    s = w.selection
    assert s["view"] == "v1" and s["crop"].w == 4 and s["crop"].x == 1
    assert all(p.boxes == [s["crop"]] for p in w.zoom_panels())
    labels = [lab.value for lab in w.zoom_labels]
    assert "nifi (no output)" in labels[-1]
    w.select(rate="1.0")                               # programmatic changes reach the controls
    assert c["rate"].value == "1.0" and c["crop_x"].value == s["crop"].x

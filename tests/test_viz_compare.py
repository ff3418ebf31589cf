"""Pixel-exact checks of the comparison building blocks (split, crop, diff, paste, boxes) and of the grids and
paper-style figures built from them (every panel compared with an independent slice of the inputs)."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from nifi_lib.evaluation.outputs import ViewImages, ViewKey
from nifi_lib.viz.compare import (CropBox, PanelGrid, as_image, comparison_grid, crop, diff_grid, diff_map,
                                  draw_box, paste_boxes, pick_boxes, split_composite, split_view, upscale)
from nifi_lib.viz.figures import contact_sheet, fig3_overlay
from nifi_lib.viz.compare import frame_with_zooms, resize_nearest
from nifi_lib.viz.style import METHOD_COLORS

H, W = 10, 14


def rand(seed):
    return np.random.default_rng(seed).random((H, W, 3)).astype(np.float32)


def test_as_image_conversions():
    a = rand(0)
    t = torch.from_numpy(a).permute(2, 0, 1)
    assert np.array_equal(as_image(t), a)
    u8 = (a * 255).round().astype(np.uint8)
    assert np.array_equal(as_image(u8), u8.astype(np.float32) / 255)
    assert as_image(a[..., 0]).shape == (H, W, 3)
    with pytest.raises(ValueError):
        as_image(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("p", [0, 1, 5, W - 1, W])
def test_split_composite_takes_left_columns_from_a(p):
    a, b = rand(1), rand(2)
    out = split_composite(a, b, p)
    assert np.array_equal(out[:, :p], a[:, :p]) and np.array_equal(out[:, p:], b[:, p:])
    ref = np.concatenate([a[:, :p], b[:, p:]], axis=1)
    assert np.array_equal(out, ref)


def test_split_composite_clips_and_checks_shapes():
    a, b = rand(1), rand(2)
    assert np.array_equal(split_composite(a, b, -3), b) and np.array_equal(split_composite(a, b, 99), a)
    with pytest.raises(ValueError, match="shapes differ"):
        split_composite(a, b[:, :-1], 3)
    sv = split_view(a, b, 0.5)
    assert sv.position == W // 2 and np.array_equal(sv.composite, split_composite(a, b, W // 2))


def test_diff_map_is_abs_difference():
    a, b = rand(3), rand(4)
    assert np.allclose(diff_map(a, b, reduce=None), np.abs(a - b), atol=0)
    assert np.allclose(diff_map(a, b), np.abs(a - b).mean(-1), atol=1e-7)
    assert np.allclose(diff_map(a, b, "max"), np.abs(a - b).max(-1))
    g1, g2 = a[..., 0], b[..., 0]   # greyscale: exactly |a - b|
    assert np.allclose(diff_map(g1, g2), np.abs(g1 - g2), atol=1e-7)
    assert np.all(diff_map(a, a) == 0)


def test_crop_box_clip_and_crop():
    a = rand(5)
    box = CropBox(3, 2, 4, 5)
    assert np.array_equal(crop(a, box), a[2:7, 3:7])
    assert CropBox(12, 8, 4, 4).clip(W, H) == CropBox(10, 6, 4, 4)       # shifted inside, same size
    assert CropBox(-2, -1, 40, 3).clip(W, H) == CropBox(0, 0, W, 3)      # shrunk to the frame
    assert CropBox.centered(W, H, 0.4) == CropBox(5, 3, 4, 4)


def test_paste_and_draw_box():
    base, src = rand(6), rand(7)
    boxes = [CropBox(1, 1, 3, 2), CropBox(8, 5, 4, 4)]
    out = paste_boxes(base, src, boxes)
    mask = np.zeros((H, W), bool)
    for b in boxes:
        mask[b.y:b.y + b.h, b.x:b.x + b.w] = True
    assert np.array_equal(out[mask], src[mask]) and np.array_equal(out[~mask], base[~mask])
    d = draw_box(base, CropBox(2, 3, 5, 4), "#ff0000")
    border = np.zeros((H, W), bool)
    border[3, 2:7] = border[6, 2:7] = border[3:7, 2] = border[3:7, 6] = True
    assert np.all(d[border] == [1, 0, 0]) and np.array_equal(d[~border], base[~border])
    assert upscale(base, 3).shape == (3 * H, 3 * W, 3) and np.array_equal(upscale(base, 3)[::3, ::3], base)


def test_pick_boxes_finds_the_worst_regions():
    clean = np.zeros((40, 40, 3), np.float32)
    deg = clean.copy()
    deg[30:38, 2:10] = 1.0      # strongest
    deg[5:13, 20:28] = 0.6
    boxes = pick_boxes(clean, deg, n=2, frac=0.2)
    assert boxes == [CropBox(2, 30, 8, 8), CropBox(20, 5, 8, 8)]
    assert not boxes[0].overlaps(boxes[1])


def test_comparison_grid_same_crop_for_every_panel():
    clean, deg, m1, m2 = rand(8), rand(9), rand(10), rand(11)
    box = CropBox(4, 2, 6, 5)
    g = comparison_grid(clean, deg, {"bm3d": m1, "nifi": m2}, crop_box=box)
    assert g.columns == ["clean", "degraded", "bm3d", "nifi"] and g.shape == (3, 4) and g.crop == box
    full, zoom, diffs = g.rows
    imgs = [clean, deg, m1, m2]
    for p, img in zip(full, imgs):
        assert p.boxes == [box] and np.array_equal(p.image, img)
    for p, img in zip(zoom, imgs):
        assert np.array_equal(p.image, img[2:7, 4:10])
    assert diffs[0].kind == "blank"
    for p, img in zip(diffs[1:], imgs[1:]):
        assert p.kind == "diff" and np.allclose(p.image, np.abs(img[2:7, 4:10] - clean[2:7, 4:10]).mean(-1))
        assert p.vmax == max(float(q.image.max()) for q in diffs[1:])
    assert full[3].color == METHOD_COLORS["nifi"] and full[2].color == METHOD_COLORS["bm3d"]
    dg = diff_grid(clean, {"degraded": deg})
    assert np.allclose(dg.rows[0][0].image, diff_map(deg, clean))


def _views(n=2):
    out = []
    for i in range(n):
        c, d = rand(20 + i), rand(30 + i)
        out.append(ViewImages(ViewKey("ds", f"s{i}", "1.0", "test", "v0"), c, d,
                              {"bm3d": rand(40 + i), "nifi": rand(50 + i)},
                              {"degraded": {"psnr": 12.0}, "nifi": {"psnr": 25.0, "lpips": 0.125}}))
    return out


def test_fig3_overlay_shows_each_methods_full_frame_with_zooms_beside():
    views = _views(2)
    boxes = [[CropBox(1, 1, 4, 4)], [CropBox(6, 3, 5, 5), CropBox(0, 0, 3, 3)]]
    g = fig3_overlay(views, ["bm3d", "nifi"], boxes=boxes)
    assert g.shape == (2, 4) and g.columns == ["compressed", "bm3d", "nifi", "clean"]
    for row, ex, bx in zip(g.rows, views, boxes):
        H, W = ex.clean.shape[:2]
        for p, img in zip(row, [ex.degraded, ex.restored["bm3d"], ex.restored["nifi"], ex.clean]):
            # the column's full frame is that image, everywhere (not the compressed render outside the boxes)
            assert np.array_equal(p.image[:H, :W], img)
            assert p.boxes[:len(bx)] == bx
            zooms = p.boxes[len(bx):]
            assert len(zooms) == len(bx)
            for b, z in zip(bx, zooms):        # each zoom, beside the frame, is that image's crop enlarged
                assert z.x >= W and z.h >= b.h
                got = p.image[z.y:z.y + z.h, z.x:z.x + z.w]
                assert np.array_equal(got, resize_nearest(img[b.y:b.y + b.h, b.x:b.x + b.w], z.h, z.w))
        for p, m in zip(row[1:3], ["bm3d", "nifi"]):
            assert p.color == METHOD_COLORS[m]
        assert not np.array_equal(row[3].image[:H, :W], row[0].image[:H, :W])
    assert "LPIPS 0.125" in g.rows[0][2].title and "12.0 dB" in g.rows[0][0].title
    auto = fig3_overlay(views[:1], ["nifi"], n_boxes=2)   # default: where the compressed render is worst
    assert auto.rows[0][1].boxes[:2] == pick_boxes(views[0].clean, views[0].degraded, 2, 0.3)
    fig = g.figure()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_frame_with_zooms_layout():
    img = np.random.default_rng(7).random((12, 10, 3)).astype(np.float32)
    out, zooms = frame_with_zooms(img, [CropBox(2, 3, 4, 4), CropBox(0, 0, 2, 3)], gap=2)
    assert np.array_equal(out[:, :10], img) and out.shape[0] == 12
    assert zooms[0] == CropBox(12, 0, 5, 5) and zooms[1].y == 7 and zooms[1].h == 5
    assert np.all(out[5:7, 10:] == 1.0)          # the gap between the zooms is background
    same, none = frame_with_zooms(img, [])
    assert np.array_equal(same, img) and none == []


def test_contact_sheet_rows_are_views(tmp_path):
    views = _views(3)
    g = contact_sheet(views, ["bm3d", "nifi", "ffdnet"])
    assert g.shape == (3, 5) and g.row_labels == ["ds/s0/v0", "ds/s1/v0", "ds/s2/v0"]
    for row, ex in zip(g.rows, views):
        assert np.array_equal(row[0].image, ex.clean) and np.array_equal(row[1].image, ex.degraded)
        assert np.array_equal(row[2].image, ex.restored["bm3d"]) and np.array_equal(row[3].image, ex.restored["nifi"])
        assert row[4].kind == "blank"      # no ffdnet output: an empty panel, not an error
    path = g.save(tmp_path / "sheet.png")
    from PIL import Image

    with Image.open(path) as im:
        assert path == tmp_path / "sheet.png" and im.size[0] > 100 and im.size[1] > 100
    assert isinstance(g, PanelGrid) and not list(tmp_path.glob(".*"))
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []      # save() closes its figure

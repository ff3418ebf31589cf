"""``allow_convert``: greyscale/palette -> RGB; transparency composited on a chosen background."""
import numpy as np
import pytest
from PIL import Image

from nifi_lib.io.images import ImageError, ImageModeError, load_image, read_rgb


def _rgba(path, alpha):
    arr = np.zeros((4, 6, 4), dtype=np.uint8)
    arr[..., 0] = 200            # red where opaque
    arr[..., 3] = alpha
    Image.fromarray(arr, "RGBA").save(path)
    return path


def test_rgba_composited_on_the_background(tmp_path):
    p = _rgba(tmp_path / "a.png", alpha=0)
    assert (read_rgb(p, allow_convert=True) == 0).all()                          # default: black, as before
    assert (read_rgb(p, allow_convert=True, background="white") == 255).all()
    assert (read_rgb(p, allow_convert=True, background=(0.0, 1.0, 0.0))[..., 1] == 255).all()
    half = read_rgb(_rgba(tmp_path / "h.png", alpha=128), allow_convert=True, background="white")
    assert tuple(half[0, 0]) == (227, 127, 127)   # 200 a + 255 (1 - a), a = 128/255
    opaque = read_rgb(_rgba(tmp_path / "o.png", alpha=255), allow_convert=True, background="white")
    assert tuple(opaque[0, 0]) == (200, 0, 0)
    assert load_image(p, allow_convert=True, background="white").min() == 1.0


def test_grey_alpha_and_palette_transparency(tmp_path):
    la = np.zeros((4, 6, 2), dtype=np.uint8)
    la[..., 0] = 50
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (read_rgb(tmp_path / "la.png", allow_convert=True, background="white") == 255).all()
    pal = Image.new("P", (6, 4), 0)
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert (read_rgb(tmp_path / "p.png", allow_convert=True, background="white") == 255).all()
    Image.fromarray(np.full((4, 6), 77, np.uint8), "L").save(tmp_path / "l.png")
    assert (read_rgb(tmp_path / "l.png", allow_convert=True) == 77).all()


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_refused_without_allow_convert(tmp_path, mode):
    p = tmp_path / "x.png"
    Image.new(mode, (6, 4)).save(p)
    with pytest.raises(ImageModeError, match=f"x.png: image mode is {mode}, expected 8-bit RGB") as e:
        read_rgb(p)
    assert isinstance(e.value, ImageError) and e.value.mode == mode and "allow_convert=True" in str(e.value)


def test_bad_background(tmp_path):
    p = _rgba(tmp_path / "a.png", alpha=0)
    with pytest.raises(ValueError, match="unknown background"):
        read_rgb(p, allow_convert=True, background="grey")


def test_quantisation_to_uint8_per_frame_and_batched():
    import torch

    from nifi_lib.io.images import encode_png, to_uint8, to_uint8_hwc

    # clipped below 0 and above 1, rounded half to even (0.5 -> 0, 1.5 -> 2, 254.5 -> 254)
    v = torch.tensor([-0.1, 0.0, 0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0, 1.2])
    frame = v.view(1, 1, 7).expand(3, 2, 7).clone()
    assert to_uint8(frame).shape == (2, 7, 3) and to_uint8(frame).dtype == np.uint8
    assert to_uint8(frame)[0, :, 0].tolist() == [0, 0, 0, 2, 254, 255, 255]
    batch = torch.rand(4, 3, 5, 6, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    hwc = to_uint8_hwc(batch)
    assert hwc.shape == (4, 5, 6, 3) and hwc.dtype == torch.uint8
    assert all(np.array_equal(hwc[i].numpy(), to_uint8(batch[i])) for i in range(4))
    # a frame given as a tensor or as its uint8 array encodes to the same PNG bytes
    assert encode_png(batch[1]) == encode_png(hwc[1].numpy()) == encode_png(batch[1], compress_level=6)
    with pytest.raises(ValueError, match="level 10"):
        encode_png(hwc[0].numpy(), compress_level=10)

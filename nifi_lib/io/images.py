"""Image reading/writing with clear errors: 8-bit RGB only, [0, 1] float tensors, atomic PNG writes."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import NifiError
from .atomic import atomic_write_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Frames larger than this many pixels are refused before decoding (decompression-bomb guard);
# the restorer tiles anything below it that does not fit in memory.
MAX_PIXELS = 16384 * 16384


class ImageError(NifiError, ValueError):
    """An image file cannot be used: unreadable, wrong mode or bit depth, wrong size."""


def read_rgb(path: str | Path, allow_convert: bool = False) -> np.ndarray:
    """Read an 8-bit RGB image as an ``(H, W, 3)`` uint8 array.

    Anything else (RGBA, greyscale, palette, 16-bit, corrupt or truncated files) raises
    :class:`ImageError` naming the file, unless ``allow_convert`` asks for a conversion of
    8-bit greyscale/palette/RGBA images (RGBA is composited on black).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{path}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS} pixels")
            mode = im.mode
            im.load()
            if mode == "RGB":
                return np.asarray(im, dtype=np.uint8).copy()
            if mode in ("I;16", "I;16B", "I;16L", "I", "F", "RGB;16", "RGBA;16") or im.info.get("bits", 8) > 8:
                raise ImageError(f"{path}: {mode} image with more than 8 bits per channel; "
                                 "convert it to 8-bit RGB (e.g. PIL: im.convert('RGB') after scaling)")
            if not allow_convert:
                raise ImageError(f"{path}: image mode is {mode}, expected 8-bit RGB; "
                                 "convert it to RGB first (pass allow_convert=True to composite/convert)")
            if mode == "RGBA":
                arr = np.asarray(im, dtype=np.float32) / 255.0
                rgb = arr[..., :3] * arr[..., 3:4]
                return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from e
    except Image.DecompressionBombError as e:  # pragma: no cover - covered by MAX_PIXELS above
        raise ImageError(f"{path}: image too large ({e})") from e


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` in [0, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float ``(3, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)`` (rounded, clipped)."""
    arr = t.detach().float().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return arr


def load_image(path: str | Path, allow_convert: bool = False) -> torch.Tensor:
    """Read an 8-bit RGB file as a ``(3, H, W)`` float tensor in [0, 1]."""
    return to_tensor(read_rgb(path, allow_convert=allow_convert))


def save_image(path: str | Path, img: torch.Tensor | np.ndarray) -> None:
    """Write a PNG atomically from a ``(3, H, W)`` [0, 1] tensor or ``(H, W, 3)`` uint8 array."""
    arr = to_uint8(img) if torch.is_tensor(img) else np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError("save_image expects uint8 arrays or [0, 1] tensors")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def skimage_sample(name: str = "astronaut", size: int = 64) -> torch.Tensor:
    """A natural photo that ships inside scikit-image, center-cropped and resized: ``(3, size, size)`` in [0, 1]."""
    import skimage.data

    if not hasattr(skimage.data, name):
        raise ImageError(f"skimage.data has no image '{name}'")
    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    arr = arr[..., :3]
    h, w = arr.shape[:2]
    s = min(h, w)
    arr = arr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    im = Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.LANCZOS)
    return to_tensor(np.asarray(im))

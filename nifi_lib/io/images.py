"""Image reading/writing with clear errors: 8-bit RGB only, [0, 1] float tensors, atomic PNG writes."""
from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import NifiError
from .atomic import atomic_write_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Frames larger than this many pixels are refused before decoding (decompression-bomb guard);
# the restorer tiles anything below it that does not fit in memory.
MAX_PIXELS_SIDE = 16384
MAX_PIXELS = MAX_PIXELS_SIDE * MAX_PIXELS_SIDE


class ImageError(NifiError, ValueError):
    """An image file cannot be used: unreadable, wrong mode or bit depth, wrong size."""


class ImageModeError(ImageError):
    """An 8-bit image that is not RGB (greyscale, palette, RGBA...), refused without ``allow_convert``."""

    def __init__(self, message: str, path: Path | None = None, mode: str | None = None):
        super().__init__(message)
        self.path, self.mode = path, mode


# Named backgrounds for compositing RGBA images (``allow_convert``), RGB in [0, 1].
BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}


_OPEN_LOCK = threading.Lock()
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F", "RGB;16", "RGBA;16")


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """``PIL.Image.open`` with the project's :data:`MAX_PIXELS` policy in place of PIL's own
    decompression-bomb check (which refuses above ~179 Mpixels, warns above ~89 Mpixels, and names its
    own limit): the header is read, nothing is decoded; :func:`_check_header` applies the limit."""
    with _OPEN_LOCK:   # MAX_IMAGE_PIXELS is a module global of PIL: lifted only for this header read
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def _raw_modes(im: Image.Image) -> list[str]:
    """The decoder raw modes of the file's tiles (e.g. ``RGB;16B`` for a 16-bit RGB PNG, which PIL
    would otherwise silently truncate to 8 bits under mode ``RGB``)."""
    out = []
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str):
            out.append(raw)
    return out


def _check_header(path: Path, im: Image.Image, allow_convert: bool) -> None:
    """Size limit, bit depth and mode from the header alone (before any decoding)."""
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{path}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS} pixels "
                         f"({MAX_PIXELS_SIDE}x{MAX_PIXELS_SIDE}); refused before decoding. Downscale or crop it first")
    mode = im.mode
    wide = [r for r in _raw_modes(im) if ";16" in r or ";32" in r]
    if mode in _HIGH_BIT_MODES or im.info.get("bits", 8) > 8 or wide:
        raise ImageError(f"{path}: {wide[0] if wide else mode} image with more than 8 bits per channel; "
                         "convert it to 8-bit RGB (e.g. PIL: im.convert('RGB') after scaling)")
    if mode != "RGB" and not allow_convert:
        raise ImageModeError(f"{path}: image mode is {mode}, expected 8-bit RGB; convert it to RGB first "
                             "(or, from Python, allow_convert=True converts it, compositing transparency on a "
                             "background)", path=path, mode=mode)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info)


def _background_rgb(background: str | Sequence[float] | None) -> np.ndarray:
    if background is None:
        return np.zeros(3, dtype=np.float32)
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r} (one of {', '.join(BACKGROUNDS)} or an r,g,b triple)")
        background = BACKGROUNDS[background]
    bg = np.asarray(background, dtype=np.float32).reshape(-1)
    if bg.shape != (3,) or not np.all((bg >= 0) & (bg <= 1)):
        raise ValueError(f"background must be 3 values in [0, 1], got {background!r}")
    return bg


def probe_rgb(path: str | Path, allow_convert: bool = False) -> tuple[int, int]:
    """``(width, height)`` of an image file after the header checks of :func:`read_rgb` (size limit,
    bit depth, mode), without decoding the pixels. Cheap: for validating a whole data set up front."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with _open(path) as im:
            _check_header(path, im, allow_convert)
            return im.size
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from e


def read_rgb(path: str | Path, allow_convert: bool = False,
             background: str | Sequence[float] | None = None) -> np.ndarray:
    """Read an 8-bit RGB image as an ``(H, W, 3)`` uint8 array.

    Anything else (RGBA, greyscale, palette, 16-bit, corrupt or truncated files, more than
    :data:`MAX_PIXELS` pixels) raises :class:`ImageError` naming the file, unless ``allow_convert`` asks
    for a conversion of 8-bit greyscale/palette/RGBA images: images with transparency (RGBA, LA, palette
    with a transparent colour) are composited on ``background`` (``"black"``, ``"white"`` or an RGB triple in
    [0, 1]; default black). The size, bit depth and mode are checked from the header, before decoding.
    """
    bg = _background_rgb(background)
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with _open(path) as im:
            _check_header(path, im, allow_convert)
            mode = im.mode
            im.load()
            if mode == "RGB":
                return np.asarray(im, dtype=np.uint8).copy()
            if _has_alpha(im):
                arr = np.asarray(im if mode == "RGBA" else im.convert("RGBA"), dtype=np.float32) / 255.0
                a = arr[..., 3:4]
                rgb = arr[..., :3] * a + bg * (1.0 - a)
                return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from e


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` in [0, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)


def to_uint8_hwc(t: torch.Tensor) -> torch.Tensor:
    """float ``(..., 3, H, W)`` in [0, 1] -> uint8 ``(..., H, W, 3)`` (rounded, clipped) on ``t``'s device: on a GPU
    the copy to the host is then a quarter of the float32 bytes (``restoration.cli.restore_stream``)."""
    return t.detach().float().clamp(0, 1).mul(255.0).round().byte().movedim(-3, -1)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float ``(3, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)`` (rounded, clipped)."""
    return to_uint8_hwc(t).cpu().numpy()


def load_image(path: str | Path, allow_convert: bool = False,
               background: str | Sequence[float] | None = None) -> torch.Tensor:
    """Read an 8-bit RGB file as a ``(3, H, W)`` float tensor in [0, 1] (``allow_convert``/``background``:
    as :func:`read_rgb`)."""
    return to_tensor(read_rgb(path, allow_convert=allow_convert, background=background))


PNG_LEVELS = range(10)   # zlib's compression levels; Pillow writes 6 unless told (lossless at every level)


def encode_png(img: torch.Tensor | np.ndarray, compress_level: int | None = None) -> bytes:
    """PNG bytes of a ``(3, H, W)`` [0, 1] tensor or ``(H, W, 3)`` uint8 array; ``compress_level`` 0-9 (None:
    Pillow's 6). Lossless at any level: a lower one trades file size for time (a 1080p frame on one core of the
    CI machine: level 6 ~750 ms, level 1 ~190 ms, the file 6-15 % larger). Pillow's encoder releases the GIL, so
    threads encode frames in parallel (:func:`~nifi_lib.restoration.cli.restore_stream`'s ``writers``)."""
    arr = to_uint8(img) if torch.is_tensor(img) else np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError("encode_png/save_image expect uint8 arrays or [0, 1] tensors")
    if compress_level is not None and compress_level not in PNG_LEVELS:
        raise ValueError(f"PNG compression level {compress_level}: expected 0-9")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **({} if compress_level is None else
                                                    {"compress_level": int(compress_level)}))
    return buf.getvalue()


def save_image(path: str | Path, img: torch.Tensor | np.ndarray, compress_level: int | None = None) -> None:
    """Write a PNG atomically from a ``(3, H, W)`` [0, 1] tensor or ``(H, W, 3)`` uint8 array (:func:`encode_png`)."""
    atomic_write_bytes(path, encode_png(img, compress_level))


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())

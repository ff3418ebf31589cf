"""COLMAP sparse models: readers and writers for the binary (``*.bin``) and text (``*.txt``) formats.

``pycolmap`` is not a dependency: the formats are small and documented (COLMAP "Output format"):

* ``cameras``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``; binary ``<iiQQ`` + ``d`` * num_params
  (the count follows from the model id), preceded by a ``<Q`` count.
* ``images``: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then a line of ``X Y POINT3D_ID`` triples;
  binary ``<idddddddi``, a NUL-terminated name, ``<Q`` number of 2D points and ``<ddq`` per point.
  ``(q, t)`` map world to camera: ``x_cam = R(q) x_world + t`` with COLMAP's OpenCV axes (x right,
  y down, z forward) and pixel centres at +0.5 (``u = fx * x / z + cx``), the project's convention.
* ``points3D``: ``POINT3D_ID X Y Z R G B ERROR TRACK[] (IMAGE_ID POINT2D_IDX)``; binary ``<QdddBBBd``,
  ``<Q`` track length and ``<ii`` per track element.

:func:`read_colmap_scene` turns a scene folder (``sparse/0`` + ``images[_2|_4|_8]/``) into
:class:`nifi_lib.gs.cameras.Camera` objects sorted by image name, plus the sparse points.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import NifiError
from ..io.atomic import atomic_path

# model id -> (name, number of parameters)
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
CAMERA_MODEL_IDS = {name: (mid, n) for mid, (name, n) in CAMERA_MODELS.items()}
# Models we turn into pinhole cameras (distortion terms are dropped with a warning).
PINHOLE_LIKE = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


class ColmapError(NifiError, ValueError):
    """A COLMAP model or its images cannot be used (missing/corrupt file, unsupported camera model...)."""


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64 (num_params,)


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray       # (4,) float64, (qw, qx, qy, qz), world -> camera rotation
    tvec: np.ndarray       # (3,) float64
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))                 # (N, 2) float64
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # (N,) int64, -1 = none

    def rotation(self) -> np.ndarray:
        return qvec_to_rotmat(self.qvec)

    def world_to_cam(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation()
        m[:3, 3] = self.tvec
        return m


@dataclass
class ColmapPoints:
    ids: np.ndarray        # (P,) int64
    xyz: np.ndarray        # (P, 3) float64
    rgb: np.ndarray        # (P, 3) uint8
    error: np.ndarray      # (P,) float64
    tracks: list[np.ndarray] = field(default_factory=list)  # per point (L, 2) int32: (image_id, point2D_idx)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @staticmethod
    def empty() -> "ColmapPoints":
        return ColmapPoints(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), [])


# --------------------------------------------------------------------------- rotations

def qvec_to_rotmat(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` -> 3x3 rotation matrix (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(r: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion ``(w, x, y, z)`` with ``w >= 0`` (Shepperd's method)."""
    m = np.asarray(r, dtype=np.float64)
    tr = np.trace(m)
    cands = [tr, m[0, 0], m[1, 1], m[2, 2]]
    k = int(np.argmax(cands))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + tr)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif k == 1:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


# --------------------------------------------------------------------------- binary format

class _Reader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.buf = path.read_bytes()
        except OSError as e:
            raise ColmapError(f"{path}: cannot read ({e})") from e
        self.pos = 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ColmapError(f"{self.path}: file ends early at byte {self.pos} (truncated or not a COLMAP binary file)")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        size = dt.itemsize * count
        if self.pos + size > len(self.buf):
            raise ColmapError(f"{self.path}: file ends early at byte {self.pos} (truncated or not a COLMAP binary file)")
        out = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
        self.pos += size
        return out

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise ColmapError(f"{self.path}: unterminated image name at byte {self.pos}")
        s = self.buf[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ColmapError(f"{self.path}: {len(self.buf) - self.pos} unexpected trailing bytes (corrupt file?)")


def read_cameras_binary(path: str | Path) -> dict[int, ColmapCamera]:
    r = _Reader(Path(path))
    (n,) = r.read("<Q")
    cams = {}
    for _ in range(n):
        cid, mid, w, h = r.read("<iiQQ")
        if mid not in CAMERA_MODELS:
            raise ColmapError(f"{path}: camera {cid} has unknown model id {mid}")
        name, npar = CAMERA_MODELS[mid]
        cams[cid] = ColmapCamera(cid, name, int(w), int(h), r.array("<f8", npar))
    r.done()
    return cams


def read_images_binary(path: str | Path) -> dict[int, ColmapImage]:
    r = _Reader(Path(path))
    (n,) = r.read("<Q")
    images = {}
    for _ in range(n):
        vals = r.read("<idddddddi")
        name = r.cstring()
        (npts,) = r.read("<Q")
        pts = r.array("<f8,<f8,<i8", npts) if npts else None
        xys = np.stack([pts["f0"], pts["f1"]], axis=1) if npts else np.zeros((0, 2))
        ids = pts["f2"].astype(np.int64) if npts else np.zeros(0, np.int64)
        images[vals[0]] = ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name, xys, ids)
    r.done()
    return images


def read_points3D_binary(path: str | Path) -> ColmapPoints:
    r = _Reader(Path(path))
    (n,) = r.read("<Q")
    ids = np.zeros(n, np.int64)
    xyz = np.zeros((n, 3))
    rgb = np.zeros((n, 3), np.uint8)
    err = np.zeros(n)
    tracks = []
    for i in range(n):
        pid, x, y, z, cr, cg, cb, e = r.read("<QdddBBBd")
        ids[i], xyz[i], rgb[i], err[i] = pid, (x, y, z), (cr, cg, cb), e
        (tl,) = r.read("<Q")
        tracks.append(r.array("<i4", 2 * tl).reshape(tl, 2))
    r.done()
    return ColmapPoints(ids, xyz, rgb, err, tracks)


def write_cameras_binary(path: str | Path, cameras: dict[int, ColmapCamera]) -> None:
    parts = [struct.pack("<Q", len(cameras))]
    for cid in sorted(cameras):
        c = cameras[cid]
        mid, npar = CAMERA_MODEL_IDS[c.model]
        if len(c.params) != npar:
            raise ColmapError(f"camera {cid}: {c.model} needs {npar} parameters, got {len(c.params)}")
        parts.append(struct.pack("<iiQQ", cid, mid, c.width, c.height))
        parts.append(np.asarray(c.params, "<f8").tobytes())
    _write_bytes(path, b"".join(parts))


def write_images_binary(path: str | Path, images: dict[int, ColmapImage]) -> None:
    parts = [struct.pack("<Q", len(images))]
    for iid in sorted(images):
        im = images[iid]
        parts.append(struct.pack("<idddddddi", iid, *map(float, im.qvec), *map(float, im.tvec), im.camera_id))
        parts.append(im.name.encode("utf-8") + b"\x00")
        n = len(im.point3D_ids)
        parts.append(struct.pack("<Q", n))
        if n:
            rec = np.zeros(n, dtype="<f8,<f8,<i8")
            rec["f0"], rec["f1"], rec["f2"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
            parts.append(rec.tobytes())
    _write_bytes(path, b"".join(parts))


def write_points3D_binary(path: str | Path, points: ColmapPoints) -> None:
    parts = [struct.pack("<Q", len(points))]
    for i in range(len(points)):
        parts.append(struct.pack("<QdddBBBd", int(points.ids[i]), *map(float, points.xyz[i]),
                                 *map(int, points.rgb[i]), float(points.error[i])))
        tr = points.tracks[i] if i < len(points.tracks) else np.zeros((0, 2), np.int32)
        parts.append(struct.pack("<Q", len(tr)))
        parts.append(np.asarray(tr, "<i4").reshape(-1).tobytes())
    _write_bytes(path, b"".join(parts))


def _write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --------------------------------------------------------------------------- text format

def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ColmapError(f"{path}: cannot read ({e})") from e


def read_cameras_text(path: str | Path) -> dict[int, ColmapCamera]:
    path = Path(path)
    cams = {}
    for ln, line in enumerate(_text_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        el = line.split()
        try:
            cid, model, w, h = int(el[0]), el[1], int(el[2]), int(el[3])
            params = np.array([float(v) for v in el[4:]])
        except (IndexError, ValueError) as e:
            raise ColmapError(f"{path}:{ln}: cannot parse camera line ({e})") from e
        if model not in CAMERA_MODEL_IDS:
            raise ColmapError(f"{path}:{ln}: unknown camera model '{model}'")
        if len(params) != CAMERA_MODEL_IDS[model][1]:
            raise ColmapError(f"{path}:{ln}: {model} needs {CAMERA_MODEL_IDS[model][1]} parameters, got {len(params)}")
        cams[cid] = ColmapCamera(cid, model, w, h, params)
    return cams


def read_images_text(path: str | Path) -> dict[int, ColmapImage]:
    path = Path(path)
    lines = _text_lines(path)
    images = {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        el = line.split(maxsplit=9)
        try:
            iid = int(el[0])
            q = np.array([float(v) for v in el[1:5]])
            t = np.array([float(v) for v in el[5:8]])
            cam_id, name = int(el[8]), el[9].strip()
        except (IndexError, ValueError) as e:
            raise ColmapError(f"{path}:{i}: cannot parse image line ({e})") from e
        pts_line = lines[i].split() if i < len(lines) else []
        i += 1
        if len(pts_line) % 3:
            raise ColmapError(f"{path}:{i}: the 2D point line of image {iid} does not hold X Y POINT3D_ID triples")
        try:
            xys = np.array([[float(pts_line[k]), float(pts_line[k + 1])] for k in range(0, len(pts_line), 3)]).reshape(-1, 2)
            ids = np.array([int(pts_line[k + 2]) for k in range(0, len(pts_line), 3)], dtype=np.int64)
        except ValueError as e:
            raise ColmapError(f"{path}:{i}: cannot parse the 2D points of image {iid} ({e})") from e
        images[iid] = ColmapImage(iid, q, t, cam_id, name, xys, ids)
    return images


def read_points3D_text(path: str | Path) -> ColmapPoints:
    path = Path(path)
    ids, xyz, rgb, err, tracks = [], [], [], [], []
    for ln, line in enumerate(_text_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        el = line.split()
        try:
            ids.append(int(el[0]))
            xyz.append([float(v) for v in el[1:4]])
            rgb.append([int(v) for v in el[4:7]])
            err.append(float(el[7]))
            tr = [int(v) for v in el[8:]]
        except (IndexError, ValueError) as e:
            raise ColmapError(f"{path}:{ln}: cannot parse point line ({e})") from e
        if len(tr) % 2:
            raise ColmapError(f"{path}:{ln}: odd number of track values")
        tracks.append(np.array(tr, np.int32).reshape(-1, 2))
    if not ids:
        return ColmapPoints.empty()
    return ColmapPoints(np.array(ids, np.int64), np.array(xyz, np.float64), np.array(rgb, np.uint8),
                        np.array(err, np.float64), tracks)


def _fmt(v: float) -> str:
    return repr(float(v))  # shortest round-trip representation: no precision lost


def write_cameras_text(path: str | Path, cameras: dict[int, ColmapCamera]) -> None:
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cameras)}"]
    for cid in sorted(cameras):
        c = cameras[cid]
        if c.model not in CAMERA_MODEL_IDS or len(c.params) != CAMERA_MODEL_IDS[c.model][1]:
            raise ColmapError(f"camera {cid}: bad model {c.model} or parameter count {len(c.params)}")
        lines.append(" ".join([str(cid), c.model, str(c.width), str(c.height)] + [_fmt(p) for p in c.params]))
    _write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def write_images_text(path: str | Path, images: dict[int, ColmapImage]) -> None:
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(images)}"]
    for iid in sorted(images):
        im = images[iid]
        lines.append(" ".join([str(iid)] + [_fmt(v) for v in im.qvec] + [_fmt(v) for v in im.tvec]
                              + [str(im.camera_id), im.name]))
        lines.append(" ".join(f"{_fmt(x)} {_fmt(y)} {int(p)}" for (x, y), p in zip(im.xys, im.point3D_ids)))
    _write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def write_points3D_text(path: str | Path, points: ColmapPoints) -> None:
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {len(points)}"]
    for i in range(len(points)):
        tr = points.tracks[i] if i < len(points.tracks) else np.zeros((0, 2), np.int32)
        lines.append(" ".join([str(int(points.ids[i]))] + [_fmt(v) for v in points.xyz[i]]
                              + [str(int(v)) for v in points.rgb[i]] + [_fmt(points.error[i])]
                              + [str(int(v)) for v in np.asarray(tr).reshape(-1)]))
    _write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- models

def detect_model_format(path: str | Path) -> str | None:
    """``".bin"`` or ``".txt"`` when ``path`` holds a complete model (binary preferred), else None."""
    path = Path(path)
    for ext in (".bin", ".txt"):
        if all((path / f"{n}{ext}").is_file() for n in ("cameras", "images")):
            return ext
    return None


def read_model(path: str | Path, ext: str | None = None
               ) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], ColmapPoints]:
    """Read ``cameras``, ``images`` and ``points3D`` (binary or text; a missing points3D gives no points)."""
    path = Path(path)
    ext = ext or detect_model_format(path)
    if ext is None:
        raise ColmapError(f"{path}: no COLMAP model here (expected cameras.bin + images.bin [+ points3D.bin] "
                          "or the .txt equivalents)")
    if ext == ".bin":
        cams, imgs = read_cameras_binary(path / "cameras.bin"), read_images_binary(path / "images.bin")
        pts_file = path / "points3D.bin"
        pts = read_points3D_binary(pts_file) if pts_file.is_file() else ColmapPoints.empty()
    elif ext == ".txt":
        cams, imgs = read_cameras_text(path / "cameras.txt"), read_images_text(path / "images.txt")
        pts_file = path / "points3D.txt"
        pts = read_points3D_text(pts_file) if pts_file.is_file() else ColmapPoints.empty()
    else:
        raise ColmapError(f"unknown COLMAP model extension {ext!r} (.bin or .txt)")
    return cams, imgs, pts


def write_model(path: str | Path, cameras: dict[int, ColmapCamera], images: dict[int, ColmapImage],
                points: ColmapPoints | None = None, ext: str = ".bin") -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    points = points if points is not None else ColmapPoints.empty()
    if ext == ".bin":
        write_cameras_binary(path / "cameras.bin", cameras)
        write_images_binary(path / "images.bin", images)
        write_points3D_binary(path / "points3D.bin", points)
    elif ext == ".txt":
        write_cameras_text(path / "cameras.txt", cameras)
        write_images_text(path / "images.txt", images)
        write_points3D_text(path / "points3D.txt", points)
    else:
        raise ColmapError(f"unknown COLMAP model extension {ext!r} (.bin or .txt)")


def find_sparse_dir(root: str | Path) -> Path | None:
    """The model folder of a scene: ``sparse/0``, ``sparse``, ``colmap/sparse/0``, ``colmap/sparse`` (first found)."""
    root = Path(root)
    for rel in ("sparse/0", "sparse", "colmap/sparse/0", "colmap/sparse", "."):
        if detect_model_format(root / rel):
            return root / rel
    return None


def pinhole_intrinsics(cam: ColmapCamera, source: str = "") -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` of a pinhole-like COLMAP camera; distortion terms are ignored with a warning."""
    p = np.asarray(cam.params, dtype=np.float64)
    if cam.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2]
    if cam.model == "PINHOLE":
        return p[0], p[1], p[2], p[3]
    if cam.model in ("SIMPLE_RADIAL", "RADIAL"):
        fx, fy, cx, cy, dist = p[0], p[0], p[1], p[2], p[3:]
    elif cam.model == "OPENCV":
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], p[4:]
    else:
        raise ColmapError(f"{source}: camera {cam.id} uses the {cam.model} model, which is not a pinhole camera; "
                          f"undistort the images first (colmap image_undistorter ... --output_type COLMAP) and use "
                          f"the undistorted model (supported: {', '.join(PINHOLE_LIKE)})")
    if np.any(np.abs(dist) > 0):
        warnings.warn(f"{source}: camera {cam.id} ({cam.model}) has distortion {dist.tolist()}, which is ignored "
                      "(treated as a pinhole camera); undistort the images with colmap image_undistorter for exact "
                      "geometry", stacklevel=3)
    return fx, fy, cx, cy


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except Exception as e:
        raise ColmapError(f"{path}: cannot read image ({e.__class__.__name__}: {e})") from e


def images_folder(root: Path, images_dir: str = "images", downscale: int | None = 1) -> Path:
    """``root/images`` (downscale 1) or ``root/images_{d}``; ``None`` = ``images`` if present, else the
    finest ``images_2/4/8`` that exists."""
    if downscale is None:
        if (root / images_dir).is_dir():
            return root / images_dir
        for d in (2, 4, 8):
            if (root / f"{images_dir}_{d}").is_dir():
                return root / f"{images_dir}_{d}"
        raise ColmapError(f"{root}: no image folder ({images_dir}/ or {images_dir}_2/4/8/)")
    if downscale not in (1, 2, 4, 8):
        raise ColmapError(f"downscale must be 1, 2, 4 or 8, got {downscale}")
    folder = root / (images_dir if downscale == 1 else f"{images_dir}_{downscale}")
    if not folder.is_dir():
        have = sorted(p.name for p in root.glob(f"{images_dir}*") if p.is_dir())
        raise ColmapError(f"{folder}: image folder not found (downscale={downscale}); the scene has "
                          f"{', '.join(have) or 'no image folders'}. Choose another downscale or create it by "
                          "resizing the images (e.g. the 3DGS convert.py --resize)")
    return folder


def _resolve_name(folder: Path, name: str) -> Path | None:
    p = folder / name
    if p.is_file():
        return p
    # downscaled copies are sometimes re-encoded (e.g. JPG -> png): accept the same stem with another extension
    for ext in IMAGE_EXTS:
        q = p.with_suffix(ext)
        if q.is_file():
            return q
    return None


def read_colmap_scene(root: str | Path, images_dir: str = "images", downscale: int | None = 1,
                      sparse_dir: str | Path | None = None, check_images: bool = True
                      ) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Cameras (sorted by image name) and sparse points of a COLMAP scene.

    Returns ``(cameras, xyz, rgb)``: a list of :class:`nifi_lib.gs.cameras.Camera` whose ``image_path``
    points into ``images_dir`` (or ``images_dir_{downscale}``), ``xyz`` (P, 3) float32 and ``rgb``
    (P, 3) float32 in [0, 1]. Intrinsics are scaled to the actual size of each image file, so downscaled
    folders (``images_4``, rounded sizes) get exact intrinsics. Missing image files raise
    :class:`ColmapError` naming them.
    """
    from ..gs.cameras import Camera

    root = Path(root)
    model_dir = Path(sparse_dir) if sparse_dir is not None else find_sparse_dir(root)
    if model_dir is None:
        raise ColmapError(f"{root}: no COLMAP model found (looked for sparse/0/, sparse/, colmap/sparse/0/ with "
                          "cameras.bin/images.bin or .txt)")
    cams, imgs, pts = read_model(model_dir)
    if not imgs:
        raise ColmapError(f"{model_dir}: the model has no registered images")
    folder = images_folder(root, images_dir, downscale) if check_images or downscale != 1 else root / images_dir
    ordered = sorted(imgs.values(), key=lambda im: im.name)
    paths: list[Path | None] = [_resolve_name(folder, im.name) for im in ordered]
    if check_images:
        missing = [im.name for im, p in zip(ordered, paths) if p is None]
        if missing:
            raise ColmapError(f"{folder}: {len(missing)} of {len(ordered)} images of the model {model_dir} are missing, "
                              f"e.g. {', '.join(missing[:5])}")
    out = []
    intr_cache: dict[int, tuple[float, float, float, float]] = {}
    for im, p in zip(ordered, paths):
        if im.camera_id not in cams:
            raise ColmapError(f"{model_dir}: image {im.name} refers to camera {im.camera_id}, which is not in the model")
        c = cams[im.camera_id]
        if c.id not in intr_cache:
            intr_cache[c.id] = pinhole_intrinsics(c, str(model_dir))
        fx, fy, cx, cy = intr_cache[c.id]
        w, h = (_image_size(p) if (p is not None and check_images) else (c.width, c.height))
        sx, sy = w / c.width, h / c.height
        out.append(Camera(im.name, w, h, fx * sx, fy * sy, cx * sx, cy * sy,
                          torch.from_numpy(im.world_to_cam()).float(), p if p is not None else folder / im.name,
                          {"format": "colmap", "image_id": im.id, "camera_id": c.id, "model": c.model}))
    xyz = torch.from_numpy(pts.xyz.astype(np.float32)).reshape(-1, 3)
    rgb = torch.from_numpy(pts.rgb.astype(np.float32) / 255.0).reshape(-1, 3)
    return out, xyz, rgb

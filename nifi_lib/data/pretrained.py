"""Pretrained dense 3DGS models from other tools, in the frame of their scene's cameras.

Formats (:func:`detect_model_format`, the one detector; :func:`load_pretrained` reads any of them):

* ``ply``: a 3DGS PLY in the INRIA layout (:func:`nifi_lib.gs.model.load_ply`), already in the scene frame;
* ``inria``: an INRIA 3DGS output folder (``cfg_args``, ``point_cloud/iteration_<k>/point_cloud.ply``):
  the PLY of the highest iteration (:mod:`nifi_lib.data.inria`);
* ``nerfstudio``: a splatfacto export (``ns-export gaussian-splat``: ``splat.ply``, INRIA layout) in the
  dataparser's normalized frame, with ``dataparser_transforms.json`` ``{"transform": 3x4 [R|t], "scale": s}``
  (next to the PLY, in the given folder, or passed as ``transforms``). nerfstudio maps the data frame
  (``transforms.json``) to ``x_n = s (R x + t)``; the model is mapped back with
  ``x = R^T (x_n / s - t)``: means so, log-scales ``- log s``, rotations ``R^T q`` and the view-dependent SH
  bands rotated by ``R^T`` (:func:`similarity_transform`);
* ``gsplat``: a gsplat ``simple_trainer`` checkpoint (``ckpt_<step>_rank0.pt``: ``{"step", "splats": {means,
  scales (log), quats (wxyz), opacities (logit), sh0 (N,1,3), shN (N,K,3)}}``; ``torch.load(weights_only=True)``).
  ``shN`` is ``(N, K, 3)`` like :attr:`GaussianModel.sh_rest` (gsplat's PLY export flattens it channel-major,
  as INRIA's ``f_rest``). gsplat normalizes the COLMAP world by default (``normalize_world_space``) and does not
  save the transform: pass it as ``transforms`` (a ``dataparser_transforms.json``-style file, or a JSON/``.npy``
  4x4 similarity ``T`` with ``x_n = T x``, i.e. its ``Parser.transform``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..gs.model import GaussianError

MODEL_FORMATS = ("ply", "inria", "nerfstudio", "gsplat")
DATAPARSER_TRANSFORMS = "dataparser_transforms.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
GSPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0")


class PretrainedError(GaussianError):
    """A pretrained model file or its frame transform cannot be used."""


def _folder_ply(folder: Path) -> Path | None:
    plys = sorted(folder.glob("*.ply"))
    for p in plys:
        if p.name == "splat.ply":
            return p
    return plys[0] if len(plys) == 1 else None


def detect_model_format(path: str | Path, transforms: str | Path | None = None) -> str:
    """``ply``, ``inria``, ``nerfstudio`` or ``gsplat`` (module docstring); :class:`PretrainedError` otherwise."""
    from .inria import is_inria_output

    path = Path(path)
    if path.is_dir():
        if (path / "point_cloud").is_dir() and ((path / "cfg_args").is_file() or is_inria_output(path)):
            return "inria"
        if (path / DATAPARSER_TRANSFORMS).is_file() and _folder_ply(path) is not None:
            return "nerfstudio"
        raise PretrainedError(f"{path}: unknown model folder: expected an INRIA 3DGS output (cfg_args, "
                              f"point_cloud/iteration_*/) or a nerfstudio export ({DATAPARSER_TRANSFORMS} + splat.ply)")
    if not path.is_file():
        raise PretrainedError(f"{path}: model file not found")
    if path.suffix.lower() == ".ply":
        if (transforms is not None and Path(transforms).name == DATAPARSER_TRANSFORMS) \
                or (path.parent / DATAPARSER_TRANSFORMS).is_file():
            return "nerfstudio"
        return "ply"
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "gsplat"
    raise PretrainedError(f"{path}: unknown model file (expected a 3DGS .ply, a gsplat checkpoint .pt, an INRIA "
                          "output folder or a nerfstudio export folder)")


# --- frame transforms -------------------------------------------------------------------------------------

def read_frame_transform(path: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
    """``(R (3, 3), t (3,), s)`` with ``x_n = s (R x + t)`` from a ``dataparser_transforms.json`` or a
    4x4/3x4 similarity matrix (JSON list or ``.npy``: ``x_n = T x``, ``T[:3, :3] = s R``)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path}: cannot read the frame transform ({e.__class__.__name__}: {e})") from e
    if isinstance(data, dict):
        if "transform" not in data:
            raise PretrainedError(f"{path}: no 'transform' (expected nerfstudio's "
                                  '{"transform": 3x4, "scale": s})')
        m = np.asarray(data["transform"], dtype=np.float64)
        s = float(data.get("scale", 1.0))
        if m.shape not in ((3, 4), (4, 4)):
            raise PretrainedError(f"{path}: 'transform' must be 3x4, got {m.shape}")
        r, t = m[:3, :3], m[:3, 3]
    else:
        m = np.asarray(data, dtype=np.float64)
        if m.shape not in ((3, 4), (4, 4)):
            raise PretrainedError(f"{path}: expected a 4x4 or 3x4 similarity matrix, got shape {m.shape}")
        a = m[:3, :3]
        s = float(np.cbrt(np.linalg.det(a)))
        if not s > 0:
            raise PretrainedError(f"{path}: the matrix is not a similarity (det {np.linalg.det(a):.3g})")
        r, t = a / s, m[:3, 3] / s
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(t)) and math.isfinite(s) and s > 0):
        raise PretrainedError(f"{path}: non-finite transform or scale <= 0")
    if np.abs(r @ r.T - np.eye(3)).max() > 1e-4 or np.linalg.det(r) < 0:
        raise PretrainedError(f"{path}: the rotation part is not a proper rotation (a reflection or a non-uniform "
                              "scale cannot be undone on Gaussians)")
    return r, t, s


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (…, 4) wxyz quaternions: R(a b) = R(a) R(b)."""
    w1, x1, y1, z1 = a.unbind(-1)
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], dim=-1)


def sh_rotation(rotation: np.ndarray, degree: int) -> torch.Tensor:
    """``(K, K)`` float64 matrix ``X`` of the rest SH bands (1..degree, the 3DGS order): coefficients ``c`` of a
    colour ``f(d)`` become ``X c`` for ``f'(d) = f(R^T d)`` (the colour of a model whose frame was rotated by R)."""
    from ..gs.sh import eval_sh, num_sh_bases

    nb = num_sh_bases(degree)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4 * nb * nb + 64, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    eye = torch.eye(nb, dtype=torch.float64)

    def basis(dirs: torch.Tensor) -> torch.Tensor:  # (n, nb): every basis function at every direction
        coeffs = eye.T[None, :, :].expand(len(dirs), nb, nb)  # channel j = basis j
        return eval_sh(degree, coeffs, dirs)

    r = torch.as_tensor(rotation, dtype=torch.float64)
    a, b = basis(d), basis(d @ r)  # rows of d @ r are R^T d
    x = torch.linalg.lstsq(a, b).solution  # a x = b: Y(R^T d) = Y(d) x
    # sum_j c_j Y_j(R^T d) = sum_k (sum_j x_kj c_j) Y_k(d)
    return x[1:, 1:].contiguous()


def similarity_transform(model, rotation, translation, scale: float):
    """The model in the frame ``x' = scale * R x + translation`` (renders from cameras moved the same way match)."""
    from ..gs.model import GaussianModel
    from .colmap import rotmat_to_qvec

    r = np.asarray(rotation, dtype=np.float64)
    r64 = torch.as_tensor(r)
    means = (model.means.double() @ r64.T * float(scale) + torch.as_tensor(np.asarray(translation, np.float64)))
    q_r = torch.as_tensor(rotmat_to_qvec(r), dtype=torch.float64)
    quats = _quat_mul(q_r.expand_as(model.quats.double()), model.quats.double())
    rest = model.sh_rest
    if rest.shape[1]:
        x = sh_rotation(r, model.sh_degree)
        rest = torch.einsum("kj,njc->nkc", x, rest.double())
    return GaussianModel(means=means.float(), log_scales=(model.log_scales.double() + math.log(scale)).float(),
                         quats=quats.float(), opacity_logits=model.opacity_logits.clone(), sh_dc=model.sh_dc.clone(),
                         sh_rest=rest.float().contiguous())


def undo_normalization(model, rotation, translation, scale: float):
    """Inverse of nerfstudio's ``x_n = s (R x + t)``: ``x = R^T (x_n / s - t)``."""
    r = np.asarray(rotation, dtype=np.float64)
    return similarity_transform(model, r.T, -(r.T @ np.asarray(translation, np.float64)), 1.0 / float(scale))


def apply_normalization(model, rotation, translation, scale: float):
    """nerfstudio's forward map ``x_n = s (R x + t)`` (tests and exports)."""
    return similarity_transform(model, rotation, float(scale) * np.asarray(translation, np.float64), float(scale))


# --- readers ------------------------------------------------------------------------------------------------

def read_gsplat_checkpoint(path: str | Path):
    """A gsplat checkpoint's ``splats`` as a :class:`GaussianModel` (exact: same parametrisation)."""
    from ..gs.model import GaussianError, GaussianModel

    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PretrainedError(f"{path}: cannot read the checkpoint ({e.__class__.__name__}: {e})") from e
    splats = data.get("splats", data) if isinstance(data, dict) else None
    if not isinstance(splats, dict) or any(k not in splats for k in GSPLAT_KEYS):
        have = sorted(splats) if isinstance(splats, dict) else type(data).__name__
        raise PretrainedError(f"{path}: not a gsplat checkpoint (expected 'splats' with {', '.join(GSPLAT_KEYS)}, "
                              f"shN; found {have})")
    n = splats["means"].shape[0]
    sh0 = splats["sh0"].float()
    if sh0.shape != (n, 1, 3):
        raise PretrainedError(f"{path}: sh0 has shape {tuple(sh0.shape)}, expected ({n}, 1, 3)")
    shn = splats.get("shN")
    shn = shn.float() if shn is not None else sh0.new_zeros((n, 0, 3))
    model = GaussianModel(means=splats["means"].float(), log_scales=splats["scales"].float(),
                          quats=splats["quats"].float(), opacity_logits=splats["opacities"].float().reshape(n),
                          sh_dc=sh0[:, 0, :].contiguous(), sh_rest=shn.contiguous())
    try:
        model.validate(str(path))
    except GaussianError as e:
        raise PretrainedError(str(e)) from e
    return model


def write_gsplat_checkpoint(path: str | Path, model, step: int = 0) -> None:
    """Save ``model`` as gsplat's ``simple_trainer`` does (``{"step", "splats"}``; tests and exports)."""
    m = model.detach().to("cpu")
    splats = {"means": m.means, "scales": m.log_scales, "quats": m.quats, "opacities": m.opacity_logits,
              "sh0": m.sh_dc[:, None, :], "shN": m.sh_rest}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": int(step), "splats": splats}, path)


def load_pretrained(path: str | Path, transforms: str | Path | None = None) -> tuple[object, dict]:
    """``(GaussianModel in the scene frame, info)`` of any format of the module docstring;
    ``info``: ``{"format", "file", "transforms"}`` (the files actually read)."""
    from ..gs.model import load_ply
    from .inria import inria_ply

    path = Path(path)
    fmt = detect_model_format(path, transforms)
    tf = Path(transforms) if transforms is not None else None
    if fmt == "inria":
        file = inria_ply(path)
        model = load_ply(file)
    elif fmt == "gsplat":
        file = path
        model = read_gsplat_checkpoint(path)
    else:
        file = _folder_ply(path) if path.is_dir() else path
        model = load_ply(file)
        if fmt == "nerfstudio" and tf is None:
            tf = file.parent / DATAPARSER_TRANSFORMS
            if not tf.is_file():
                tf = path / DATAPARSER_TRANSFORMS
    if tf is not None:
        if not tf.is_file():
            raise PretrainedError(f"{tf}: frame transform file not found")
        r, t, s = read_frame_transform(tf)
        model = undo_normalization(model, r, t, s)
    return model.validate(str(file)), {"format": fmt, "file": str(file), "transforms": str(tf) if tf else None}


__all__ = ["MODEL_FORMATS", "DATAPARSER_TRANSFORMS", "PretrainedError", "detect_model_format", "read_frame_transform",
           "similarity_transform", "undo_normalization", "apply_normalization", "sh_rotation",
           "read_gsplat_checkpoint", "write_gsplat_checkpoint", "load_pretrained"]

"""A 3D Gaussian Splatting scene (Kerbl et al. 2023) and its standard PLY file layout.

Each Gaussian has a mean, an anisotropic covariance ``Sigma = R S S^T R^T`` (3DGS Eq. 6) stored as
log-scales ``s`` (``S = diag(exp s)``) and a quaternion ``q = (w, x, y, z)`` (``R = R(q / |q|)``), an
opacity stored as a logit (``o = sigmoid(logit)``) and view-dependent colour as spherical-harmonic
coefficients (``sh_dc`` for degree 0, ``sh_rest`` for degrees 1..3).

The PLY layout is the one the INRIA 3DGS code writes (and SIBR, gsplat, SuperSplat... read):
``x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3``, all float32, with
``f_rest`` stored channel-major (the K coefficients of R, then of G, then of B).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import NifiError
from ..io.atomic import atomic_path

TENSOR_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


class GaussianError(NifiError, ValueError):
    """A Gaussian scene cannot be used: bad PLY file, NaN/inf values, inconsistent shapes, no Gaussians."""


def sh_degree_from_rest(k: int) -> int | None:
    """SH degree ``d`` with ``(d + 1)^2 - 1 == k`` rest coefficients per channel, or None."""
    d = int(round(math.sqrt(k + 1))) - 1
    return d if d >= 0 and (d + 1) ** 2 - 1 == k else None


@dataclass
class GaussianModel:
    """N Gaussians as float32 tensors (see the module docstring for the parametrisation).

    Attributes: ``means (N,3)``, ``log_scales (N,3)``, ``quats (N,4)`` (w, x, y, z; not necessarily
    normalised), ``opacity_logits (N,)``, ``sh_dc (N,3)``, ``sh_rest (N,K,3)`` with
    ``K = (deg+1)^2 - 1`` (``K = 0`` for degree 0).
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh_dc: torch.Tensor
    sh_rest: torch.Tensor

    # --- basic properties -------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    def __len__(self) -> int:
        return self.num_gaussians

    @property
    def sh_degree(self) -> int:
        d = sh_degree_from_rest(int(self.sh_rest.shape[1]))
        if d is None:
            raise GaussianError(f"sh_rest has {self.sh_rest.shape[1]} coefficients, not (d+1)^2-1 for any degree d")
        return d

    @property
    def device(self) -> torch.device:
        return self.means.device

    # --- derived quantities -----------------------------------------------------------------
    @property
    def scales(self) -> torch.Tensor:
        """``exp(log_scales)`` (N, 3)."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        """``sigmoid(opacity_logits)`` (N,)."""
        return torch.sigmoid(self.opacity_logits)

    # --- tensor plumbing ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The six attribute tensors by name (same objects, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "GaussianModel":
        """Build from a dict with the attribute names of :meth:`tensors` (``sh_rest`` may be omitted: degree 0)."""
        missing = [n for n in TENSOR_NAMES if n not in tensors and n != "sh_rest"]
        if missing:
            raise GaussianError(f"from_tensors: missing tensors {missing}")
        t = dict(tensors)
        if "sh_rest" not in t:
            t["sh_rest"] = t["means"].new_zeros((t["means"].shape[0], 0, 3))
        return cls(**{n: t[n] for n in TENSOR_NAMES})

    def _map(self, fn) -> "GaussianModel":
        return GaussianModel(**{n: fn(v) for n, v in self.tensors().items()})

    def subset(self, index_or_mask: torch.Tensor | np.ndarray | list[int] | slice) -> "GaussianModel":
        """The Gaussians selected by a boolean mask, an index tensor/list or a slice (copies)."""
        idx = index_or_mask
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        elif isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        if torch.is_tensor(idx):
            idx = idx.to(self.device)
            if idx.dtype == torch.bool and idx.shape != (self.num_gaussians,):
                raise GaussianError(f"subset: mask of shape {tuple(idx.shape)} for {self.num_gaussians} Gaussians")
        return self._map(lambda v: v[idx])

    def to(self, device: torch.device | str) -> "GaussianModel":
        return self._map(lambda v: v.to(device))

    def clone(self) -> "GaussianModel":
        return self._map(lambda v: v.clone())

    def detach(self) -> "GaussianModel":
        return self._map(lambda v: v.detach())

    def requires_grad_(self, flag: bool = True) -> "GaussianModel":
        for v in self.tensors().values():
            v.requires_grad_(flag)
        return self

    def validate(self, source: str = "GaussianModel") -> "GaussianModel":
        """Check shapes, dtypes and finiteness; raise :class:`GaussianError` naming ``source``."""
        t = self.tensors()
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,), "sh_dc": (n, 3)}
        for name, shape in expected.items():
            if tuple(t[name].shape) != shape:
                raise GaussianError(f"{source}: {name} has shape {tuple(t[name].shape)}, expected {shape}")
        rest = t["sh_rest"]
        if rest.ndim != 3 or rest.shape[0] != n or rest.shape[2] != 3 or sh_degree_from_rest(rest.shape[1]) is None:
            raise GaussianError(f"{source}: sh_rest has shape {tuple(rest.shape)}, expected ({n}, (d+1)^2-1, 3)")
        if n == 0:
            raise GaussianError(f"{source}: the scene has zero Gaussians")
        for name, v in t.items():
            if not v.is_floating_point():
                raise GaussianError(f"{source}: {name} has dtype {v.dtype}, expected float32")
            bad = ~torch.isfinite(v.detach())
            if bool(bad.any()):
                raise GaussianError(f"{source}: {name} has {int(bad.sum())} NaN/inf values")
        return self

    @staticmethod
    def empty_like_degree(n: int, sh_degree: int, device: torch.device | str = "cpu") -> "GaussianModel":
        """Zero-initialised model (identity rotations) with ``n`` Gaussians of ``sh_degree``."""
        k = (sh_degree + 1) ** 2 - 1
        quats = torch.zeros(n, 4, device=device)
        quats[:, 0] = 1.0
        return GaussianModel(
            means=torch.zeros(n, 3, device=device), log_scales=torch.zeros(n, 3, device=device), quats=quats,
            opacity_logits=torch.zeros(n, device=device), sh_dc=torch.zeros(n, 3, device=device),
            sh_rest=torch.zeros(n, k, 3, device=device),
        )


def concat(models: list[GaussianModel]) -> GaussianModel:
    """Concatenate scenes of the same SH degree."""
    if not models:
        raise GaussianError("concat: no models")
    return GaussianModel(**{n: torch.cat([getattr(m, n) for m in models]) for n in TENSOR_NAMES})


# --- PLY I/O ---------------------------------------------------------------------------------------

def ply_property_names(sh_degree: int) -> list[str]:
    """Vertex property names of the INRIA 3DGS PLY layout for ``sh_degree``."""
    k = (sh_degree + 1) ** 2 - 1
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(3 * k)] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


def save_ply(model: GaussianModel, path: str | Path) -> None:
    """Write ``model`` atomically as a binary little-endian 3DGS PLY (float32, normals zero)."""
    from plyfile import PlyData, PlyElement

    model = model.detach().to("cpu")
    model.validate(str(path))
    n, k = model.num_gaussians, model.sh_rest.shape[1]
    f_rest = model.sh_rest.float().transpose(1, 2).reshape(n, 3 * k)  # channel-major, as INRIA 3DGS
    columns = [model.means.float(), torch.zeros(n, 3), model.sh_dc.float(), f_rest,
               model.opacity_logits.float()[:, None], model.log_scales.float(), model.quats.float()]
    data = torch.cat(columns, dim=1).numpy()
    names = ply_property_names(model.sh_degree)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    with atomic_path(path, suffix=".ply") as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(tmp))


def load_ply(path: str | Path) -> GaussianModel:
    """Read a 3DGS PLY (INRIA layout); raise :class:`GaussianError` naming the file on any problem."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise GaussianError(f"{path}: PLY file not found")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except KeyError as e:
        raise GaussianError(f"{path}: no 'vertex' element in the PLY file") from e
    except Exception as e:  # plyfile raises assorted exceptions on malformed files
        raise GaussianError(f"{path}: cannot read PLY file ({e.__class__.__name__}: {e})") from e
    names = set(vertex.data.dtype.names or ())
    n = len(vertex.data)
    if n == 0:
        raise GaussianError(f"{path}: the PLY file has zero vertices")
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [
        f"rot_{i}" for i in range(4)]
    missing = [p for p in required if p not in names]
    if missing:
        raise GaussianError(f"{path}: missing vertex properties {missing} (not a 3DGS PLY?)")
    rest_names = sorted((p for p in names if p.startswith("f_rest_")), key=lambda s: int(s.split("_")[-1]))
    if rest_names != [f"f_rest_{i}" for i in range(len(rest_names))] or len(rest_names) % 3:
        raise GaussianError(f"{path}: f_rest_* properties are not f_rest_0..f_rest_{{3K-1}} ({len(rest_names)} found)")
    k = len(rest_names) // 3
    if sh_degree_from_rest(k) is None:
        raise GaussianError(f"{path}: {len(rest_names)} f_rest properties do not match any SH degree")

    def cols(props: list[str]) -> torch.Tensor:
        if not props:
            return torch.zeros(n, 0)
        try:
            arr = np.stack([np.asarray(vertex.data[p]) for p in props], axis=1)
        except Exception as e:
            raise GaussianError(f"{path}: cannot read properties {props[:3]}... ({e})") from e
        return torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32, copy=False)))

    model = GaussianModel(
        means=cols(["x", "y", "z"]),
        log_scales=cols([f"scale_{i}" for i in range(3)]),
        quats=cols([f"rot_{i}" for i in range(4)]),
        opacity_logits=cols(["opacity"])[:, 0].contiguous(),
        sh_dc=cols([f"f_dc_{i}" for i in range(3)]),
        sh_rest=cols(rest_names).reshape(n, 3, k).transpose(1, 2).contiguous(),
    )
    model.validate(str(path))
    return model

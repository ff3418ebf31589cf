"""Real spherical harmonics for view-dependent colour (3DGS, Kerbl et al. 2023, Sec. 4).

The constants and sign conventions are those of the INRIA 3DGS code (``utils/sh_utils.py``) and of
gsplat, so a model fitted here renders the same colours in either rasterizer.
Colour of a Gaussian seen along unit direction ``d`` (from the camera centre to the mean):
``c(d) = max(0, 0.5 + sum_{l<=deg} sum_m c_lm Y_lm(d))``.
"""
from __future__ import annotations

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel up to ``degree``: ``(degree + 1) ** 2``."""
    return (degree + 1) ** 2


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """Degree-0 coefficient whose colour is ``rgb``: ``(rgb - 0.5) / C0``."""
    return (rgb - 0.5) / C0


def sh_to_rgb(sh_dc: torch.Tensor) -> torch.Tensor:
    """Colour of a degree-0 coefficient: ``0.5 + C0 * dc``."""
    return sh_dc * C0 + 0.5


def eval_sh(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate real SH of ``degree`` (0..3) with ``coeffs (N, K>=(degree+1)^2, 3)`` at unit ``dirs (N, 3)``.

    Returns the raw SH value ``(N, 3)`` (without the +0.5 offset); band order as in the 3DGS code.
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree {degree} is not supported (0..{MAX_SH_DEGREE})")
    if coeffs.shape[-2] < num_sh_bases(degree):
        raise ValueError(f"SH degree {degree} needs {num_sh_bases(degree)} coefficients, got {coeffs.shape[-2]}")
    result = C0 * coeffs[..., 0, :]
    if degree == 0:
        return result
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
    result = result - C1 * y * coeffs[..., 1, :] + C1 * z * coeffs[..., 2, :] - C1 * x * coeffs[..., 3, :]
    if degree == 1:
        return result
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    result = (
        result
        + C2[0] * xy * coeffs[..., 4, :]
        + C2[1] * yz * coeffs[..., 5, :]
        + C2[2] * (2.0 * zz - xx - yy) * coeffs[..., 6, :]
        + C2[3] * xz * coeffs[..., 7, :]
        + C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree == 2:
        return result
    return (
        result
        + C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + C3[1] * xy * z * coeffs[..., 10, :]
        + C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )


def sh_colors(degree: int, sh_dc: torch.Tensor, sh_rest: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """View-dependent RGB of each Gaussian: ``max(0, 0.5 + SH(d))`` as in 3DGS/gsplat.

    ``dirs`` need not be normalised (they are here). ``degree`` is clipped to what ``sh_rest`` holds.
    """
    coeffs = torch.cat([sh_dc[:, None, :], sh_rest], dim=1) if sh_rest.shape[1] else sh_dc[:, None, :]
    if degree > 0:
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (eval_sh(degree, coeffs, dirs) + 0.5).clamp_min(0.0)

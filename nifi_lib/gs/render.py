"""Differentiable rendering of 3D Gaussians (3DGS, Kerbl et al. 2023, Sec. 4 and 6).

Two backends behind :func:`render`:

* ``"torch"``: a pure-PyTorch reference rasterizer, differentiable by autograd and readable:
  EWA splatting (3DGS Eq. 5: ``Sigma' = J W Sigma W^T J^T``, plus the 0.3 px low-pass of the 3DGS
  code), SH colour, per-tile depth sorting and front-to-back alpha compositing (3DGS Eq. 2/3,
  ``C = sum_i c_i alpha_i prod_{j<i} (1 - alpha_j)``). Tiles of 8x8 pixels composite only the
  Gaussians whose cut-off ellipse box overlaps them, vectorised over many tiles at once and walked
  front to back in depth chunks, so that a tile stops once all its pixels are opaque (as 3DGS).
* ``"gsplat"``: :func:`gsplat.rasterization` on CUDA (imported lazily).

``"auto"`` picks gsplat for CUDA tensors when it can be imported, the torch backend otherwise.

Conventions (shared with gsplat): pixel (i, j) has its centre at ``(i + 0.5, j + 0.5)`` in the
coordinates of :meth:`Camera.project`; colours are ``max(0, 0.5 + SH)``; per-pixel alpha of a
Gaussian is ``min(0.99, o * exp(-0.5 d^T Sigma'^-1 d))`` and is skipped below 1/255; a pixel stops
compositing before the Gaussian that would bring its transmittance below 1e-4. ``depth`` is the
alpha-normalised expected depth (0 where nothing is rendered).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import NifiError
from .cameras import Camera
from .model import GaussianModel
from .sh import sh_colors

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
LOWPASS = 0.3
NEAR_PLANE = 0.01
TILE = 8


class RenderError(NifiError, RuntimeError):
    """A rendering backend cannot be used (gsplat missing, wrong device...)."""


@dataclass
class RenderOutput:
    """One rendered view. ``image`` is not clamped (clamp for display/metrics)."""

    image: torch.Tensor  # (3, H, W)
    alpha: torch.Tensor  # (1, H, W)
    depth: torch.Tensor  # (1, H, W) expected depth, 0 where alpha == 0
    means2d: torch.Tensor  # (N, 2) projected means in pixels; see retain_grad() / means2d_grad()
    radii: torch.Tensor  # (N,) int32 screen-space radius (3 sigma of the largest eigenvalue), 0 if culled
    visible: torch.Tensor  # (N,) bool
    backend: str = "torch"
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # backend-specific (gsplat meta)

    def retain_grad(self) -> "RenderOutput":
        """Keep the gradient of the projected means (for densification); call before ``backward()``.

        With gsplat, ``means2d`` is a view of gsplat's own ``(1, N, 2)`` tensor, whose gradient is kept.
        """
        (self.info["means2d"] if self.backend == "gsplat" else self.means2d).retain_grad()
        return self

    def means2d_grad(self) -> torch.Tensor | None:
        """Gradient of the loss w.r.t. the projected means in pixels ``(N, 2)`` after ``backward()``."""
        src = self.info["means2d"] if self.backend == "gsplat" else self.means2d
        grad = src.grad
        return None if grad is None else grad.reshape(-1, 2)


# --- geometry (3DGS Sec. 4) ------------------------------------------------------------------------

def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), normalised here -> (N, 3, 3) rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(log_scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """3DGS Eq. 6: ``Sigma = R S S^T R^T`` with ``S = diag(exp(log_scales))``. Returns (N, 3, 3)."""
    m = quat_to_rotmat(quats) * torch.exp(log_scales)[:, None, :]  # R S
    return m @ m.transpose(1, 2)


def project_covariance(cov3d: torch.Tensor, means_cam: torch.Tensor, rot_w2c: torch.Tensor, camera: Camera,
                       lowpass: float = LOWPASS) -> torch.Tensor:
    """3DGS Eq. 5 (EWA, Zwicker et al. 2001): ``Sigma' = J W Sigma W^T J^T + lowpass * I``.

    ``J`` is the Jacobian of the perspective projection ``(fx x/z + cx, fy y/z + cy)`` at the mean; as
    in the 3DGS code, ``x/z`` and ``y/z`` are clamped to 1.3x the field of view before computing it.
    Returns the (N, 2, 2) screen-space covariance in pixels^2.
    """
    tx, ty, tz = means_cam.unbind(-1)
    lim_x = 1.3 * 0.5 * camera.width / camera.fx
    lim_y = 1.3 * 0.5 * camera.height / camera.fy
    tx = tz * (tx / tz).clamp(-lim_x, lim_x)
    ty = tz * (ty / tz).clamp(-lim_y, lim_y)
    zeros = torch.zeros_like(tz)
    jac = torch.stack([camera.fx / tz, zeros, -camera.fx * tx / (tz * tz),
                       zeros, camera.fy / tz, -camera.fy * ty / (tz * tz)], dim=-1).reshape(-1, 2, 3)
    t = jac @ rot_w2c  # J W
    cov2d = t @ cov3d @ t.transpose(1, 2)
    return cov2d + lowpass * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)


def gaussian_alpha(opacity: torch.Tensor, conic: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """3DGS Sec. 6 / Eq. 2: ``alpha = min(0.99, o * exp(-0.5 d^T Sigma'^-1 d))``, 0 below 1/255.

    ``conic = (a, b, c)`` are the entries of ``Sigma'^-1 = [[a, b], [b, c]]``; broadcastable shapes,
    ``d`` has a trailing dimension of 2 (pixel centre minus projected mean).
    """
    a, b, c = conic.unbind(-1)
    dx, dy = d.unbind(-1)
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = (opacity * torch.exp(power)).clamp(max=ALPHA_MAX)
    return torch.where((alpha >= ALPHA_MIN) & (power <= 0), alpha, torch.zeros_like(alpha))


def composite_front_to_back(alpha: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3DGS Eq. 3: ``F = sum_i f_i alpha_i T_i`` with ``T_i = prod_{j<i} (1 - alpha_j)``.

    ``alpha (..., P, M)`` for P pixels and M depth-sorted Gaussians, ``features (..., M, F)``.
    A pixel stops before the Gaussian that would bring its transmittance below 1e-4 (3DGS code).
    Returns the composited features ``(..., P, F)`` and the accumulated opacity ``(..., P)``
    (``1 - T_final``; the background is added by the caller as ``(1 - opacity) * bg``).
    """
    log_t = torch.cumsum(torch.log1p(-alpha), dim=-1)  # log of T_{i+1} (inclusive product)
    t_incl = torch.exp(log_t)
    t_excl = torch.exp(log_t - torch.log1p(-alpha))  # T_i
    weights = torch.where(t_incl >= T_MIN, alpha * t_excl, torch.zeros_like(alpha))
    return weights @ features, weights.sum(-1)


# --- projection of every Gaussian ------------------------------------------------------------------

@dataclass
class Projected:
    means2d: torch.Tensor  # (N, 2)
    depths: torch.Tensor  # (N,)
    conics: torch.Tensor  # (N, 3)
    opacities: torch.Tensor  # (N,)
    log_opacities: torch.Tensor  # (N,)
    colors: torch.Tensor  # (N, 3)
    radii: torch.Tensor  # (N,) int32
    extent: torch.Tensor  # (N, 2) half size of the cut-off box in pixels (detached)
    visible: torch.Tensor  # (N,) bool


def project_gaussians(g: GaussianModel, camera: Camera, sh_degree: int, near: float = NEAR_PLANE) -> Projected:
    """World -> camera -> screen for all Gaussians: means, conics, colours, radii and visibility."""
    w2c = camera.world_to_cam.to(g.means)
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    means_cam = g.means @ rot.T + trans
    z = means_cam[:, 2]
    in_front = z > near
    z_safe = torch.where(in_front, z, torch.ones_like(z))  # keep the graph finite for culled Gaussians
    means_cam_safe = torch.cat([means_cam[:, :2], z_safe[:, None]], dim=1)
    means2d = torch.stack([camera.fx * means_cam_safe[:, 0] / z_safe + camera.cx,
                           camera.fy * means_cam_safe[:, 1] / z_safe + camera.cy], dim=1)
    cov2d = project_covariance(covariance_3d(g.log_scales, g.quats), means_cam_safe, rot, camera)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    ok = in_front & (det > 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=1)
    opac = torch.sigmoid(g.opacity_logits)
    with torch.no_grad():
        # 3DGS radius: 3 sigma of the largest eigenvalue (used for densification / statistics).
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
        radii = torch.ceil(3.0 * torch.sqrt(lam.clamp_min(0)))
        # Exact cut-off box: alpha >= 1/255 needs d^T Sigma'^-1 d <= 2 ln(255 o); |dx| <= r sqrt(Sigma'_xx).
        r = torch.sqrt((2.0 * torch.log(255.0 * opac.clamp_min(1e-12))).clamp_min(0.0))
        extent = torch.stack([r * torch.sqrt(a.clamp_min(0)), r * torch.sqrt(c.clamp_min(0))], dim=1)
        u, v = means2d[:, 0], means2d[:, 1]
        on_screen = ((u + extent[:, 0] > 0) & (u - extent[:, 0] < camera.width)
                     & (v + extent[:, 1] > 0) & (v - extent[:, 1] < camera.height))
        visible = ok & (opac >= ALPHA_MIN) & on_screen & torch.isfinite(means2d).all(1)
        radii = torch.where(visible, radii, torch.zeros_like(radii)).to(torch.int32)
    dirs = g.means - camera.camera_center.to(g.means)
    deg = g.sh_degree if sh_degree is None else min(sh_degree, g.sh_degree)
    colors = sh_colors(deg, g.sh_dc, g.sh_rest, dirs)
    log_opac = torch.nn.functional.logsigmoid(g.opacity_logits)
    return Projected(means2d, z, conics, opac, log_opac, colors, radii, extent, visible)


# --- torch backend -----------------------------------------------------------------------------------

def _tile_bins(p: Projected, camera: Camera, tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Sort (tile, Gaussian) pairs by tile then depth (as the 3DGS key ``tile_id << 32 | depth``).

    Returns the Gaussian index of every pair in that order, the start offset and count per tile,
    and the tile grid size.
    """
    tiles_x, tiles_y = math.ceil(camera.width / tile), math.ceil(camera.height / tile)
    vis = torch.nonzero(p.visible).squeeze(1)
    dev = p.means2d.device
    if vis.numel() == 0:
        zeros = torch.zeros(tiles_x * tiles_y, dtype=torch.long, device=dev)
        return torch.zeros(0, dtype=torch.long, device=dev), zeros, zeros, tiles_x, tiles_y
    with torch.no_grad():
        uv, ext = p.means2d[vis].detach(), p.extent[vis]
        # Pixel centres are at k + 0.5: a Gaussian reaches pixel k iff |k + 0.5 - u| <= ext.
        x0 = torch.ceil(uv[:, 0] - ext[:, 0] - 0.5).clamp(0, camera.width - 1)
        x1 = torch.floor(uv[:, 0] + ext[:, 0] - 0.5).clamp(0, camera.width - 1)
        y0 = torch.ceil(uv[:, 1] - ext[:, 1] - 0.5).clamp(0, camera.height - 1)
        y1 = torch.floor(uv[:, 1] + ext[:, 1] - 0.5).clamp(0, camera.height - 1)
        tx0, tx1 = (x0 // tile).long(), (x1 // tile).long()
        ty0, ty1 = (y0 // tile).long(), (y1 // tile).long()
        nx, ny = (tx1 - tx0 + 1).clamp_min(0), (ty1 - ty0 + 1).clamp_min(0)
        counts = nx * ny
        pair_g = torch.repeat_interleave(torch.arange(vis.numel(), device=dev), counts)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(pair_g.numel(), device=dev) - starts[pair_g]
        tile_x = tx0[pair_g] + local % nx[pair_g]
        tile_y = ty0[pair_g] + local // nx[pair_g]
        tile_id = tile_y * tiles_x + tile_x
        depth_rank = torch.empty_like(vis)
        depth_rank[torch.argsort(p.depths[vis].detach(), stable=True)] = torch.arange(vis.numel(), device=dev)
        order = torch.argsort(tile_id * vis.numel() + depth_rank[pair_g])
        gauss = vis[pair_g[order]]
        per_tile = torch.bincount(tile_id, minlength=tiles_x * tiles_y)
        offsets = torch.cumsum(per_tile, 0) - per_tile
    return gauss, offsets, per_tile, tiles_x, tiles_y


def _finish(sums: torch.Tensor, camera: Camera, background: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(5, H, W) composited [rgb, depth, opacity] -> image over background, alpha, expected depth."""
    acc = sums[4:5]
    color = sums[:3] + (1.0 - acc) * background.to(sums.dtype).view(3, 1, 1)
    depth = sums[3:4] / acc.clamp_min(1e-10) * (acc > 0)
    return color, acc, depth


def _rasterize_dense(p: Projected, camera: Camera, background: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Readable O(pixels x Gaussians) version of the rasterizer (no tiles); for tests and tiny images."""
    vis = torch.nonzero(p.visible).squeeze(1)
    vis = vis[torch.argsort(p.depths[vis].detach(), stable=True)]  # front to back
    ys, xs = torch.meshgrid(torch.arange(camera.height), torch.arange(camera.width), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).to(p.means2d) + 0.5  # pixel centres (P, 2)
    d = pix[:, None, :] - p.means2d[vis][None, :, :]  # (P, M, 2)
    alpha = gaussian_alpha(p.opacities[vis][None, :], p.conics[vis][None, :, :], d)  # (P, M)
    feat = torch.cat([p.colors, p.depths[:, None]], dim=1)[vis]
    f, acc = composite_front_to_back(alpha, feat)
    sums = torch.cat([f, acc[:, None]], 1).T.reshape(5, camera.height, camera.width)
    return _finish(sums, camera, background)


def _rasterize_torch(p: Projected, camera: Camera, background: torch.Tensor, tile: int = TILE,
                     chunk_elems: int = 1 << 21, depth_chunk: int = 64
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiled version of :func:`_rasterize_dense` (same result up to float rounding).

    Tiles with similar Gaussian counts are batched together (padded to the batch's largest count).
    For speed, ``log alpha = log o - 0.5 d^T Sigma'^-1 d`` is evaluated for all pixels of a tile and
    all its Gaussians by one batched matrix product: it is a quadratic polynomial of the pixel
    position ``(x, y)`` (tile-centred), with features ``[x^2, xy, y^2, x, y, 1]`` and per-(tile,
    Gaussian) coefficients computed in float64 (their terms cancel for far, elongated Gaussians). Compositing is
    :func:`composite_front_to_back` written in log space.
    """
    dev, dtype = p.means2d.device, p.means2d.dtype
    gauss, offsets, per_tile, tiles_x, tiles_y = _tile_bins(p, camera, tile)
    n_tiles = tiles_x * tiles_y
    tp = tile * tile
    feat = torch.cat([p.colors, p.depths[:, None]], dim=1)  # composite colour and depth together
    out = torch.zeros(n_tiles, tp, 5, device=dev, dtype=dtype)
    half = 0.5 * tile
    ly, lx = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
    x, y = lx.reshape(-1).to(dtype) + 0.5 - half, ly.reshape(-1).to(dtype) + 0.5 - half  # tile-centred
    pix_feat = torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)], dim=1)  # (tp, 6)
    tile_centre = torch.stack([torch.arange(n_tiles, device=dev) % tiles_x,
                               torch.arange(n_tiles, device=dev) // tiles_x], dim=1).to(dtype) * tile + half
    a, b, c = p.conics.unbind(-1)
    log_min_alpha, log_t_min = math.log(ALPHA_MIN), math.log(T_MIN)
    active = torch.nonzero(per_tile > 0).squeeze(1)
    if active.numel():
        counts = per_tile[active]
        order = torch.argsort(counts, descending=True)
        active_l, counts_l = active[order].tolist(), counts[order].tolist()
        pieces, rows = [], []
        i = 0
        while i < len(active_l):
            m = counts_l[i]  # largest count in this batch (sorted descending)
            nb = max(1, min(len(active_l) - i, chunk_elems // (tp * min(m, depth_chunk))))
            ids = torch.tensor(active_l[i:i + nb], device=dev)
            i += nb
            cnt, start = per_tile[ids], offsets[ids]
            log_t = torch.zeros(len(ids), tp, device=dev, dtype=dtype)  # log transmittance so far
            # Front-to-back in depth chunks; a tile stops once all its pixels have T < 1e-4 (3DGS early exit).
            for k0 in range(0, m, depth_chunk):
                ar = torch.arange(k0, min(m, k0 + depth_chunk), device=dev)
                valid = ar[None, :] < cnt[:, None]  # (B, M)
                # padding slots repeat the tile's first Gaussian (finite values) with a -inf-like log alpha
                g = gauss[torch.where(valid, start[:, None] + ar[None, :], start[:, None])]
                # per-pair coefficients in float64: the terms cancel for far, elongated Gaussians
                mu = p.means2d[g].double() - tile_centre[ids][:, None, :].double()  # (B, M, 2)
                mx, my = mu.unbind(-1)
                ga, gb, gc = a[g].double(), b[g].double(), c[g].double()
                lin_x, lin_y = ga * mx + gb * my, gb * mx + gc * my  # Sigma'^-1 mu
                const = p.log_opacities[g].double() - 0.5 * (mx * lin_x + my * lin_y)
                const = torch.where(valid, const, torch.full_like(const, -1e4))
                coef = torch.stack([-0.5 * ga, -gb, -0.5 * gc, lin_x, lin_y, const], dim=1).to(dtype)
                log_alpha = torch.matmul(pix_feat, coef)  # (B, tp, M): log(o) - 0.5 d^T Sigma'^-1 d
                alpha = torch.exp(log_alpha).clamp(max=ALPHA_MAX)
                alpha = torch.where(log_alpha >= log_min_alpha, alpha, torch.zeros_like(alpha))
                log_1ma = torch.log1p(-alpha)
                log_t_incl = log_t[:, :, None] + torch.cumsum(log_1ma, dim=-1)  # log T_{i+1}
                w = torch.where(log_t_incl >= log_t_min, alpha * torch.exp(log_t_incl - log_1ma),
                                torch.zeros_like(alpha))
                f = torch.matmul(w, feat[g])  # (B, tp, 4)
                pieces.append(torch.cat([f, w.sum(-1, keepdim=True)], dim=-1))
                rows.append(ids)
                log_t = log_t_incl[:, :, -1]
                keep = (cnt > k0 + depth_chunk) & (log_t.max(dim=1).values >= log_t_min)
                if not bool(keep.any()):
                    break
                if not bool(keep.all()):
                    ids, cnt, start, log_t = ids[keep], cnt[keep], start[keep], log_t[keep]
        out = out.index_add(0, torch.cat(rows), torch.cat(pieces))
    # (tiles_y, tiles_x, tile, tile, 5) -> (5, H, W)
    sums = out.reshape(tiles_y, tiles_x, tile, tile, 5).permute(4, 0, 2, 1, 3).reshape(
        5, tiles_y * tile, tiles_x * tile)[:, :camera.height, :camera.width]
    return _finish(sums, camera, background)


def render_torch(gaussians: GaussianModel, camera: Camera, background: torch.Tensor | None = None,
                 sh_degree: int | None = None, tile: int = TILE, dense: bool = False) -> RenderOutput:
    """Pure-PyTorch differentiable rasterizer (see the module docstring); ``dense`` uses the untiled
    O(pixels x Gaussians) reference path."""
    bg = torch.zeros(3) if background is None else torch.as_tensor(background, dtype=torch.float32)
    bg = bg.to(gaussians.means)
    p = project_gaussians(gaussians, camera, gaussians.sh_degree if sh_degree is None else sh_degree)
    if dense:
        image, alpha, depth = _rasterize_dense(p, camera, bg)
    else:
        image, alpha, depth = _rasterize_torch(p, camera, bg, tile=tile)
    return RenderOutput(image=image, alpha=alpha, depth=depth, means2d=p.means2d, radii=p.radii,
                        visible=p.visible, backend="torch")


# --- gsplat backend ------------------------------------------------------------------------------------

def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def render_gsplat(gaussians: GaussianModel, camera: Camera, background: torch.Tensor | None = None,
                  sh_degree: int | None = None, **kwargs: Any) -> RenderOutput:
    """:func:`gsplat.rasterization` on CUDA with the same conventions as the torch backend."""
    if gaussians.means.device.type != "cuda":
        raise RenderError(f"the gsplat backend needs CUDA tensors, the Gaussians are on {gaussians.means.device}; "
                          "move them with .to('cuda') or use backend='torch'")
    try:
        from gsplat import rasterization
    except Exception as e:
        raise RenderError(f"the gsplat backend needs the gsplat package ({e.__class__.__name__}: {e}); "
                          "pip install gsplat, or use backend='torch'") from e
    g = gaussians
    dev = g.means.device
    deg = g.sh_degree if sh_degree is None else min(sh_degree, g.sh_degree)
    colors = torch.cat([g.sh_dc[:, None, :], g.sh_rest], dim=1)
    opts = dict(near_plane=NEAR_PLANE, eps2d=LOWPASS, packed=False, render_mode="RGB+ED", sh_degree=deg)
    opts.update(kwargs)
    rgbd, alphas, meta = rasterization(
        means=g.means, quats=g.quats, scales=torch.exp(g.log_scales), opacities=torch.sigmoid(g.opacity_logits),
        colors=colors, viewmats=camera.world_to_cam.to(dev)[None], Ks=camera.intrinsics_matrix().to(dev)[None],
        width=camera.width, height=camera.height, **opts)
    bg = torch.zeros(3, device=dev) if background is None else torch.as_tensor(background, dtype=torch.float32,
                                                                                device=dev)
    alpha = alphas[0].permute(2, 0, 1)
    image = rgbd[0, ..., :3].permute(2, 0, 1) + (1.0 - alpha) * bg.view(3, 1, 1)
    depth = rgbd[0, ..., 3:4].permute(2, 0, 1) * (alpha > 0)
    radii = meta["radii"][0]
    if radii.ndim == 2:  # gsplat >= 1.5: per-axis radii
        radii = radii.max(dim=-1).values
    means2d = meta["means2d"]
    means2d_view = means2d[0] if means2d.ndim == 3 else means2d
    meta = dict(meta)
    meta.setdefault("width", camera.width)
    meta.setdefault("height", camera.height)
    return RenderOutput(image=image, alpha=alpha, depth=depth, means2d=means2d_view, radii=radii.to(torch.int32),
                        visible=radii > 0, backend="gsplat", info=meta)


# --- public entry point ----------------------------------------------------------------------------------

_warned_no_gsplat = False


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: gsplat for CUDA tensors when it imports, else the torch reference; on CUDA without gsplat a
    warning says so once per process (the reference rasterizer is ~20x slower there: docs/performance.md)."""
    global _warned_no_gsplat
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if gsplat_available():
            return "gsplat"
        if not _warned_no_gsplat:
            _warned_no_gsplat = True
            warnings.warn("CUDA is available but gsplat is not installed: rendering with the PyTorch reference "
                          "rasterizer (much slower); pip install -e '.[gpu]' (gsplat) for the fast kernel",
                          RuntimeWarning, stacklevel=2)
        return "torch"
    if backend not in ("torch", "gsplat"):
        raise RenderError(f"unknown render backend {backend!r} (auto, torch or gsplat)")
    return backend


def render(gaussians: GaussianModel, camera: Camera, backend: str = "auto",
           background: torch.Tensor | Sequence[float] | None = None, sh_degree: int | None = None) -> RenderOutput:
    """Render ``gaussians`` from ``camera``; ``background`` (3,) defaults to black.

    ``sh_degree`` limits the SH bands used (default: all the model has). The result is differentiable
    with respect to every attribute of ``gaussians`` and ``means2d`` (call ``out.means2d.retain_grad()``).
    """
    chosen = resolve_backend(backend, gaussians.means.device)
    bg = None if background is None else torch.as_tensor(background, dtype=torch.float32)
    if chosen == "gsplat":
        return render_gsplat(gaussians, camera, bg, sh_degree)
    return render_torch(gaussians, camera, bg, sh_degree)

"""The embedded procedural scenes: small textured worlds, exact ground-truth views, and a fitted 3DGS.

Each scene is a few textured quads, boxes and spheres (textures: photographs that ship inside
scikit-image) rendered by an exact, anti-aliased ray caster (NOT Gaussians, so that the 3DGS fit is
a genuine approximation with its own artefacts), seen by an orbit of cameras that all look at the
scene's centre. A dense 3DGS is then fitted to the training views (every 8th view is held out),
starting, as a COLMAP scene would, from a point cloud of surface points seen by the training views.

Layout written by :func:`build_scenes` per scene: ``images/NNN.png``, ``cameras.json`` (see
:func:`nifi_lib.gs.cameras.write_scene_cameras`), ``point_cloud.ply`` (3DGS PLY) and ``scene.json``
(seed, fit PSNR, number of Gaussians, time). Deterministic from the seed (on CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..io.atomic import atomic_write_json
from ..io.images import save_image
from ..paths import repo_path
from .cameras import Camera, look_at, split_views, write_scene_cameras
from .model import save_ply

LIGHT = torch.tensor([0.45, 0.3, 1.0]) / math.sqrt(0.45 ** 2 + 0.3 ** 2 + 1.0)
AMBIENT = 0.4
BACKGROUND = (0.0, 0.0, 0.0)


# --- textures -----------------------------------------------------------------------------------------

def texture(name: str, tint: tuple[float, float, float] = (1.0, 1.0, 1.0), size: int = 128) -> torch.Tensor:
    """A scikit-image sample photo as a ``(3, size, size)`` float texture (grey ones are tinted)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if img.ndim == 2:
        img = img[..., None].repeat(3, axis=2)
    t = torch.from_numpy(img[..., :3].copy()).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(size, size), mode="area")[0]  # pre-filter: no aliasing at 64x64
    return (t * torch.tensor(tint).view(3, 1, 1)).clamp(0, 1)


def sample_texture(tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear, wrapping lookup of ``tex (3, h, w)`` at ``uv (P, 2)`` (any real values) -> (P, 3)."""
    h, w = tex.shape[1:]
    x = torch.remainder(uv[:, 0], 1.0) * w - 0.5
    y = torch.remainder(uv[:, 1], 1.0) * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()

    def at(xi, yi):
        return tex[:, torch.remainder(yi, h), torch.remainder(xi, w)].T

    return ((at(x0, y0) * (1 - fx) + at(x0 + 1, y0) * fx) * (1 - fy)
            + (at(x0, y0 + 1) * (1 - fx) + at(x0 + 1, y0 + 1) * fx) * fy)


# --- primitives -----------------------------------------------------------------------------------------

@dataclass
class Quad:
    """The parallelogram ``p0 + a u + b v`` for ``a, b`` in [0, 1]; texture coordinates ``(a, b) * repeat``."""

    p0: tuple[float, float, float]
    u: tuple[float, float, float]
    v: tuple[float, float, float]
    tex: torch.Tensor
    repeat: tuple[float, float] = (1.0, 1.0)

    def intersect(self, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p0, u, v = (torch.tensor(x, dtype=o.dtype, device=o.device) for x in (self.p0, self.u, self.v))
        n = torch.linalg.cross(u, v)
        n = n / n.norm()
        denom = d @ n
        t = ((p0 - o) @ n) / torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
        rel = o + t[:, None] * d - p0
        a, b = rel @ u / (u @ u), rel @ v / (v @ v)
        hit = (t > 1e-6) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        uv = torch.stack([a * self.repeat[0], b * self.repeat[1]], 1)
        return torch.where(hit, t, torch.full_like(t, math.inf)), n.expand_as(o), uv


@dataclass
class Sphere:
    """A sphere textured in longitude/latitude."""

    centre: tuple[float, float, float]
    radius: float
    tex: torch.Tensor
    repeat: tuple[float, float] = (1.0, 1.0)

    def intersect(self, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = torch.tensor(self.centre, dtype=o.dtype, device=o.device)
        oc = o - c
        b = (oc * d).sum(1)
        disc = b * b - ((oc * oc).sum(1) - self.radius ** 2)
        sq = torch.sqrt(disc.clamp_min(0))
        t0, t1 = -b - sq, -b + sq
        t = torch.where(t0 > 1e-6, t0, t1)
        hit = (disc >= 0) & (t > 1e-6)
        n = (o + t[:, None] * d - c) / self.radius
        lon = torch.atan2(n[:, 1], n[:, 0]) / (2 * math.pi) + 0.5
        lat = torch.acos(n[:, 2].clamp(-1, 1)) / math.pi
        uv = torch.stack([lon * self.repeat[0], lat * self.repeat[1]], 1)
        return torch.where(hit, t, torch.full_like(t, math.inf)), n, uv


@dataclass
class Cylinder:
    """An upright (z-axis) capped cylinder: side textured in (angle, height), caps in (x, y)."""

    centre: tuple[float, float]
    z0: float
    z1: float
    radius: float
    tex: torch.Tensor
    repeat: tuple[float, float] = (1.0, 1.0)

    def intersect(self, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = torch.tensor(self.centre, dtype=o.dtype, device=o.device)
        oxy, dxy = o[:, :2] - c, d[:, :2]
        a = (dxy * dxy).sum(1).clamp_min(1e-18)
        b = (oxy * dxy).sum(1)
        disc = b * b - a * ((oxy * oxy).sum(1) - self.radius ** 2)
        sq = torch.sqrt(disc.clamp_min(0))
        inf = torch.full_like(a, math.inf)
        best, n, uv = inf.clone(), torch.zeros_like(o), torch.zeros(o.shape[0], 2, dtype=o.dtype, device=o.device)
        for t in ((-b - sq) / a, (-b + sq) / a):                     # the side, nearest valid root first wins
            z = o[:, 2] + t * d[:, 2]
            ok = (disc >= 0) & (t > 1e-6) & (z >= self.z0) & (z <= self.z1) & (t < best)
            p = oxy + t[:, None] * dxy
            side_n = torch.cat([p / self.radius, torch.zeros_like(p[:, :1])], 1)
            side_uv = torch.stack([(torch.atan2(p[:, 1], p[:, 0]) / (2 * math.pi) + 0.5) * self.repeat[0],
                                   (z - self.z0) / (self.z1 - self.z0) * self.repeat[1]], 1)
            best, n, uv = torch.where(ok, t, best), torch.where(ok[:, None], side_n, n), torch.where(ok[:, None], side_uv, uv)
        for zc in (self.z0, self.z1):                                # the caps
            t = (zc - o[:, 2]) / torch.where(d[:, 2].abs() < 1e-12, torch.full_like(a, 1e-12), d[:, 2])
            p = oxy + t[:, None] * dxy
            ok = (t > 1e-6) & ((p * p).sum(1) <= self.radius ** 2) & (t < best)
            cap_n = torch.zeros_like(o)
            cap_n[:, 2] = 1.0
            best = torch.where(ok, t, best)
            n = torch.where(ok[:, None], cap_n, n)
            uv = torch.where(ok[:, None], p / (2 * self.radius) + 0.5, uv)
        return best, n, uv


def box(centre: tuple[float, float, float], size: tuple[float, float, float], tex: torch.Tensor,
        yaw_deg: float = 0.0) -> list[Quad]:
    """The six faces of a box rotated by ``yaw`` about the vertical (z) axis."""
    cz, sz = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    ex = np.array([cz, sz, 0.0]) * size[0]
    ey = np.array([-sz, cz, 0.0]) * size[1]
    ez = np.array([0.0, 0.0, 1.0]) * size[2]
    c = np.asarray(centre, dtype=np.float64)
    lo = c - (ex + ey + ez) / 2
    faces = [(lo, ey, ex), (lo + ez, ex, ey), (lo, ex, ez), (lo + ey, ez, ex), (lo, ez, ey), (lo + ex, ey, ez)]
    return [Quad(tuple(p), tuple(u), tuple(v), tex) for p, u, v in faces]


@dataclass
class ProceduralScene:
    name: str
    primitives: list
    target: tuple[float, float, float]
    orbit: Callable[[int, int, np.random.Generator], tuple[float, float, float]]
    description: str = ""
    textures: list[str] = field(default_factory=list)


def cast_rays(scene: ProceduralScene, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour (P, 3) and distance along the ray (P,) (inf where nothing is hit) of rays ``o + t d``.

    Shading is Lambertian with one directional light plus ambient: ``albedo (0.4 + 0.6 max(0, n.l))``.
    """
    best_t = torch.full((o.shape[0],), math.inf, dtype=o.dtype, device=o.device)
    color = torch.tensor(BACKGROUND, dtype=o.dtype, device=o.device).expand(o.shape[0], 3).clone()
    for prim in scene.primitives:
        t, n, uv = prim.intersect(o, d)
        closer = t < best_t
        if not bool(closer.any()):
            continue
        n = torch.where(((n * d).sum(1, keepdim=True) > 0), -n, n)  # face the viewer
        shade = AMBIENT + (1 - AMBIENT) * (n @ LIGHT.to(o)).clamp_min(0)
        col = sample_texture(prim.tex.to(o), uv[closer]) * shade[closer, None]
        color[closer] = col
        best_t = torch.where(closer, t, best_t)
    return color, best_t


def render_procedural(scene: ProceduralScene, cam: Camera, supersample: int = 3, device: str | torch.device = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact anti-aliased view ``(3, H, W)`` (``supersample^2`` rays per pixel, box filter) and the
    z-depth ``(H, W)`` of the pixel centres (inf where empty), both on the CPU.

    The rays are cast in float64 on ``device`` (the CPU for the embedded assets; a GPU rehearsal at 512 px
    casts them on CUDA: ~26 s a view on one CPU thread otherwise). The camera maths stays on the CPU."""
    s = supersample
    h, w = cam.height, cam.width
    dev = torch.device(device)
    f64 = {"dtype": torch.float64, "device": dev}
    ys, xs = torch.meshgrid(torch.arange(h * s, **f64), torch.arange(w * s, **f64), indexing="ij")
    px, py = (xs + 0.5) / s, (ys + 0.5) / s
    c2w = torch.linalg.inv(cam.world_to_cam.double()).to(dev)
    dirs_cam = torch.stack([(px - cam.cx) / cam.fx, (py - cam.cy) / cam.fy, torch.ones_like(px)], -1).reshape(-1, 3)
    d = dirs_cam @ c2w[:3, :3].T
    d = d / d.norm(dim=1, keepdim=True)
    o = c2w[:3, 3].expand_as(d)
    color, _ = cast_rays(scene, o, d)
    img = F.avg_pool2d(color.T.reshape(1, 3, h * s, w * s), s)[0]
    # depth of the pixel centres (for the initial point cloud)
    yc, xc = torch.meshgrid(torch.arange(h, **f64), torch.arange(w, **f64), indexing="ij")
    dc = torch.stack([(xc + 0.5 - cam.cx) / cam.fx, (yc + 0.5 - cam.cy) / cam.fy, torch.ones_like(xc)], -1)
    dc = dc.reshape(-1, 3)
    dw = dc @ c2w[:3, :3].T
    norm = dw.norm(dim=1, keepdim=True)
    _, t = cast_rays(scene, c2w[:3, 3].expand_as(dw), dw / norm)
    depth = (t / norm[:, 0]).reshape(h, w)
    return img.float().clamp(0, 1).cpu(), depth.cpu()


# --- the four scenes ---------------------------------------------------------------------------------------

def _orbit(radius: float, z_lo: float, z_hi: float, a0: float = 0.0, a1: float = 2 * math.pi):
    def pos(i: int, n: int, rng: np.random.Generator) -> tuple[float, float, float]:
        full = abs(a1 - a0 - 2 * math.pi) < 1e-9
        a = a0 + (a1 - a0) * (i / n if full else i / max(n - 1, 1)) + rng.uniform(-0.04, 0.04)
        z = z_lo + (z_hi - z_lo) * (0.5 + 0.5 * math.sin(3 * 2 * math.pi * i / n))
        r = radius * (1 + rng.uniform(-0.05, 0.05))
        return (r * math.cos(a), r * math.sin(a), z)

    return pos


def scene_catalogue() -> dict[str, ProceduralScene]:
    """The four embedded scenes (textures from ``skimage.data``)."""
    floor_gravel = texture("gravel", (0.75, 0.62, 0.45))
    floor_grass = texture("grass", (0.45, 0.75, 0.35))
    floor_wood = texture("brick", (0.8, 0.6, 0.4))
    brick_red = texture("brick", (0.9, 0.45, 0.35))
    grey_cam = texture("camera", (0.9, 0.9, 0.95))

    def floor(tex, half=2.0, rep=2.0):
        return Quad((-half, -half, 0.0), (2 * half, 0.0, 0.0), (0.0, 2 * half, 0.0), tex, (rep, rep))

    return {
        "sphere_floor": ProceduralScene(
            "sphere_floor",
            [floor(floor_gravel), Sphere((0.0, 0.0, 0.65), 0.65, texture("astronaut")),
             *box((0.95, -0.55, 0.2), (0.4, 0.4, 0.4), texture("coffee"), 20.0)],
            (0.0, 0.0, 0.45), _orbit(3.3, 1.0, 2.4),
            "a textured sphere and a small box on a gravel floor", ["gravel", "astronaut", "coffee"]),
        "boxes": ProceduralScene(
            "boxes",
            [floor(floor_grass), *box((-0.6, -0.35, 0.3), (0.6, 0.6, 0.6), texture("chelsea"), 10.0),
             *box((0.55, 0.2, 0.45), (0.5, 0.5, 0.9), texture("rocket"), -30.0),
             *box((-0.1, 0.85, 0.2), (0.4, 0.4, 0.4), texture("coffee"), 45.0)],
            (0.0, 0.1, 0.4), _orbit(3.3, 1.0, 2.4),
            "three textured boxes on a grass floor", ["grass", "chelsea", "rocket", "coffee"]),
        "room_corner": ProceduralScene(
            "room_corner",
            [floor(floor_wood, 1.5, 1.5),
             Quad((-1.5, -1.5, 0.0), (0.0, 3.0, 0.0), (0.0, 0.0, 2.0), brick_red, (2.0, 1.3)),
             Quad((-1.5, -1.5, 0.0), (3.0, 0.0, 0.0), (0.0, 0.0, 2.0), texture("astronaut"), (1.0, 1.0)),
             *box((-0.9, -0.9, 0.3), (0.6, 0.6, 0.6), texture("cat"), 15.0)],
            (-0.6, -0.6, 0.5), _orbit(3.4, 1.0, 2.2, math.radians(-5), math.radians(95)),
            "a room corner (brick and poster walls) with a box, seen from the open side",
            ["brick", "astronaut", "cat"]),
        "totem": ProceduralScene(
            "totem",
            [floor(grey_cam, 2.0, 1.0), *box((0.0, 0.0, 0.35), (0.7, 0.7, 0.7), texture("rocket"), 25.0),
             Sphere((0.0, 0.0, 1.05), 0.35, texture("chelsea")),
             Sphere((0.9, 0.6, 0.25), 0.25, texture("coffee"))],
            (0.0, 0.0, 0.55), _orbit(3.2, 1.0, 2.4),
            "a box with a sphere on top and a small ball on a photo floor", ["camera", "rocket", "chelsea", "coffee"]),
    }


def scene_cameras(scene: ProceduralScene, n_views: int, size: int, seed: int, fov_deg: float = 50.0
                  ) -> list[Camera]:
    """``n_views`` cameras on the scene's orbit, all looking at its target (jitter from ``seed``)."""
    rng = np.random.default_rng(seed)
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    cams = []
    for i in range(n_views):
        eye = scene.orbit(i, n_views, rng)
        cams.append(Camera(f"{i:03d}", size, size, f, f, size / 2, size / 2, look_at(eye, scene.target)))
    return cams


def surface_points(scene: ProceduralScene, cams: list[Camera], images: torch.Tensor, depths: list[torch.Tensor],
                   n_points: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-projected pixel centres of the given views (like an SfM point cloud), randomly subsampled."""
    pts, cols = [], []
    for cam, img, depth in zip(cams, images, depths):
        ys, xs = torch.nonzero(torch.isfinite(depth), as_tuple=True)
        z = depth[ys, xs]
        pc = torch.stack([(xs + 0.5 - cam.cx) / cam.fx * z, (ys + 0.5 - cam.cy) / cam.fy * z, z], 1)
        c2w = torch.linalg.inv(cam.world_to_cam.double())
        pts.append(pc @ c2w[:3, :3].T + c2w[:3, 3])
        cols.append(img[:, ys, xs].T)
    p, c = torch.cat(pts).float(), torch.cat(cols).float()
    idx = torch.randperm(p.shape[0], generator=gen)[:n_points]
    return p[idx], c[idx]


def build_scene(scene: ProceduralScene, out: Path, seed: int = 0, n_views: int = 32, size: int = 64,
                iterations: int = 1500, init_points: int = 2500, max_gaussians: int = 3000, sh_degree: int = 1,
                progress: bool = True, device: str = "cpu", backend: str = "torch", fit: bool = True) -> dict:
    """Render the ground truth, fit a 3DGS and write the scene folder; returns the scene.json dict.
    ``fit=False``: the ground truth only (frames, cameras, scene.json with ``iterations`` 0, no PLY), e.g. the
    worlds that only the prior trains on (``scene_presets.Preset.prior_worlds``).

    ``device``/``backend``: where the dense fit runs (the embedded assets: the CPU reference rasterizer; a GPU
    rehearsal at 512 px: ``cuda`` and ``auto``, i.e. gsplat when installed). On CUDA the ground-truth rays are
    cast there too (float64, as on the CPU)."""
    from .fit import DensifyConfig, evaluate_psnr, fit_gaussians

    t0 = time.perf_counter()
    cams = scene_cameras(scene, n_views, size, seed)
    keep = fit and _has_frames(out, seed, n_views, size, [c.name for c in cams])
    ray_device = device if str(device).startswith("cuda") else "cpu"
    views = [render_procedural(scene, c, device=ray_device) for c in cams]
    images = torch.stack([v[0] for v in views])
    # what is written is 8-bit: fit and evaluate on the quantised images
    images = torch.round(images * 255) / 255
    for c, img in zip(cams, images):
        c.image_path = out / "images" / f"{c.name}.png"
        if not keep:
            save_image(c.image_path, img)
    if not keep:
        write_scene_cameras(out / "cameras.json", cams)
    t_render = time.perf_counter() - t0

    idx = list(range(n_views))
    train, test = split_views(idx, "train"), split_views(idx, "test")
    info = {
        "name": scene.name, "description": scene.description, "seed": seed, "views": n_views,
        "image_size": [size, size], "train_views": train, "test_views": test, "llffhold": 8,
        "textures": [f"skimage.data.{t}" for t in scene.textures], "background": list(BACKGROUND),
        "iterations": iterations if fit else 0, "seconds_render": round(t_render, 2), "torch": torch.__version__,
        "device": device, "ray_device": ray_device,
    }
    if not fit:
        info["seconds_total"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(out / "scene.json", info)
        return info
    gen = torch.Generator().manual_seed(seed)
    pts, cols = surface_points(scene, [cams[i] for i in train], images[train], [views[i][1] for i in train],
                               init_points, gen)
    cfg = DensifyConfig.for_iterations(iterations, max_gaussians=max_gaussians)
    model, hist = fit_gaussians([cams[i] for i in train], images[train], init=pts, init_colors=cols,
                                iterations=iterations, sh_degree=sh_degree, densify=cfg, seed=seed,
                                progress=progress, backend=backend, background=BACKGROUND, device=device)
    save_ply(model, out / "point_cloud.ply")
    test_psnr = evaluate_psnr(model, [cams[i] for i in test], images[test], BACKGROUND, backend=backend)
    train_psnr = evaluate_psnr(model, [cams[i] for i in train], images[train], BACKGROUND, backend=backend)
    info.update({
        "sh_degree": model.sh_degree, "num_gaussians": model.num_gaussians,
        "fit_psnr_train": round(float(np.mean(train_psnr)), 3), "fit_psnr_test": round(float(np.mean(test_psnr)), 3),
        "seconds_fit": round(hist.seconds, 2), "seconds_total": round(time.perf_counter() - t0, 2), "backend": backend,
    })
    atomic_write_json(out / "scene.json", info)
    return info


def _has_frames(out: Path, seed: int, n_views: int, size: int, names: list[str]) -> bool:
    """Whether ``out`` already holds this scene's ground truth (a ``fit=False`` build with the same seed, views
    and size): the fit then leaves the frames and cameras untouched, so a process reading them meanwhile (the
    prior, which needs no fit: ``nifi embedded-assets``' frames stage) never sees a file being rewritten."""
    try:
        info = json.loads((out / "scene.json").read_text())
    except (OSError, ValueError):
        return False
    return (info.get("seed") == seed and info.get("views") == n_views and info.get("image_size") == [size, size]
            and (out / "cameras.json").is_file() and all((out / "images" / f"{n}.png").is_file() for n in names))


def build_scenes(out: str | Path, seed: int = 0, names: list[str] | None = None, **kwargs) -> list[dict]:
    """Build every (or the named) embedded scene under ``out/<name>/``."""
    cat = scene_catalogue()
    names = names or list(cat)
    unknown = [n for n in names if n not in cat]
    if unknown:
        raise ValueError(f"unknown scenes {unknown}; available: {list(cat)}")
    return [build_scene(cat[n], Path(out) / n, seed=seed, **kwargs) for n in names]


def cmd_scenes_build(args: argparse.Namespace) -> int:
    import json

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset:
        from .scene_presets import build_preset

        try:
            manifest = build_preset(args.preset, repo_path(args.out), seed=args.seed, progress=not args.quiet,
                                    device=args.device, backend=args.backend, **preset_overrides(args))
        finally:
            torch.set_num_threads(threads)
        print(json.dumps({k: manifest[k] for k in ("preset", "train_scenes", "heldout_scenes", "seconds")}))
        return 0
    try:
        infos = build_scenes(repo_path(args.out), seed=args.seed, names=args.scenes.split(",") if args.scenes else None,
                             iterations=args.iterations or 1500, n_views=args.views or 32, size=args.size or 64,
                             max_gaussians=args.max_gaussians or 3000, progress=not args.quiet, device=args.device,
                             backend=args.backend)
    finally:
        torch.set_num_threads(threads)
    for info in infos:
        print(json.dumps({k: info[k] for k in ("name", "num_gaussians", "fit_psnr_train", "fit_psnr_test",
                                                "seconds_total")}))
    return 0


def preset_overrides(args: argparse.Namespace) -> dict:
    """The size options given on the command line (the others keep the preset's values)."""
    given = {"iterations": args.iterations, "n_views": args.views, "size": args.size,
             "max_gaussians": args.max_gaussians}
    return {k: v for k, v in given.items() if v is not None}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scenes", help="the embedded procedural scenes")
    sub = p.add_subparsers(dest="scenes_command", metavar="SUBCOMMAND")
    b = sub.add_parser("build", help="render the procedural scenes and fit a 3DGS to each")
    b.add_argument("--out", default="data/embedded/scenes")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scenes", default="", help="comma-separated subset (default: all)")
    b.add_argument("--preset", default=None, help="a named scene set (v3: 128 px, richer geometry, train/ and "
                   "heldout/ scenes; gs.scene_presets) instead of the four embedded scenes; its own defaults "
                   "for the size options unless given")
    b.add_argument("--iterations", type=int, default=None, help="default: 1500 (a preset: its own)")
    b.add_argument("--views", type=int, default=None, help="default: 32 (a preset: its own)")
    b.add_argument("--size", type=int, default=None, help="default: 64 (a preset: its own)")
    b.add_argument("--max-gaussians", type=int, default=None, help="default: 3000 (a preset: its own)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these sizes)")
    b.add_argument("--device", default="cpu", help="where the dense fit runs (default: cpu, as the embedded assets)")
    b.add_argument("--backend", default="torch", choices=("torch", "gsplat", "auto"),
                   help="rasterizer of the fit (default: torch, the reference; auto: gsplat on CUDA when installed)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_scenes_build)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

"""A tiny synthetic scene in the embedded layout (``images/``, ``cameras.json``, ``point_cloud.ply``) for
tests and quick demos: a random-but-seeded cloud of Gaussians rendered from cameras on a ring."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def toy_model(n: int = 400, sh_degree: int = 1, seed: int = 0, radius: float = 1.0):
    """``n`` coloured Gaussians in a ball of ``radius`` (varied sizes, mostly opaque)."""
    from ..gs.model import GaussianModel

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=1, keepdim=True) * radius * torch.rand(n, 1, generator=g) ** (1 / 3)
    k = (sh_degree + 1) ** 2 - 1
    return GaussianModel(
        means=means, log_scales=math.log(0.08 * radius) + 0.4 * torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g), opacity_logits=1.5 + torch.randn(n, generator=g),
        sh_dc=1.2 * torch.randn(n, 3, generator=g), sh_rest=0.1 * torch.randn(n, k, 3, generator=g))


def ring_cameras(num_views: int = 8, size: int = 32, distance: float = 3.0, fov_deg: float = 50.0,
                 image_dir: Path | None = None):
    """Cameras on a horizontal ring looking at the origin (OpenCV convention, z up)."""
    from ..gs.cameras import Camera, look_at

    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    cams = []
    for i in range(num_views):
        a = 2 * math.pi * i / num_views
        eye = (distance * math.cos(a), distance * math.sin(a), 0.6 * math.sin(3 * a))
        name = f"view_{i:03d}"
        path = None if image_dir is None else Path(image_dir) / f"{name}.png"
        cams.append(Camera(name, size, size, f, f, size / 2, size / 2, look_at(eye, (0.0, 0.0, 0.0)), path))
    return cams


def make_toy_scene(root: str | Path, n: int = 400, num_views: int = 8, size: int = 32, sh_degree: int = 1,
                   seed: int = 0, write_ply: bool = True):
    """Write a toy scene to ``root``: ground-truth images are renders of :func:`toy_model` (black background)."""
    from ..gs.cameras import write_scene_cameras
    from ..gs.model import save_ply
    from ..gs.render import render
    from ..io.images import save_image

    root = Path(root)
    model = toy_model(n, sh_degree, seed)
    cams = ring_cameras(num_views, size, image_dir=root / "images")
    with torch.no_grad():
        for c in cams:
            save_image(c.image_path, render(model, c, backend="torch").image.clamp(0, 1))
    write_scene_cameras(root / "cameras.json", cams)
    if write_ply:
        save_ply(model, root / "point_cloud.ply")
    return model, cams

"""The procedural scenes: the ray caster against hand computations, and a miniature build."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nifi_lib.gs.cameras import Camera, read_scene_cameras
from nifi_lib.gs.model import load_ply
from nifi_lib.gs.scenes import (AMBIENT, LIGHT, ProceduralScene, Quad, Sphere, build_scene, render_procedural,
                                sample_texture, scene_catalogue)
from nifi_lib.io.images import load_image


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sample_texture_is_bilinear_and_wraps():
    tex = torch.zeros(3, 2, 4)
    tex[0, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    # texel centres at (i + 0.5) / w: u = 1.5/4 lies between texels 1 and 2 of row 0 (v = 0.25 is row 0's centre)
    out = sample_texture(tex, torch.tensor([[1.5 / 4, 0.25], [1.0 + 1.5 / 4, 0.25], [0.5 / 4 + 1 / 8, 0.25]]))
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 1.0, 0.5]))


def test_ray_caster_plane_and_sphere_head_on():
    """Camera at z = 5 looking down; a horizontal quad at z = 0 and a sphere of radius 1 at the origin."""
    tex = torch.ones(3, 4, 4) * torch.tensor([0.2, 0.4, 0.8]).view(3, 1, 1)
    down = torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, 5.0], [0, 0, 0, 1.0]])  # looks along -z
    cam = Camera("top", 9, 9, 10.0, 10.0, 4.5, 4.5, down)
    plane = ProceduralScene("p", [Quad((-10, -10, 0), (20, 0, 0), (0, 20, 0), tex)], (0, 0, 0), None)
    img, depth = render_procedural(plane, cam, supersample=1)
    shade = AMBIENT + (1 - AMBIENT) * LIGHT[2].item()  # normal (0, 0, 1)
    torch.testing.assert_close(img[:, 4, 4], torch.tensor([0.2, 0.4, 0.8]) * shade)
    assert depth[4, 4].item() == pytest.approx(5.0)
    assert depth[0, 0].item() == pytest.approx(5.0)  # z-depth, not ray length
    sphere = ProceduralScene("s", [Sphere((0, 0, 0), 1.0, tex)], (0, 0, 0), None)
    img, depth = render_procedural(sphere, cam, supersample=1)
    assert depth[4, 4].item() == pytest.approx(4.0)
    assert math.isinf(depth[0, 0].item()) and img[:, 0, 0].abs().sum() == 0  # background is black
    # the pixel at offset (2, 0) sees the sphere at x = 0.2 * z: solve |o + t d| = 1
    d = torch.tensor([0.2, 0.0, -1.0], dtype=torch.float64)
    d = d / d.norm()
    o = torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    b = (o * d).sum()
    t = -b - torch.sqrt(b * b - (o * o).sum() + 1)
    assert depth[4, 6].item() == pytest.approx(float(t * d.abs()[2]), rel=1e-6)


def test_catalogue_has_four_scenes_seen_by_their_cameras():
    cat = scene_catalogue()
    assert len(cat) == 4
    from nifi_lib.gs.scenes import scene_cameras

    for sc in cat.values():
        cams = scene_cameras(sc, 8, 16, seed=0)
        for c in cams:
            uv, z = c.project(torch.tensor([sc.target], dtype=torch.float32))
            assert z.item() > 0 and torch.allclose(uv, torch.tensor([[8.0, 8.0]]), atol=1e-3)
        img, _ = render_procedural(sc, cams[0], supersample=1)
        assert img.mean() > 0.05  # something textured is in view


def test_build_scene_miniature(tmp_path):
    sc = scene_catalogue()["sphere_floor"]
    info = build_scene(sc, tmp_path / "s", seed=1, n_views=9, size=16, iterations=30, init_points=200,
                       max_gaussians=400, progress=False)
    out = tmp_path / "s"
    assert sorted(p.name for p in (out / "images").iterdir())[:2] == ["000.png", "001.png"]
    cams = read_scene_cameras(out / "cameras.json")
    assert len(cams) == 9 and cams[0].width == 16
    assert load_image(cams[3].image_path).shape == (3, 16, 16)
    model = load_ply(out / "point_cloud.ply")
    meta = json.loads((out / "scene.json").read_text())
    assert meta["num_gaussians"] == model.num_gaussians == info["num_gaussians"]
    assert meta["seed"] == 1 and meta["test_views"] == [0, 8] and meta["fit_psnr_test"] > 10
    again = build_scene(sc, tmp_path / "t", seed=1, n_views=9, size=16, iterations=30, init_points=200,
                        max_gaussians=400, progress=False)
    assert (tmp_path / "t" / "point_cloud.ply").read_bytes() == (out / "point_cloud.ply").read_bytes()
    assert again["fit_psnr_test"] == info["fit_psnr_test"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU check (run on the device: docs/perf/rehearsal_h200)")
def test_ray_caster_on_cuda_matches_the_cpu():
    """The rehearsal casts the 512 px ground truth on CUDA: same float64 maths, same 8-bit image."""
    sc = scene_catalogue()["boxes"]
    from nifi_lib.gs.scenes import scene_cameras

    cam = scene_cameras(sc, 4, 64, seed=0)[1]
    cpu_img, cpu_depth = render_procedural(sc, cam)
    gpu_img, gpu_depth = render_procedural(sc, cam, device="cuda")
    assert gpu_img.device.type == "cpu" and gpu_depth.device.type == "cpu"
    assert (torch.round(gpu_img * 255) != torch.round(cpu_img * 255)).float().mean() < 1e-3
    torch.testing.assert_close(gpu_img, cpu_img, atol=1e-6, rtol=0)
    finite = torch.isfinite(cpu_depth)
    assert torch.equal(finite, torch.isfinite(gpu_depth))
    torch.testing.assert_close(gpu_depth[finite], cpu_depth[finite], rtol=1e-9, atol=1e-9)


def test_ray_caster_device_argument_on_the_cpu_is_the_default():
    sc = scene_catalogue()["totem"]
    from nifi_lib.gs.scenes import scene_cameras

    cam = scene_cameras(sc, 2, 16, seed=3)[0]
    a, da = render_procedural(sc, cam, supersample=2)
    b, db = render_procedural(sc, cam, supersample=2, device=torch.device("cpu"))
    assert torch.equal(a, b) and torch.equal(da, db) and a.shape == (3, 16, 16)

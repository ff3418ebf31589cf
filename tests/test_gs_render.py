"""The pure-PyTorch rasterizer against hand computations of the 3DGS formulas."""
from __future__ import annotations

import math
import time

import pytest
import torch

from nifi_lib.gs.cameras import Camera, look_at
from nifi_lib.gs.model import GaussianModel
from nifi_lib.gs.render import RenderError, render, render_torch
from nifi_lib.gs.sh import C0, sh_colors

SIZE = 33


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small ops: one thread is faster and steadier on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def head_on_camera(size: int = SIZE, f: float = 30.0) -> Camera:
    """Camera at the origin looking down +z; pixel centre (16.5, 16.5) is the optical axis."""
    return Camera("c", size, size, f, f, size / 2, size / 2, torch.eye(4))


def gaussians(means, scales, opacities, rgb, quats=None, degree: int = 0) -> GaussianModel:
    means = torch.tensor(means, dtype=torch.float32).reshape(-1, 3)
    n = means.shape[0]
    scales = torch.tensor(scales, dtype=torch.float32).reshape(n, -1).expand(n, 3)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n) if quats is None else torch.tensor(quats, dtype=torch.float32)
    op = torch.tensor(opacities, dtype=torch.float32).reshape(n)
    rgb = torch.tensor(rgb, dtype=torch.float32).reshape(n, 3)
    k = (degree + 1) ** 2 - 1
    return GaussianModel(means=means, log_scales=torch.log(scales).contiguous(), quats=quats,
                         opacity_logits=torch.log(op / (1 - op)), sh_dc=(rgb - 0.5) / C0,
                         sh_rest=torch.zeros(n, k, 3))


def test_single_isotropic_gaussian_head_on():
    cam = head_on_camera()
    z, s, o = 4.0, 0.2, 0.8
    rgb = torch.tensor([0.9, 0.4, 0.1])
    bg = torch.tensor([0.0, 0.2, 1.0])
    out = render(gaussians([0, 0, z], [s], [o], rgb.tolist()), cam, backend="torch", background=bg)
    # independent: Sigma' = (f s / z)^2 I + 0.3 I at the optical axis (J = diag(f/z) there)
    var = (30.0 * s / z) ** 2 + 0.3
    c = SIZE // 2  # pixel 16 has its centre at 16.5 = cx
    alpha0 = o
    torch.testing.assert_close(out.image[:, c, c], alpha0 * rgb + (1 - alpha0) * bg)
    torch.testing.assert_close(out.alpha[0, c, c], torch.tensor(alpha0))
    for dx, dy in [(3, 0), (2, -2), (0, 4)]:
        a = o * math.exp(-0.5 * (dx * dx + dy * dy) / var)
        torch.testing.assert_close(out.image[:, c + dy, c + dx], a * rgb + (1 - a) * bg, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.depth[0, c, c], torch.tensor(z))
    torch.testing.assert_close(out.means2d[0], torch.tensor([16.5, 16.5]))
    # 3DGS radius: 3 sqrt(lambda_max) with lambda_max = mid + sqrt(max(0.1, mid^2 - det)) (= var + sqrt(0.1) here)
    assert out.radii[0].item() == math.ceil(3 * math.sqrt(var + math.sqrt(0.1))) and bool(out.visible[0])
    # far from the Gaussian (alpha < 1/255): exactly the background, alpha 0
    assert math.exp(-0.5 * 16 ** 2 / var) * o < 1 / 255
    torch.testing.assert_close(out.image[:, 0, 0], bg)
    assert out.alpha[0, 0, 0].item() == 0.0 and out.depth[0, 0, 0].item() == 0.0


def test_opacity_is_clamped_to_099():
    out = render(gaussians([0, 0, 3], [0.3], [0.999], [1, 1, 1]), head_on_camera(), backend="torch")
    assert out.alpha[0, SIZE // 2, SIZE // 2].item() == pytest.approx(0.99)


def test_anisotropic_gaussian_matches_ewa_with_numerical_jacobian():
    """Sigma' = J W Sigma W^T J^T + 0.3 I, with J from autograd of the pinhole projection (float64)."""
    cam = Camera("c", 40, 30, 35.0, 33.0, 19.0, 16.0, look_at((0.3, -3.0, 0.8), (0.1, 0.2, 0.0)))
    mean = torch.tensor([0.25, 0.1, 0.15])
    q = torch.tensor([0.8, 0.3, -0.4, 0.2])
    s = torch.tensor([0.25, 0.05, 0.12])
    g = GaussianModel(means=mean[None], log_scales=s.log()[None], quats=q[None], opacity_logits=torch.tensor([1.5]),
                      sh_dc=torch.tensor([[0.7, 0.1, -0.3]]), sh_rest=torch.zeros(1, 0, 3))
    out = render(g, cam, backend="torch")

    w2c = cam.world_to_cam.double()

    def proj(x):
        pc = w2c[:3, :3] @ x + w2c[:3, 3]
        return torch.stack([cam.fx * pc[0] / pc[2] + cam.cx, cam.fy * pc[1] / pc[2] + cam.cy])

    jac = torch.autograd.functional.jacobian(proj, mean.double())  # (2, 3), includes W
    qn = (q / q.norm()).double()
    w, x, y, z = qn
    rot = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)
    sigma = rot @ torch.diag(s.double() ** 2) @ rot.T
    cov2 = jac @ sigma @ jac.T + 0.3 * torch.eye(2, dtype=torch.float64)
    mu = proj(mean.double())
    torch.testing.assert_close(out.means2d[0].double(), mu, rtol=1e-5, atol=1e-4)
    opacity = torch.sigmoid(torch.tensor(1.5, dtype=torch.float64))
    color = 0.5 + C0 * torch.tensor([0.7, 0.1, -0.3], dtype=torch.float64)
    inv = torch.linalg.inv(cov2)
    checked = 0
    for py in range(cam.height):
        for px in range(cam.width):
            d = torch.tensor([px + 0.5, py + 0.5], dtype=torch.float64) - mu
            a = float(opacity * torch.exp(-0.5 * d @ inv @ d))
            if a < 1 / 255:
                assert out.alpha[0, py, px].item() == 0.0
                continue
            checked += 1
            assert out.alpha[0, py, px].item() == pytest.approx(a, rel=1e-3, abs=1e-5)
            torch.testing.assert_close(out.image[:, py, px].double(), a * color, rtol=1e-3, atol=1e-5)
    assert checked > 30


def test_two_gaussians_composite_front_to_back():
    cam = head_on_camera()
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    bg = torch.tensor([0.0, 1.0, 0.0])
    o1, o2 = 0.6, 0.7
    c = SIZE // 2
    for z_red, z_blue in [(3.0, 5.0), (5.0, 3.0)]:
        # same screen size: scale proportional to depth
        g = gaussians([[0, 0, z_red], [0, 0, z_blue]], [[0.05 * z_red], [0.05 * z_blue]], [o1, o2], [red, blue])
        out = render(g, cam, backend="torch", background=bg)
        (fo, fc), (bo, bc) = ((o1, red), (o2, blue)) if z_red < z_blue else ((o2, blue), (o1, red))
        expected = fo * torch.tensor(fc) + (1 - fo) * bo * torch.tensor(bc) + (1 - fo) * (1 - bo) * bg
        torch.testing.assert_close(out.image[:, c, c], expected)
        torch.testing.assert_close(out.alpha[0, c, c], torch.tensor(1 - (1 - fo) * (1 - bo)))
        exp_depth = (fo * min(z_red, z_blue) + (1 - fo) * bo * max(z_red, z_blue)) / (1 - (1 - fo) * (1 - bo))
        torch.testing.assert_close(out.depth[0, c, c], torch.tensor(exp_depth))
        # the input order does not matter, only depth
        out2 = render(g.subset([1, 0]), cam, backend="torch", background=bg)
        torch.testing.assert_close(out2.image, out.image)


def test_transmittance_stops_below_1e_4():
    """3DGS stops a pixel before the Gaussian that would bring T below 1e-4."""
    cam = head_on_camera()
    n = 6
    z = [2.0 + i for i in range(n)]
    g = gaussians([[0, 0, zi] for zi in z], [[0.05 * zi] for zi in z], [0.8] * n, [[1.0, 1.0, 1.0]] * n)
    g.sh_dc[5] += 40.0  # a very bright last Gaussian: visible in the result if it were composited
    out = render(g, cam, backend="torch")
    # T: 0.2, 0.04, 0.008, 0.0016, 0.00032, then 6.4e-5 < 1e-4: the sixth Gaussian is skipped
    expected = sum(0.8 * 0.2 ** i for i in range(5))
    c = SIZE // 2
    assert out.image[0, c, c].item() == pytest.approx(expected, rel=1e-5)
    assert out.alpha[0, c, c].item() == pytest.approx(1 - 0.2 ** 5, rel=1e-5)
    dense = render_torch(g, cam, dense=True)
    assert dense.image[0, c, c].item() == pytest.approx(expected, rel=1e-5)


def test_sh_degree0_colour_and_view_dependence():
    dc = torch.tensor([[0.3, -0.2, 1.1], [-3.0, 0.0, 0.0]])
    col = sh_colors(0, dc, torch.zeros(2, 0, 3), torch.randn(2, 3))
    torch.testing.assert_close(col[0], 0.5 + C0 * dc[0])
    assert col[1, 0].item() == 0.0  # clamped at 0 as in 3DGS/gsplat
    # degree 1: Y_1 bands are -C1*y, C1*z, -C1*x of the unit view direction
    rest = torch.zeros(1, 3, 3)
    rest[0, 1, 0] = 0.5  # coefficient of C1 * z on the red channel
    d = torch.tensor([[0.0, 0.6, 0.8]])
    col = sh_colors(1, torch.zeros(1, 3), rest, d * 7.0)  # direction need not be normalised
    assert col[0, 0].item() == pytest.approx(0.5 + 0.4886025119029199 * 0.8 * 0.5)
    assert sh_colors(0, torch.zeros(1, 3), rest, d)[0, 0].item() == pytest.approx(0.5)


def random_scene(n: int = 300, degree: int = 2, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return GaussianModel(means=torch.rand(n, 3, generator=g) * 2 - 1,
                         log_scales=torch.log(torch.rand(n, 3, generator=g) * 0.15 + 0.01),
                         quats=torch.randn(n, 4, generator=g), opacity_logits=torch.randn(n, generator=g) + 1,
                         sh_dc=torch.randn(n, 3, generator=g) * 0.5, sh_rest=torch.randn(n, k, 3, generator=g) * 0.2)


def orbit_camera(size: int = 40, angle: float = 0.3) -> Camera:
    f = 0.5 * size / math.tan(0.4)
    return Camera("o", size, size + 6, f, f * 1.05, size / 2 + 0.7, (size + 6) / 2 - 1.1,
                  look_at((4 * math.cos(angle), 4 * math.sin(angle), 1.5), (0, 0, 0)))


def test_tiled_matches_dense_reference_and_tile_size():
    g = random_scene()
    cam = orbit_camera()
    bg = torch.tensor([0.2, 0.3, 0.4])
    dense = render_torch(g, cam, bg, dense=True)
    for tile in (4, 8, 16):
        tiled = render_torch(g, cam, bg, tile=tile)
        torch.testing.assert_close(tiled.image, dense.image, rtol=1e-4, atol=2e-4)
        torch.testing.assert_close(tiled.alpha, dense.alpha, rtol=1e-4, atol=2e-4)
    assert dense.alpha.max() > 0.9 and dense.alpha.min() < 0.1  # both covered and empty pixels


def test_tiled_is_accurate_for_long_needles():
    """A long thin Gaussian far from most tiles it covers (strong cancellation in the quadratic form)."""
    c45 = math.cos(math.pi / 8)
    g = gaussians([[0.0, 0.0, 2.0]], [[1.0, 0.03, 0.03]], [0.95], [[1.0, 0.5, 0.2]],
                  quats=[[c45, 0.0, 0.0, math.sin(math.pi / 8)]])  # rotated 45 degrees about the optical axis
    cam = Camera("c", 160, 160, 100.0, 100.0, 80.0, 80.0, torch.eye(4))
    tiled = render_torch(g, cam)
    exact = render_torch(GaussianModel(**{k: v.double() for k, v in g.tensors().items()}), cam, dense=True)
    assert exact.alpha.sum() > 100 and exact.alpha.dtype == torch.float64
    torch.testing.assert_close(tiled.alpha.double(), exact.alpha, rtol=2e-4, atol=1e-5)


def test_gradients_reach_every_attribute_and_match_dense():
    g = random_scene(n=120, degree=1).requires_grad_(True)
    cam = orbit_camera(size=32)
    target = torch.rand(3, 38, 32, generator=torch.Generator().manual_seed(1))
    out = render(g, cam, backend="torch", background=torch.ones(3))
    out.retain_grad()
    loss = (out.image - target).abs().mean() + out.depth.mean() * 0.01
    loss.backward()
    grads = {k: v.grad.clone() for k, v in g.tensors().items()}
    for name, gr in grads.items():
        assert gr is not None and torch.isfinite(gr).all(), name
        assert gr.abs().sum() > 0, name
    assert out.means2d_grad() is not None and out.means2d_grad()[out.visible].abs().sum() > 0
    for v in g.tensors().values():
        v.grad = None
    ref = render_torch(g, cam, torch.ones(3), dense=True)
    ((ref.image - target).abs().mean() + ref.depth.mean() * 0.01).backward()
    for name, v in g.tensors().items():
        torch.testing.assert_close(grads[name], v.grad, rtol=2e-3, atol=1e-5, msg=name)


def test_culling_behind_camera_and_offscreen():
    cam = head_on_camera()
    g = gaussians([[0, 0, -2.0], [50.0, 0, 2.0], [0, 0, 3.0]], [[0.1]] * 3, [0.9] * 3, [[1, 1, 1]] * 3)
    g.requires_grad_(True)
    out = render(g, cam, backend="torch")
    assert out.visible.tolist() == [False, False, True]
    assert out.radii[:2].tolist() == [0, 0]
    out.image.sum().backward()
    assert torch.isfinite(g.means.grad).all() and g.means.grad[:2].abs().sum() == 0


def test_gsplat_backend_refuses_cpu():
    with pytest.raises(RenderError, match="CUDA"):
        render(random_scene(10), orbit_camera(), backend="gsplat")
    with pytest.raises(RenderError, match="unknown render backend"):
        render(random_scene(10), orbit_camera(), backend="vulkan")
    assert render(random_scene(10), orbit_camera(), backend="auto").backend == "torch"


def test_speed_64px_5k_gaussians():
    """Forward + backward of 5k Gaussians at 64x64 on one thread (target < 100 ms; loose bound here)."""
    g = torch.Generator().manual_seed(0)
    n = 5000
    scene = GaussianModel(means=torch.rand(n, 3, generator=g) * 2 - 1,
                          log_scales=torch.log(torch.rand(n, 3, generator=g) * 0.03 + 0.005),
                          quats=torch.randn(n, 4, generator=g), opacity_logits=torch.randn(n, generator=g),
                          sh_dc=torch.randn(n, 3, generator=g), sh_rest=torch.randn(n, 3, 3, generator=g) * 0.1)
    scene.requires_grad_(True)
    cam = orbit_camera(size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            render(scene, cam, backend="torch").image.sum().backward()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 0.5, times  # generous: the CI machine is shared


def test_auto_backend_warns_once_when_cuda_has_no_gsplat(monkeypatch):
    import importlib
    import warnings

    R = importlib.import_module("nifi_lib.gs.render")   # the module (nifi_lib.gs.render is also the function)

    monkeypatch.setattr(R, "gsplat_available", lambda: False)
    monkeypatch.setattr(R, "_warned_no_gsplat", False)
    cuda = torch.device("cuda")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert R.resolve_backend("auto", cuda) == "torch"
        assert R.resolve_backend("auto", cuda) == "torch"
        assert R.resolve_backend("auto", torch.device("cpu")) == "torch"
    msgs = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "gsplat is not installed" in msgs[0] and ".[gpu]" in msgs[0]
    monkeypatch.setattr(R, "gsplat_available", lambda: True)
    assert R.resolve_backend("auto", cuda) == "gsplat"

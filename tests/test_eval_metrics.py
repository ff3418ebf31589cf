"""Metrics: calibration against IQA-PyTorch's official scores, independent PSNR/SSIM checks, shapes, errors."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from nifi_lib.metrics import metrics as M
from nifi_lib.io.images import load_image
from nifi_lib.paths import REPO_ROOT

CALIB = REPO_ROOT.parent / "shared" / "calibration" / "iqa"


@pytest.fixture(scope="module")
def calibration():
    csv_path = CALIB / "results_official.csv"
    if not csv_path.is_file():
        pytest.skip(f"calibration folder {CALIB} absent")
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    files = rows[0][1:]
    official = {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}
    ref = torch.stack([load_image(CALIB / "ref_dir" / n) for n in files])
    dist = torch.stack([load_image(CALIB / "dist_dir" / n) for n in files])
    return files, official, ref, dist


def test_calibration_psnr_ssim(calibration):
    files, official, ref, dist = calibration
    p = M.psnr(dist, ref)
    s = M.ssim(dist, ref, mode="y")
    assert p.shape == s.shape == (len(files),)
    # the CSV prints PSNR with 2 decimals and SSIM with 4
    np.testing.assert_allclose(p.numpy(), official["psnr"], atol=0.005)
    np.testing.assert_allclose(s.numpy(), official["ssim"], atol=5e-4)
    assert [round(float(v), 3) for v in s] == [round(v, 3) for v in official["ssim"]]
    # the RGB default is a different (documented) convention: it does not reproduce the Y-channel numbers
    assert np.abs(M.ssim(dist, ref).numpy() - np.array(official["ssim"])).max() > 0.01


def test_calibration_lpips_dists(calibration, real_weights):
    files, official, ref, dist = calibration
    lp = M.lpips(dist, ref, net="alex")
    ds = M.dists(dist, ref)
    assert lp.shape == ds.shape == (len(files),)
    np.testing.assert_allclose(lp.numpy(), official["lpips"], atol=5e-4)
    np.testing.assert_allclose(ds.numpy(), official["dists"], atol=5e-4)
    # symmetric in its arguments
    np.testing.assert_allclose(M.lpips(ref[:2], dist[:2]).numpy(), lp[:2].numpy(), atol=1e-5)


def _rand_pair(n=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, h, w, generator=g)
    b = (a + 0.1 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    return b, a


def test_psnr_ssim_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pred, target = _rand_pair()
    p, s = M.psnr(pred, target), M.ssim(pred, target)
    for i in range(pred.shape[0]):
        x, y = pred[i].double().numpy(), target[i].double().numpy()
        assert float(p[i]) == pytest.approx(peak_signal_noise_ratio(y, x, data_range=1.0), abs=1e-4)
        ref = structural_similarity(y, x, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert float(s[i]) == pytest.approx(ref, abs=1e-5)
    # identical images: finite PSNR (80 dB cap), SSIM 1
    assert float(M.psnr(target, target)[0]) == pytest.approx(80.0)
    assert torch.allclose(M.ssim(target, target), torch.ones(3, dtype=target.dtype))
    # the Y option: PSNR on luma
    yl = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]).double()
    mse = ((yl(pred) - yl(target)) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(M.psnr(pred, target, mode="y").double(), 10 * torch.log10(1 / (mse + 1e-8)),
                               rtol=1e-5, atol=1e-4)


def test_perceptual_metrics_shapes_and_identity(real_weights):
    pred, target = _rand_pair(n=2, h=48, w=48)
    for f in (lambda a, b: M.lpips(a, b), lambda a, b: M.lpips(a, b, net="vgg"), M.dists):
        v = f(pred, target)
        assert v.shape == (2,) and torch.isfinite(v).all() and (v > 0).all()
        same = f(target, target)
        assert same.abs().max() < 1e-5
    # more degradation, larger distance
    noisier = (target + 0.3 * torch.randn_like(target)).clamp(0, 1)
    assert (M.lpips(noisier, target) > M.lpips(pred, target)).all()
    assert (M.dists(noisier, target) > M.dists(pred, target)).all()


def test_ms_ssim():
    pred, target = _rand_pair(n=2, h=176, w=176)
    v = M.ms_ssim(pred, target)
    assert v.shape == (2,) and (v < 1).all()
    assert torch.allclose(M.ms_ssim(target, target), torch.ones(2), atol=1e-5)
    with pytest.raises(M.MetricInputError, match="160"):
        M.ms_ssim(*_rand_pair(n=1, h=64, w=64))


def test_lpips_loss_module(real_weights):
    loss = M.lpips_loss_module("alex", device="cpu")
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.model.training
    pred, target = _rand_pair(n=2, h=64, w=64)
    x = (pred * 2 - 1).requires_grad_(True)
    v = loss(x, target * 2 - 1)
    assert v.shape == (2,)
    torch.testing.assert_close(v.detach(), M.lpips(pred, target), atol=1e-5, rtol=1e-4)
    v.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad,match", [
    (lambda t: t[0], "shape"),
    (lambda t: t * 2 - 1, r"\[0, 1\]"),
    (lambda t: (t * 255).to(torch.uint8), "float"),
    (lambda t: t[:, :, :20], "differ in shape"),
    (lambda t: t.clone().fill_(float("nan")), "NaN"),
])
def test_bad_inputs(bad, match):
    pred, target = _rand_pair(n=2)
    for f in (M.psnr, M.ssim, M.lpips, M.dists):
        with pytest.raises(M.MetricInputError, match=match):
            f(bad(pred), target)
    with pytest.raises(M.MetricInputError, match="mode"):
        M.ssim(pred, target, mode="lab")
    with pytest.raises(M.MetricInputError, match="net"):
        M.lpips(pred, target, net="squeeze")


def test_compute_metrics_and_device(real_weights):
    pred, target = _rand_pair(n=2, h=48, w=48)
    out = M.compute_metrics(pred, target, ("lpips", "dists", "psnr", "ssim"))
    assert set(out) == {"lpips", "dists", "psnr", "ssim"} and all(v.shape == (2,) for v in out.values())
    if torch.cuda.is_available():
        got = M.lpips(pred.cuda(), target.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), out["lpips"], atol=1e-4, rtol=1e-3)


def test_trunk_feature_modules_match_torchvision():
    import torchvision

    for name, ctor in (("alexnet", torchvision.models.alexnet), ("vgg16", torchvision.models.vgg16)):
        spec_shapes = {k: torch.zeros(v) for k, v in
                       __import__("nifi_lib.metrics.weights", fromlist=["TRUNKS"]).TRUNKS[name].expected_shapes().items()}
        ours = M.trunk_features_module(name, spec_shapes)
        assert repr(ours) == repr(ctor(weights=None).features)

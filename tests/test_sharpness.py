"""Sharpness measured, not guessed (issue 17, item 4): the high-frequency ratio against an independent
Laplacian (scipy), the patch-grid artefact on natural images (scikit-image's photographs) with and without a
faint grid at the stride, the transformer's patch stride of a backbone, and what notebook 07 reports with them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import data as skdata

from nifi_lib.metrics.metrics import MetricInputError
from nifi_lib.metrics.sharpness import (high_frequency_energy, high_frequency_ratio, patch_grid_artefact,
                                        patch_grid_profile)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STRIDE = 8


def _photo(name: str, side: int = 256) -> torch.Tensor:
    """A crop of a scikit-image photograph as ``(1, 3, side, side)`` in [0, 1] (float64)."""
    img = np.array(getattr(skdata, name)())[:side, :side].astype(np.float64) / 255.0
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.cat([_photo("astronaut"), _photo("chelsea")])


def block_offset(x: torch.Tensor, stride: int, amp: float, phase: int = 0, seed: int = 0) -> torch.Tensor:
    """A faint block-wise constant offset (uniform in [-amp, amp] per block and image, all channels): the blocks
    start at columns/rows ``-phase + k * stride``."""
    n, _, h, w = x.shape
    g = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(n, 1, (h + phase) // stride + 1, (w + phase) // stride + 1, generator=g,
                         dtype=x.dtype) * 2 - 1) * amp
    full = blocks.repeat_interleave(stride, 2).repeat_interleave(stride, 3)
    return (x + full[:, :, phase:phase + h, phase:phase + w]).clamp(0, 1)


def block_blur(x: torch.Tensor, stride: int, phase: int = 0) -> torch.Tensor:
    """Each ``stride x stride`` block blurred (3x3 box) on its own, replicate-padded at its own border, so the
    block boundaries stay sharp steps (a grid of tokens that do not blend)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (phase, (-(w + phase)) % stride, phase, (-(h + phase)) % stride), mode="replicate")
    hp, wp = xp.shape[-2:]
    b = xp.unfold(2, stride, stride).unfold(3, stride, stride)            # N C nh nw s s
    nh, nw = b.shape[2:4]
    b = b.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, stride, stride)
    b = F.avg_pool2d(F.pad(b, (1, 1, 1, 1), mode="replicate"), 3, 1)
    b = b.reshape(n, nh, nw, c, stride, stride).permute(0, 3, 1, 4, 2, 5).reshape(n, c, hp, wp)
    return b[:, :, phase:phase + h, phase:phase + w]


# ------------------------------------------------------------------------------------------------ high frequency
def test_high_frequency_energy_matches_scipy_laplacian(photos):
    x = torch.cat([photos, torch.rand(1, 3, 256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(1))])
    got = high_frequency_energy(x)
    assert got.shape == (3,)
    for i, img in enumerate(x.numpy()):
        y = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        lap = ndimage.convolve(y, np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64), mode="constant")
        want = np.mean(lap[1:-1, 1:-1] ** 2)                             # the valid region: no padding
        assert got[i].item() == pytest.approx(want, rel=1e-10)
    grey = x[:, :1]                                                       # one channel: used as it is
    lap = ndimage.convolve(grey[0, 0].numpy(), np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64))
    assert high_frequency_energy(grey)[0].item() == pytest.approx(np.mean(lap[1:-1, 1:-1] ** 2), rel=1e-10)


def test_high_frequency_ratio_per_image(photos):
    x = photos.float()
    blurred = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5)))
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    r_same, r_blur, r_noise = (high_frequency_ratio(v, x) for v in (x, blurred, noisy))
    assert r_same.shape == (2,) and torch.allclose(r_same, torch.ones(2))
    assert bool((r_blur < 0.5).all()) and bool((r_noise > 1.2).all())
    want = high_frequency_energy(blurred) / high_frequency_energy(x)
    assert torch.allclose(r_blur, want)
    mixed = torch.stack([x[0], blurred[1]])                               # per image, not pooled
    got = high_frequency_ratio(mixed, x)
    assert got[0].item() == pytest.approx(1.0) and got[1].item() == pytest.approx(r_blur[1].item(), rel=1e-5)


def test_high_frequency_errors_are_clear(photos):
    x = photos.float()
    with pytest.raises(MetricInputError, match="expected a batch"):
        high_frequency_ratio(x[0], x[0])
    with pytest.raises(MetricInputError, match="differ in shape"):
        high_frequency_ratio(x[:, :, :128], x)
    with pytest.raises(MetricInputError, match="flat"):
        high_frequency_ratio(x, torch.full_like(x, 0.5))
    with pytest.raises(MetricInputError, match="NCHW, not NHWC"):
        high_frequency_energy(x.permute(0, 2, 3, 1))
    with pytest.raises(MetricInputError, match="divide 8-bit images by 255"):
        high_frequency_energy((x * 255).to(torch.uint8))
    with pytest.raises(MetricInputError, match="torch tensor"):
        high_frequency_energy(x.numpy())


# ------------------------------------------------------------------------------------------------ patch grid
def test_patch_grid_profile_on_an_exact_block_pattern():
    # blocks of 8 columns alternating 0.3 / 0.5: a step of 0.2 at every block boundary, nothing else. The step
    # profile is 0.2 at phase 7 (between columns 7 and 8, 15 and 16, ...) and 0 elsewhere; its one-period mean is
    # 0.2 / 8, so the excess is 8 - 1 = 7 at phase 7 and -1 at every other phase; along y the image is flat
    # (no information: 0). The artefact is the mean over x and y of the largest excess: 7 / 2.
    w = 64
    col = 0.3 + 0.2 * ((torch.arange(w) // STRIDE) % 2).double()
    img = col.view(1, 1, 1, w).expand(1, 3, 40, w).contiguous()
    prof = patch_grid_profile(img, STRIDE)
    assert prof.shape == (1, 2, STRIDE)
    want_x = torch.full((STRIDE,), -1.0, dtype=torch.float64)
    want_x[STRIDE - 1] = STRIDE - 1
    assert torch.allclose(prof[0, 0], want_x) and torch.equal(prof[0, 1], torch.zeros(STRIDE, dtype=torch.float64))
    assert patch_grid_artefact(img, STRIDE).item() == pytest.approx((STRIDE - 1) / 2)
    shifted = torch.roll(img, 3, dims=3)                                  # boundaries now at columns 3 + 8k
    assert int(patch_grid_profile(shifted, STRIDE)[0, 0].argmax()) == (3 - 1) % STRIDE


def _profile_numpy(img: np.ndarray, stride: int, flat: float = 1e-3) -> np.ndarray:
    """An independent loop implementation of :func:`patch_grid_profile` for one image (H, W) of luma."""
    out = np.zeros((2, stride))
    for axis, y in ((0, img), (1, img.T)):
        prof = np.abs(np.diff(y, axis=1)).mean(axis=0)                   # step per column
        c = (stride - 1) // 2
        per_phase = {p: [] for p in range(stride)}
        for i in range(len(prof) - stride + 1):
            local = prof[i:i + stride].mean()
            if local > flat:
                per_phase[(i + c) % stride].append(prof[i + c] / local - 1)
        for p, v in per_phase.items():
            out[axis, p] = np.median(v) if v else 0.0
    return out


def test_patch_grid_profile_matches_an_independent_loop(photos):
    x = block_offset(photos[:, :, :72, :88], STRIDE, 0.03, phase=2)
    got = patch_grid_profile(x, STRIDE)
    for i, img in enumerate(x.numpy()):
        y = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        np.testing.assert_allclose(got[i].numpy(), _profile_numpy(y, STRIDE), rtol=1e-9, atol=1e-12)


def test_clean_photographs_have_no_grid_and_a_faint_one_is_found_at_any_phase(photos):
    clean = patch_grid_artefact(photos, STRIDE)
    assert clean.shape == (2,) and bool((clean.abs() < 0.05).all()), clean
    for phase in (0, 3, 5):                                               # 3, 5: not a multiple of the stride
        faint = block_offset(photos, STRIDE, 0.02, phase=phase)           # +-5 grey levels per 8 x 8 block
        v = patch_grid_artefact(faint, STRIDE)
        assert bool((v > 0.1).all()) and bool((v > 3 * clean).all()), (phase, v)
        assert bool((patch_grid_artefact(block_offset(photos, STRIDE, 0.04, phase=phase), STRIDE) > v).all())
        prof = patch_grid_profile(faint, STRIDE)                          # the phase found: the block boundaries
        assert prof.argmax(dim=2).eq((-phase - 1) % STRIDE).all(), prof.argmax(dim=2)
        blurred = block_blur(photos, STRIDE, phase=phase)                 # token-wise blur: sharp boundaries
        assert bool((patch_grid_artefact(blurred, STRIDE) > 0.4).all())


def test_other_strides_do_not_fire_on_a_grid_of_eight(photos):
    faint = block_offset(photos, STRIDE, 0.04, phase=3)
    blurred = block_blur(photos, STRIDE, phase=3)
    assert bool((patch_grid_artefact(faint, STRIDE) > 0.4).all())
    for s in (5, 7, 9, 11):                                               # periods sharing no phase with 8
        for x in (faint, blurred):
            assert bool((patch_grid_artefact(x, s) < 0.05).all()), (s, patch_grid_artefact(x, s))
    assert bool((patch_grid_artefact(faint, 16) > 0.4).all())            # an 8-px grid is 16-periodic too


def test_patch_grid_errors_are_clear(photos):
    with pytest.raises(MetricInputError, match="at least 2 pixels"):
        patch_grid_artefact(photos, 1)
    with pytest.raises(MetricInputError, match="integer number of pixels"):
        patch_grid_artefact(photos, 8.0)
    with pytest.raises(MetricInputError, match="too small for a stride of 8: at least 24"):
        patch_grid_artefact(photos[:, :, :23], 8)
    with pytest.raises(MetricInputError, match="expected a batch"):
        patch_grid_artefact(photos[0], 8)
    flat = torch.full((1, 3, 32, 32), 0.5)                                # no steps at all: no grid, no NaN
    assert patch_grid_artefact(flat, 8).tolist() == [0.0]


# ------------------------------------------------------------------------------------------------ stride
def test_patch_stride_of_a_backbone(tmp_path):
    from helpers import tiny_backbone
    from nifi_lib.diffusion.backbone import BackboneError, load_backbone, patch_stride

    assert patch_stride("data/embedded/backbone") == 8                    # VAE 4 x patch 2, from the configs
    bb = tiny_backbone()                                                  # SD3-like VAE (8) x patch 2
    assert bb.patch_stride == 16 and patch_stride(bb) == bb.vae_scale_factor * bb.patch_size == 16
    bb.save_pretrained(tmp_path / "bb", info={"note": "test"})
    assert patch_stride(tmp_path / "bb") == 16 == patch_stride(load_backbone(str(tmp_path / "bb")))
    with pytest.raises(BackboneError, match="cannot read the vae/ and transformer/ configs"):
        patch_stride(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ notebook 07
def _rows(photos):
    x = photos.float()[:, :, :64, :64]
    rows = []
    for i, rate in enumerate(("1.0", "0.1", "1.0")):
        clean = x[i % 2]
        rows.append({"label": f"s / rate {rate} / {i}", "rate": rate, "degraded": clean * 0.5 + 0.25,
                     "nifi": block_offset(clean[None], STRIDE, 0.04, phase=i)[0], "clean": clean})
    return rows


def test_sharpness_by_rate(photos):
    from nifi_lib.experiments.ablations import grid_periods, sharpness_by_rate

    assert grid_periods(8) == [2, 4, 8] and grid_periods(16) == [2, 4, 8, 16] and grid_periods(6) == [2, 3, 6]
    rows = _rows(photos)
    t = sharpness_by_rate(rows, STRIDE)
    assert t["stride"] == STRIDE and t["rates"] == ["0.1", "1.0"] and t["count"] == {"0.1": 1, "1.0": 2, "all": 3}
    assert list(t["hf_ratio"]) == ["degraded", "nifi", "clean"] == list(t["patch_grid"])
    for k in ("degraded", "nifi", "clean"):
        for g, sel in (("0.1", [1]), ("1.0", [0, 2]), ("all", [0, 1, 2])):
            img = torch.stack([rows[i][k] for i in sel])
            ref = torch.stack([rows[i]["clean"] for i in sel])
            assert t["hf_ratio"][k][g] == pytest.approx(high_frequency_ratio(img, ref).mean().item(), rel=1e-6)
            assert t["patch_grid"][k][g] == pytest.approx(patch_grid_artefact(img, STRIDE).mean().item(), abs=1e-7)
    assert list(t["patch_grid_by_period"]) == ["2", "4", "8"]
    for d in (2, 4, 8):
        img = torch.stack([r["nifi"] for r in rows])
        assert t["patch_grid_by_period"][str(d)]["nifi"] == pytest.approx(patch_grid_artefact(img, d).mean().item(),
                                                                          abs=1e-7)
    assert t["patch_grid_by_period"]["8"] == {k: v["all"] for k, v in t["patch_grid"].items()}
    assert t["hf_ratio"]["clean"]["all"] == pytest.approx(1.0)
    assert t["hf_ratio"]["degraded"]["all"] == pytest.approx(0.25)        # half the contrast: a quarter
    assert all(t["patch_grid"]["nifi"][g] > t["patch_grid"]["clean"][g] + 0.2 for g in ("0.1", "1.0", "all"))
    only = sharpness_by_rate(rows, STRIDE, keys=("nifi",))
    assert list(only["hf_ratio"]) == ["nifi"]
    with pytest.raises(ValueError, match=r"rows lack image\(s\) \['base'\]"):
        sharpness_by_rate(rows, STRIDE, keys=("base",))
    with pytest.raises(ValueError, match="no rows"):
        sharpness_by_rate([], STRIDE)


def test_format_sharpness(photos):
    from nifi_lib.experiments.ablations import sharpness_by_rate
    from nifi_lib.viz.benchmark_plots import format_sharpness, sharpness_label

    text = format_sharpness(sharpness_by_rate(_rows(photos), STRIDE))
    lines = text.splitlines()
    assert lines[0] == "images per rate: 0.1: 1, 1.0: 2"
    assert any(line.startswith("patch-grid artefact at the 8 px patch stride") for line in lines)
    assert lines[3].split() == ["rate", "0.1", "rate", "1.0", "all"]
    gt = [line for line in lines if line.strip().startswith("ground truth")]
    assert len(gt) == 3 and gt[0].split()[2:] == ["1.000", "1.000", "1.000"]
    assert [line.split()[0] for line in lines[4:7]] == ["compressed", "NiFi", "ground"]
    assert lines[-5].startswith("patch-grid artefact per grid period")
    assert lines[-4].split() == ["2", "px", "4", "px", "8", "px"] and lines[-1].split()[:2] == ["ground", "truth"]
    assert sharpness_label("nifi t0=50") == "NiFi t0=50" and sharpness_label("clean_vae") == "ground truth via VAE"


def test_ablation_sharpness_restores_every_method(tmp_path):
    from helpers import save_tiny_restorer
    from trainer_helpers import make_pairs
    from nifi_lib.experiments.ablations import ablation_sharpness, restored_rows
    from nifi_lib.evaluation.baselines import create_method

    save_tiny_restorer(tmp_path)
    pairs = make_pairs(tmp_path / "pairs", scenes=("s1",), rates=("0.1", "1.0"), n=1, size=48)
    t = ablation_sharpness(pairs, str(tmp_path / "r.ckpt"), str(tmp_path / "backbone"), t0s=(199, 500),
                           device="cpu")
    assert t["stride"] == 16 and t["rates"] == ["0.1", "1.0"] and t["count"]["all"] == 2
    assert list(t["hf_ratio"]) == ["degraded", "base", "nifi", "nifi t0=500", "clean_vae", "clean"]
    assert all(np.isfinite(v) for m in t["patch_grid"].values() for v in m.values())
    rows = restored_rows(pairs, {"none": create_method("none")}, per_rate=1)
    assert [r["rate"] for r in rows] == ["0.1", "1.0"] and torch.equal(rows[0]["none"], rows[0]["degraded"])


def test_sharpness_by_rate_on_frames_smaller_than_three_strides():
    """The tiny rehearsal: 32 px frames with SD3's 16 px stride. No grid is measurable at 16 (None, printed as —),
    the periods that fit are still measured, and the high-frequency ratio is unaffected."""
    from nifi_lib.experiments.ablations import sharpness_by_rate
    from nifi_lib.viz.benchmark_plots import format_sharpness

    g = torch.Generator().manual_seed(0)
    rows = [{"rate": "0.5", "clean": torch.rand(3, 32, 32, generator=g), "nifi": torch.rand(3, 32, 32, generator=g)}]
    t = sharpness_by_rate(rows, 16)
    assert t["patch_grid"]["nifi"] == {"0.5": None, "all": None}
    assert t["patch_grid_by_period"]["16"]["nifi"] is None and t["patch_grid_by_period"]["8"]["nifi"] is not None
    assert t["hf_ratio"]["nifi"]["all"] == pytest.approx(
        high_frequency_ratio(rows[0]["nifi"][None], rows[0]["clean"][None]).item(), rel=1e-6)
    assert "—" in format_sharpness(t)

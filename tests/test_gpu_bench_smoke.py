"""``nifi bench --tiny`` on the CPU: the whole training part runs and its JSON holds what docs/performance.md reads."""
import json

import pytest

from nifi_lib.bench import gpu


def test_tiny_train_bench_writes_steps_losses_and_compile_diagnostics(tmp_path):
    rc = gpu.main(["--tiny", "--part", "train", "--no-compile", "--train-variants", "eager", "--iters", "1",
                   "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    r = json.loads((tmp_path / "bench.json").read_text())
    eager = r["train"]["variants"]["eager"]
    # 3 warm-up steps for every variant (so variants from fresh trainers compare after equal step counts),
    # one timed and one back-to-back iteration
    assert eager["steps_run"] == 5 and eager["median_ms"] > 0 and eager["loss_total_last"] > 0
    assert r["train"]["flops"]["total"] > 0
    d = r["dynamo"]["train"]
    assert d["graph_breaks"] == 0 and d["cache_counters"] == {} and "compilation metrics" in d["compile_times"]
    assert "compile_cache_saved" not in r   # CPU, no compile: nothing to save
    assert (tmp_path / "summary.md").read_text().startswith("## nifi bench")


def test_real_photos_and_their_agreement_check():
    import torch

    photos = gpu.real_photos(48, 64, torch.device("cpu"))
    assert photos.shape == (len(gpu.REAL_PHOTOS), 3, 48, 64)
    assert photos.min() >= -1 and photos.max() <= 1 and photos.std() > 0.1        # natural images, model range
    assert not torch.equal(photos[0], photos[1])
    same = gpu.photo_agreement(photos, photos.clone())
    assert same["photos"] == list(gpu.REAL_PHOTOS) and same["within"] is True
    assert same["lpips_max"] < 1e-6 and same["tolerance"] == 0.005
    noisy = (photos + 0.2 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    worse = gpu.photo_agreement(photos, noisy)
    assert worse["within"] is False and worse["lpips_max"] > 0.005
    assert all(0 < p < 40 for p in worse["psnr"]) and worse["psnr_min"] == min(worse["psnr"])


@pytest.mark.slow
def test_tiny_restore_bench_compares_the_optimised_path_with_eager_on_photos(tmp_path):
    """The restore part end to end on the CPU (eager, phi- fused, torch.compile), with issue 18's real-photo check,
    and the size-bucket and FP8 rows after the optimised ones."""
    rc = gpu.main(["--tiny", "--device", "cpu", "--part", "restore", "--sizes", "48x48x1", "--no-flop-check",
                   "--no-ablation", "--no-sdpa", "--no-tiled", "--no-nchw-variant", "--no-profile", "--iters", "1",
                   "--warmup", "1", "--size-bucket", "16", "--fp8", "--out", str(tmp_path)])
    assert rc == 0
    r = json.loads((tmp_path / "bench.json").read_text())["restore"]
    row = r["rows"]["48x48_b1"]
    assert row["eager"]["median_ms"] > 0 and row["optimised"]["median_ms"] > 0
    assert r["optimised_vs_eager_rel_err"] < 1e-4                     # fp32 on the CPU: the same computation
    ph = r["optimised_vs_eager_photos"]
    assert ph["photos"] == list(gpu.REAL_PHOTOS) and len(ph["lpips"]) == 3 and ph["within"] is True
    assert "optimised vs eager on real photos" in (tmp_path / "summary.md").read_text()
    sb, f8 = r["size_bucket"], r["fp8"]
    assert (sb["new_size"], sb["target"]) == ("33x33", "48x48") and sb["bucketed"]["median_ms"] > 0
    assert f8["layers"] > 0 and 0 < f8["vs_eager_rel_err"] < 0.05 and f8["vs_eager_photos"]["within"] in (True, False)


def test_tiny_restore_bench_times_both_vae_attention_kinds(tmp_path):
    """``--vae-attention both``: the same restore with diffusers' SDPA processor and the chunked attention (A/B,
    on the eager restorer with --no-compile), each kind's time and how far its frames are from the SDPA kind's."""
    rc = gpu.main(["--tiny", "--device", "cpu", "--part", "restore", "--sizes", "32x32x1", "--no-flop-check",
                   "--no-ablation", "--no-sdpa", "--no-tiled", "--no-nchw-variant", "--no-profile",
                   "--no-compile", "--vae-attention", "both", "--iters", "1", "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    va = json.loads((tmp_path / "bench.json").read_text())["restore"]["vae_attention"]
    assert va["kinds"] == ["sdpa", "chunked"]
    row = va["rows"]["32x32_b1"]
    assert row["variant"] == "eager+fuse_lora" and row["sdpa"]["median_ms"] > 0 and row["chunked"]["median_ms"] > 0
    assert row["sdpa"]["max_abs_diff_vs_sdpa"] == 0 and row["chunked"]["max_abs_diff_vs_sdpa"] < 1e-4   # fp32
    assert row["speedup"] > 0
    # the quality check per kind: each kind's restorations of the real photos against the eager ones
    for kind in ("sdpa", "chunked"):
        ph = row[kind]["vs_eager_photos"]
        assert ph["photos"] == ["astronaut", "chelsea", "coffee"] and 0 <= ph["lpips_max"] < 1e-3, (kind, ph)
    assert "VAE attention: sdpa vs chunked" in (tmp_path / "summary.md").read_text()


def test_sdpa_backends_rows_hold_the_chunked_attention():
    import torch

    rows = gpu.sdpa_backends(torch.device("cpu"), [(1, 1, 40, 16)], dtype=torch.float32)
    assert rows[0]["shape"] == [1, 1, 40, 16] and rows[0]["MATH"] > 0 and rows[0]["chunked"] > 0
    assert rows[0]["chunked_max_abs_diff"] < 1e-5


def test_size_bucket_ab_times_a_new_size_as_it_is_and_bucketed():
    """``--size-bucket``: a size never restored (``bucket_neighbour``) timed as it is and padded to the target's
    bucket, with the photo check between the two restorations; the restorer's own setting is left as it was."""
    import torch

    from helpers import tiny_backbone
    from nifi_lib.restoration.restorer import Restorer

    assert gpu.bucket_neighbour((1024, 1024, 1), 128) == (984, 968, 1)
    assert gpu.bucket_neighbour((64, 64, 2), 32) == (33, 33, 2)          # never below the bucket's smallest size
    with pytest.raises(ValueError, match="1080x1920 is not a multiple of it"):
        gpu.bucket_neighbour((1080, 1920, 1), 128)
    r = Restorer(tiny_backbone(seed=1), adapter=None)
    sb = gpu.size_bucket_ab(r, (64, 64, 1), 32, torch.device("cpu"), iters=1, photo_check=True)
    assert (sb["bucket"], sb["target"], sb["new_size"]) == (32, "64x64", "33x33")
    assert sb["as_is"]["median_ms"] > 0 and sb["bucketed"]["median_ms"] > 0 and sb["bucketed"]["first_call_s"] > 0
    ph = sb["bucketed_vs_as_is_photos"]
    assert ph["photos"] == list(gpu.REAL_PHOTOS) and ph["lpips_max"] > 0   # the padding is context: not identical
    assert r.size_bucket is None
    text = "\n".join(gpu.size_bucket_summary(sb))
    assert "A new frame size (33x33) with and without size_bucket 32 (padded to 64x64)" in text
    assert "| bucketed |" in text and "bucketed vs as is on real photos" in text


def test_fp8_restore_converts_times_and_checks_against_eager():
    """``--fp8``: the restorer's backbone converted (irreversibly), the restore timed, and its distance from the
    eager restorations (a frame and the photos) measured: small, and not zero."""
    import torch

    from helpers import tiny_backbone
    from nifi_lib.diffusion.fp8 import count_fp8
    from nifi_lib.restoration.restorer import Restorer

    r = Restorer(tiny_backbone(seed=1), adapter=None)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    photos = gpu.real_photos(32, 32, torch.device("cpu"))
    with torch.no_grad():
        ref = r.restore(x, seed=0)
        ref_photos = torch.cat([r.restore(p[None], seed=0) for p in photos])
    f = gpu.fp8_restore(r, x, torch.device("cpu"), warmup=1, iters=1, ref_out=ref, photos=photos,
                        ref_photos=ref_photos)
    assert f["layers"] == count_fp8(r.backbone.transformer) > 0 and f["median_ms"] > 0
    assert 0 < f["vs_eager_rel_err"] < 0.05
    assert f["vs_eager_photos"]["photos"] == list(gpu.REAL_PHOTOS) and f["vs_eager_photos"]["lpips_max"] > 0

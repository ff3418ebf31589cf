"""Evaluation (paper Sec. 4.2, Table 1): perceptual metrics with real weights, baselines, benchmark.

- :mod:`.weights`: ImageNet trunks (LPIPS/DISTS), DISTS alpha/beta, FFDNet weights; resolution with no
  silent fallback to random weights.
- :mod:`.metrics`: ``lpips``, ``dists``, ``psnr``, ``ssim``, ``ms_ssim``, ``lpips_loss_module``.
- :mod:`.paper`: Table 1 as data.
- :mod:`.baselines`: ``RestorationMethod`` and the registry (none, bm3d, ffdnet, precomputed, img2img,
  nifi, nifi_wo_t0).
- :mod:`.evaluate` / :mod:`.benchmark`: ``nifi eval`` and ``nifi benchmark``.
"""

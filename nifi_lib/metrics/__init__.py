"""Image-quality metrics (paper Sec. 4.2) and the weights they need, below every stage that scores images.

- :mod:`.weights`: ImageNet trunks (LPIPS/DISTS), DISTS alpha/beta, FFDNet weights; resolution with no
  silent fallback to random weights.
- :mod:`.metrics`: ``lpips``, ``dists``, ``psnr``, ``ssim``, ``ms_ssim``, ``lpips_loss_module``.
- :mod:`.sharpness`: the high-frequency ratio to the clean view and the patch-grid artefact (no weights).

It sits below diffusion and training (the prior's VAE loss and Eq. 6 use LPIPS, the trainer validates with
LPIPS/DISTS) and depends only on the core (errors, io, paths); evaluation scores with it.
"""

"""Diffusion backbone and rectified-flow schedule (paper Sec. 3: LDM, Eq. 2, Eq. 3)."""
from .flow import (classifier_free_guidance, denoised_estimate, euler_step, forward_noise, make_scheduler,
                   one_step_restore, sigma_at)

__all__ = ["classifier_free_guidance", "denoised_estimate", "euler_step", "forward_noise", "make_scheduler",
           "one_step_restore", "sigma_at"]

"""Gaussian diffusion for DiT/U-ViT: noise schedules, the learned-sigma training loss, DDPM/DDIM samplers.

Training (the loop draws timesteps and noise itself, from its own generator)::

    diffusion = create_diffusion()                      # linear, 1000 steps, learned sigma
    t = diffusion.sample_timesteps(batch, generator, device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(device)
    losses = diffusion.training_losses(model, x0, t, {"y": y}, noise)
    losses["loss"].mean().backward()

Sampling::

    images, record = sample(diffusion, ema_model, (n, 4, 32, 32), labels, steps=250, cfg_scale=1.5)
"""

from dit_repro.diffusion.gaussian import (
    FIXED_VARIANCES,
    GaussianDiffusion,
    PosteriorEstimate,
    create_diffusion,
    mean_flat,
)
from dit_repro.diffusion.guidance import CFG_CHANNELS, guided_model_output, validate_guidance
from dit_repro.diffusion.likelihood import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from dit_repro.diffusion.samplers import DEFAULT_SAMPLING_STEPS, SAMPLERS, ddim_step, ddpm_step, sample
from dit_repro.diffusion.schedule import SCHEDULES, beta_schedule, space_timesteps

__all__ = [
    "CFG_CHANNELS",
    "DEFAULT_SAMPLING_STEPS",
    "FIXED_VARIANCES",
    "SAMPLERS",
    "SCHEDULES",
    "GaussianDiffusion",
    "PosteriorEstimate",
    "approx_standard_normal_cdf",
    "beta_schedule",
    "create_diffusion",
    "ddim_step",
    "ddpm_step",
    "discretized_gaussian_log_likelihood",
    "guided_model_output",
    "mean_flat",
    "normal_kl",
    "sample",
    "space_timesteps",
    "validate_guidance",
]

"""Ancestral DDPM and DDIM sampling over respaced timesteps, and DPM-Solver++, with classifier-free guidance.

Reproducibility per image: pass ``generator`` as a list with one ``torch.Generator`` per image. Image
i then draws its starting noise and every step's noise from ``generator[i]`` alone, so it depends only
on that generator's seed and its label (and on the model's arithmetic, which some GPU kernels vary with
the batch size in the last bits). CPU generators give the same noise whatever device samples.
Alternatively pass ``initial_noise`` (x_T) directly; the step noise still comes from ``generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dit_repro.config import ConfigError
from dit_repro.diffusion.dpm_solver import dpm_solver_sample
from dit_repro.diffusion.gaussian import GaussianDiffusion
from dit_repro.diffusion.guidance import guided_model_output, validate_guidance

SAMPLERS = ("ddpm", "ddim", "dpm-solver")
"""Accepted values of ``sampler``: ancestral DDPM, DDIM, and DPM-Solver++ as U-ViT samples (``steps`` = NFE)."""

DEFAULT_SAMPLING_STEPS = 250
"""DiT samples with 250 of the 1000 training steps."""

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the batch, one per image, or None for torch's global generator."""


class _NoiseSource:
    """Standard normal draws for a batch: from one generator, one per image, or the global generator."""

    def __init__(self, generator: GeneratorArg, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = list(generator)
            if len(generator) != batch:
                raise ConfigError(
                    f"got {len(generator)} per-image generators for a batch of {batch}: pass one per image"
                )
        self.generator = generator
        self.batch = batch
        self.device = device
        self.dtype = dtype

    def draw(self, item_shape: Sequence[int]) -> torch.Tensor:
        """A (batch, *item_shape) standard normal tensor on the sampling device."""
        if self.generator is None:
            return torch.randn(self.batch, *item_shape, device=self.device, dtype=self.dtype)
        if isinstance(self.generator, torch.Generator):
            return self._randn((self.batch, *item_shape), self.generator).to(self.device)
        return torch.stack([self._randn(tuple(item_shape), g).to(self.device) for g in self.generator])

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        # Drawn on the generator's own device so that a CPU generator is device-independent.
        return torch.randn(shape, generator=generator, device=generator.device, dtype=self.dtype)


def ddpm_step(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None,
    *,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t); ``noise=None`` returns the mean (last step)."""
    estimate = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    if noise is None:
        return estimate.mean
    return estimate.mean + torch.exp(0.5 * estimate.log_variance) * noise.to(estimate.mean.dtype)


def ddim_step(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """One DDIM step x_t -> x_{t-1} (Song et al., eq. 12); ``noise=None`` returns the mean.

    With ``eta = 0`` the step is deterministic and ``noise`` is not needed; with ``eta > 0`` pass
    ``noise`` on every step but the last (where sigma is 0).

    The noise prediction is re-derived from the (possibly clipped) x_0 prediction, as in ADM.
    """
    estimate = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    x_t = x_t.to(estimate.mean.dtype)
    eps = diffusion.predict_eps_from_xstart(x_t, t, estimate.pred_xstart)
    alpha_bar = diffusion.extract("alphas_cumprod", t, x_t)
    alpha_bar_prev = diffusion.extract("alphas_cumprod_prev", t, x_t)
    sigma = (
        eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    mean = estimate.pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    if noise is None:
        return mean
    return mean + sigma * noise.to(mean.dtype)


def sample(
    diffusion: GaussianDiffusion,
    model: Callable[..., torch.Tensor],
    shape: Sequence[int],
    y: torch.Tensor,
    *,
    sampler: str = "ddpm",
    steps: int = DEFAULT_SAMPLING_STEPS,
    eta: float = 0.0,
    cfg_scale: float = 1.0,
    cfg_channels: str = "all",
    generator: GeneratorArg = None,
    initial_noise: torch.Tensor | None = None,
    null_label: int | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw ``shape[0]`` samples of ``shape`` (B, C, H, W) from ``model`` conditioned on labels ``y``.

    ``diffusion``: the training process; DDPM and DDIM respace it to ``steps`` evenly spaced steps
    (ADM's ``space_timesteps``). ``sampler``: ``ddpm`` (ancestral), ``ddim`` (``eta`` = 0
    deterministic) or ``dpm-solver`` (DPM-Solver++ as U-ViT runs it, ``steps`` model evaluations; see
    :mod:`dit_repro.diffusion.dpm_solver`; the noise generator draws x_T only).
    ``cfg_scale``: 1.0 = no guidance; ``cfg_channels``: ``all`` or ``first3`` (see guidance module).
    ``null_label``: the unconditional label, by default ``model.num_classes``. ``generator``: one
    generator, one per image (see the module docstring), or None. ``initial_noise``: x_T, whose dtype
    (float32 by default) is the sampling dtype. The model must be in eval mode; run this under autocast
    for reduced-precision forwards (the update arithmetic stays in float32).

    Returns the samples and a record of what was used: sampler, steps, eta (DDIM) or None,
    cfg_scale, cfg_channels, guided (whether a guided pass ran), clip_denoised.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler != "ddim" and eta != 0.0:
        raise ConfigError(f"eta applies to the ddim sampler only; got eta={eta} with sampler={sampler!r}")
    if sampler == "dpm-solver" and clip_denoised:
        raise ConfigError("clip_denoised does not apply to dpm-solver (U-ViT's sampler runs without thresholding)")
    if eta < 0.0:
        raise ConfigError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like); got {eta}")
    if len(shape) < 2:
        raise ConfigError(f"shape must be (batch, channels, ...); got {tuple(shape)}")
    validate_guidance(cfg_scale, cfg_channels, shape[1])
    if getattr(model, "training", False):
        raise ConfigError(
            "the model is in training mode (label and feature dropout would act): call model.eval()"
        )
    if null_label is None:
        null_label = getattr(model, "num_classes", None)
    batch = shape[0]
    if y.shape != (batch,):
        raise ConfigError(f"y must hold one label per image, shape ({batch},); got {tuple(y.shape)}")

    device = _sampling_device(model, initial_noise)
    float64 = initial_noise is not None and initial_noise.dtype == torch.float64
    noise = _NoiseSource(generator, batch, device, torch.float64 if float64 else torch.float32)
    if initial_noise is None:
        x = noise.draw(shape[1:])
    elif tuple(initial_noise.shape) != tuple(shape):
        raise ConfigError(f"initial_noise must have shape {tuple(shape)}; got {tuple(initial_noise.shape)}")
    else:
        x = initial_noise.to(device=device, dtype=noise.dtype)
    y = y.to(device)

    def guided(x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return guided_model_output(
            model, x_t, timesteps, y, cfg_scale=cfg_scale, cfg_channels=cfg_channels, null_label=null_label
        )

    if sampler == "dpm-solver":
        x = _dpm_solver(diffusion, guided, x, steps, progress)
    else:
        x = _ancestral_or_ddim(diffusion, guided, x, noise, sampler, steps, eta, clip_denoised, progress)
    record = {
        "sampler": sampler,
        "steps": steps,
        "eta": eta if sampler == "ddim" else None,
        "cfg_scale": cfg_scale,
        "cfg_channels": cfg_channels,
        "guided": cfg_scale != 1.0,
        "clip_denoised": clip_denoised,
    }
    return x, record


def _ancestral_or_ddim(
    diffusion: GaussianDiffusion,
    guided: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    noise: _NoiseSource,
    sampler: str,
    steps: int,
    eta: float,
    clip_denoised: bool,
    progress: bool,
) -> torch.Tensor:
    """DDPM or DDIM over ``steps`` respaced timesteps, from x_T to x_0."""
    process = diffusion.respaced(steps)
    batch, item_shape = x.shape[0], x.shape[1:]
    order = tqdm(
        range(process.num_timesteps - 1, -1, -1),
        total=process.num_timesteps,
        disable=not progress,
        desc=f"{sampler} x{batch}",
    )
    with torch.no_grad():
        for i in order:
            t = torch.full((batch,), i, device=x.device, dtype=torch.long)
            output = guided(x, process.model_timesteps(t))
            if sampler == "ddpm":
                step_noise = noise.draw(item_shape) if i > 0 else None
                x = ddpm_step(process, output, x, t, step_noise, clip_denoised=clip_denoised)
            else:
                step_noise = noise.draw(item_shape) if eta > 0.0 and i > 0 else None
                x = ddim_step(process, output, x, t, eta=eta, noise=step_noise, clip_denoised=clip_denoised)
    return x


def _dpm_solver(
    diffusion: GaussianDiffusion,
    guided: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    nfe: int,
    progress: bool,
) -> torch.Tensor:
    """DPM-Solver++ (U-ViT's configuration) with ``nfe`` guided evaluations; a learned variance is unused."""
    if not np.array_equal(diffusion.timestep_map, np.arange(diffusion.num_timesteps)):
        raise ConfigError("dpm-solver integrates the training process itself: pass the diffusion before respacing")

    def eps_prediction(x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        eps, _ = diffusion.split_output(guided(x_t, timesteps), x_t)
        return eps

    return dpm_solver_sample(eps_prediction, x, diffusion.alphas_cumprod, nfe, progress=progress)


def _sampling_device(model: Callable[..., torch.Tensor], initial_noise: torch.Tensor | None) -> torch.device:
    """The model's device (first parameter), else that of ``initial_noise``, else the CPU."""
    parameters = getattr(model, "parameters", None)
    if parameters is not None:
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return initial_noise.device if initial_noise is not None else torch.device("cpu")

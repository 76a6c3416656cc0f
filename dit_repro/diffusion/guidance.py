"""Classifier-free guidance: one doubled batch (conditional, then null label) per sampling step.

The guided noise is ``eps_uncond + scale * (eps_cond - eps_uncond)``. A learned variance is never
guided: it comes from the conditional half, as in DiT. ``cfg_channels`` picks which noise channels are
guided: ``all`` (default) or ``first3``, DiT's reference behaviour, which guides only the first three
channels of a 4-channel latent and keeps the fourth conditional.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dit_repro.config import ConfigError

CFG_CHANNELS = ("all", "first3")
"""Accepted values of ``cfg_channels``."""

DIT_GUIDED_CHANNELS = 3
"""Number of leading channels DiT's reference sampler guides."""


def validate_guidance(cfg_scale: float, cfg_channels: str, channels: int) -> None:
    """Refuse a scale below 1 (or not finite), an unknown channel choice, or ``first3`` on < 3 channels."""
    if not math.isfinite(cfg_scale) or cfg_scale < 1.0:
        raise ConfigError(f"cfg_scale must be a finite number >= 1.0 (1.0 = no guidance); got {cfg_scale}")
    if cfg_channels not in CFG_CHANNELS:
        raise ConfigError(f"unknown cfg_channels {cfg_channels!r}; choose one of {', '.join(CFG_CHANNELS)}")
    if cfg_channels == "first3" and channels < DIT_GUIDED_CHANNELS:
        raise ConfigError(
            f"cfg_channels='first3' guides the first {DIT_GUIDED_CHANNELS} channels and needs at least "
            f"{DIT_GUIDED_CHANNELS}; the input has {channels}: use cfg_channels='all'"
        )


def guided_model_output(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    timesteps: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg_scale: float,
    cfg_channels: str,
    null_label: int | None,
) -> torch.Tensor:
    """The model output at (x, timesteps, y), guided when ``cfg_scale`` > 1, in float32 (float64 for float64 x).

    With ``cfg_scale == 1`` the model runs once on the conditional batch only, so the result is exactly
    the unguided conditional output. Otherwise it runs once on ``[x, x]`` with labels
    ``[y, null_label]`` (``null_label`` is then required).
    The output keeps the model's layout (eps channels, then variance channels if any).
    """
    channels = x.shape[1]
    validate_guidance(cfg_scale, cfg_channels, channels)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if cfg_scale == 1.0:
        return model(x, timesteps, y).to(dtype)
    if null_label is None:
        raise ConfigError("guidance needs the null label: pass null_label or use a model with num_classes")
    doubled = model(
        torch.cat([x, x]), torch.cat([timesteps, timesteps]), torch.cat([y, torch.full_like(y, null_label)])
    ).to(dtype)
    cond, uncond = doubled.chunk(2)
    guided = channels if cfg_channels == "all" else DIT_GUIDED_CHANNELS
    eps = uncond[:, :guided] + cfg_scale * (cond[:, :guided] - uncond[:, :guided])
    # Channels past `guided` (unguided noise channels and the learned variance) stay conditional.
    return torch.cat([eps, cond[:, guided:]], dim=1)

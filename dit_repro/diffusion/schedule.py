"""Noise schedules and timestep respacing, in float64 (cast to the working dtype only when indexed).

The linear schedule is Ho et al.'s, scaled as in ADM/DiT so that it stays similar for any number of
steps; the cosine schedule is Nichol & Dhariwal's; the scaled-linear schedule is Stable Diffusion's
(linear in sqrt(beta)), on which U-ViT trains its ImageNet latent models. Respacing keeps a subset of the training timesteps
and recomputes the betas from ``alphas_cumprod`` (ADM's ``space_timesteps`` / ``SpacedDiffusion``), so
the marginals q(x_t | x_0) of the kept steps are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dit_repro.config import ConfigError

SCHEDULES = ("linear", "cosine", "scaled-linear")
"""Names accepted by :func:`beta_schedule`."""

LINEAR_BETA_START = 1e-4
"""First beta of the linear schedule at 1000 steps (Ho et al.)."""
LINEAR_BETA_END = 0.02
"""Last beta of the linear schedule at 1000 steps (Ho et al.)."""
COSINE_OFFSET = 0.008
"""Small offset s of the cosine schedule, which keeps beta_0 from being vanishingly small."""
SCALED_LINEAR_BETA_START = 0.00085
"""First beta of Stable Diffusion's scaled-linear schedule (U-ViT's ``stable_diffusion_beta_schedule``)."""
SCALED_LINEAR_BETA_END = 0.012
"""Last beta of Stable Diffusion's scaled-linear schedule."""
MAX_BETA = 0.999
"""Cap on the cosine schedule's betas: beta = 1 at the last step would make alpha_bar exactly 0."""


def beta_schedule(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """Betas of the named schedule as a float64 array of length ``num_timesteps``.

    ``linear``: ``linspace(1e-4 * s, 0.02 * s, T)`` with ``s = 1000 / T`` (ADM/DiT).
    ``cosine``: betas that discretize ``alpha_bar(u) = cos((u + 0.008) / 1.008 * pi / 2) ** 2``,
    capped at 0.999 (Nichol & Dhariwal). ``scaled-linear``: ``linspace(sqrt(0.00085), sqrt(0.012), T) ** 2``
    (Stable Diffusion; the same end points for any T, as U-ViT and diffusers write it).
    """
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(
            scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_timesteps, dtype=np.float64
        )
    if name == "scaled-linear":
        return np.linspace(
            SCALED_LINEAR_BETA_START**0.5, SCALED_LINEAR_BETA_END**0.5, num_timesteps, dtype=np.float64
        ) ** 2
    if name == "cosine":
        steps = np.arange(num_timesteps, dtype=np.float64)
        start, end = steps / num_timesteps, (steps + 1) / num_timesteps
        return np.minimum(1.0 - _cosine_alpha_bar(end) / _cosine_alpha_bar(start), MAX_BETA)
    raise ConfigError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def _cosine_alpha_bar(u: np.ndarray) -> np.ndarray:
    return np.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps of ``range(num_timesteps)``, evenly spaced from 0 to the last one.

    This is ADM's ``space_timesteps`` with a single section (what DiT's ``create_diffusion("250")``
    uses): a fractional stride ``(T - 1) / (steps - 1)`` accumulated and rounded half-to-even.
    """
    if not 1 <= steps <= num_timesteps:
        raise ConfigError(f"sampling steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return [0]
    stride = (num_timesteps - 1) / (steps - 1)
    taken, position = [], 0.0
    for _ in range(steps):
        # Accumulating the stride (not multiplying) reproduces ADM's rounding exactly.
        taken.append(round(position))
        position += stride
    return taken


def validate_timesteps(timesteps: Sequence[int], num_timesteps: int) -> list[int]:
    """The kept timesteps as a sorted list; refuses duplicates, an empty list and out-of-range steps."""
    kept = sorted(int(t) for t in timesteps)
    if not kept:
        raise ConfigError("respacing needs at least one timestep; got an empty list")
    if len(set(kept)) != len(kept):
        raise ConfigError(f"respaced timesteps must be distinct; got duplicates in {kept}")
    if kept[0] < 0 or kept[-1] >= num_timesteps:
        raise ConfigError(
            f"respaced timesteps must lie in [0, {num_timesteps - 1}]; got {kept[0]}..{kept[-1]}"
        )
    return kept


def respaced_betas(alphas_cumprod: np.ndarray, timesteps: Sequence[int]) -> np.ndarray:
    """Betas of the process that visits only ``timesteps`` (sorted) but keeps their ``alphas_cumprod``.

    ``beta'_i = 1 - alpha_bar[t_i] / alpha_bar[t_{i-1}]`` with ``alpha_bar[t_{-1}] = 1``.
    """
    kept = alphas_cumprod[np.asarray(timesteps, dtype=np.int64)]
    previous = np.concatenate([[1.0], kept[:-1]])
    return 1.0 - kept / previous

"""DPM-Solver++ as U-ViT samples with it: the deterministic sampler behind U-ViT's FID-50K.

U-ViT's evaluation calls DPM-Solver in its data-prediction form (DPM-Solver++, Lu et al., 2022)
with ``sample(steps=50, eps=1/N, T=1)`` and the defaults of that call: the "fast" method of
order 3, time-uniform points, no final denoising step. Concretely, for ``nfe`` model evaluations:

* the points are ``t_i = 1 - i (1 - 1/N) / nfe``, i = 0..nfe (continuous time, N training steps);
* the steps are singlestep updates of order 3, the last of order 2 or 1 so that the orders sum to
  ``nfe`` (:func:`fast_orders`); a step of order m goes from ``t_i`` to ``t_{i+m}`` and evaluates the
  model at ``t_i .. t_{i+m-1}``, placed in half-log-SNR lambda by ``r_j = (lambda(t_{i+j}) -
  lambda(t_i)) / h``;
* the discrete training process is read in continuous time by interpolating ``log alpha`` linearly
  between the training steps, which sit at ``t = (k + 1) / N``: the model sees training step
  ``k = t N - 1`` (fractional between grid points), so ``t = 1`` is the last training step and
  ``t = 1/N`` the first.

U-ViT's own models number their training steps 1..N and are called with ``t N``; this project's
(like DiT's) number them 0..N-1 and are called with ``t N - 1``: the same noise level either way.
The coefficients are computed once per step as float64 numbers (every image shares the times);
the state stays in the dtype of the starting noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from tqdm.auto import tqdm

from dit_repro.config import ConfigError

SOLVER_ORDER = 3
"""U-ViT's order: DPM-Solver-3 steps, with one lower-order step at the end to meet the NFE exactly."""


@dataclass(frozen=True)
class ContinuousTimeVP:
    """A discrete-time process read in continuous time t in [1/N, 1]: alpha_t, sigma_t, lambda_t."""

    log_alpha: np.ndarray
    """log(alpha) at the N training steps: ``0.5 * log(alphas_cumprod)``, float64."""

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: np.ndarray) -> ContinuousTimeVP:
        """The process of the training schedule's cumulative alphas (each in (0, 1), decreasing)."""
        values = np.asarray(alphas_cumprod, dtype=np.float64)
        if values.ndim != 1 or values.size < 2 or not np.all((values > 0) & (values < 1)):
            raise ConfigError("alphas_cumprod must be a 1-D array of at least 2 values in (0, 1)")
        if np.any(np.diff(values) >= 0):
            raise ConfigError("alphas_cumprod must decrease strictly: more noise at every later step")
        return cls(log_alpha=0.5 * np.log(values))

    @property
    def num_timesteps(self) -> int:
        """N, the training steps."""
        return int(self.log_alpha.size)

    def log_alpha_at(self, t: float) -> float:
        """log(alpha_t), linear between the training steps at t = (k + 1) / N."""
        first, last = 1.0 / self.num_timesteps, 1.0
        # A float64 rounding of the end points must not be read as leaving the grid.
        if not first - 1e-12 <= t <= last + 1e-12:
            raise ConfigError(f"continuous time {t} is outside [1/N, 1] = [{first}, 1]")
        return float(np.interp(t, self._grid, self.log_alpha))

    @cached_property
    def _grid(self) -> np.ndarray:
        # The training steps' times (k + 1) / N, built once: every coefficient of every step reads it.
        return np.arange(1, self.num_timesteps + 1, dtype=np.float64) / self.num_timesteps

    def alpha(self, t: float) -> float:
        """alpha_t = sqrt(alpha_bar)."""
        return math.exp(self.log_alpha_at(t))

    def sigma(self, t: float) -> float:
        """sigma_t = sqrt(1 - alpha_t^2), from expm1 so that it stays exact where alpha_t is near 1."""
        return math.sqrt(-math.expm1(2.0 * self.log_alpha_at(t)))

    def half_log_snr(self, t: float) -> float:
        """lambda_t = log(alpha_t / sigma_t)."""
        return self.log_alpha_at(t) - math.log(self.sigma(t))

    def model_timestep(self, t: float) -> float:
        """The (fractional) training step the model sees at time t: t N - 1."""
        return t * self.num_timesteps - 1.0


def fast_orders(nfe: int) -> list[int]:
    """Orders of DPM-Solver-fast's steps for ``nfe`` model evaluations (order 3; they sum to ``nfe``).

    ``nfe % 3 == 0``: 3, ..., 3, 2, 1; ``== 1``: 3, ..., 3, 1; ``== 2``: 3, ..., 3, 2. For 50: sixteen
    third-order steps and one second-order step.
    """
    if nfe < 1:
        raise ConfigError(f"DPM-Solver needs at least 1 model evaluation; got {nfe}")
    full = nfe // SOLVER_ORDER
    tail = {0: [2, 1], 1: [1], 2: [2]}[nfe % SOLVER_ORDER]
    return [SOLVER_ORDER] * (full - 1 if nfe % SOLVER_ORDER == 0 else full) + tail


def time_points(nfe: int, num_timesteps: int) -> np.ndarray:
    """The ``nfe + 1`` time-uniform points from t = 1 down to t = 1/N."""
    return np.linspace(1.0, 1.0 / num_timesteps, nfe + 1)


DataPrediction = Callable[[torch.Tensor, float], torch.Tensor]
"""x_0 predicted from (x_t, t)."""


def singlestep_update(
    x: torch.Tensor, data_prediction: DataPrediction, process: ContinuousTimeVP, times: Sequence[float]
) -> torch.Tensor:
    """One DPM-Solver++ step of order ``len(times) - 1`` (1 to 3) from ``times[0]`` to ``times[-1]``.

    The intermediate ``times`` are where the model is evaluated (U-ViT's "fast" method passes the
    grid points the step spans). Formulas: Lu et al., DPM-Solver++ (data prediction), singlestep
    solver of type "dpm_solver", as in the reference implementation U-ViT ships.
    """
    order = len(times) - 1
    if order not in (1, 2, 3):
        raise ConfigError(f"a DPM-Solver step has order 1, 2 or 3; got {order} (times {list(times)})")
    s, t = times[0], times[-1]
    lambda_s = process.half_log_snr(s)
    h = process.half_log_snr(t) - lambda_s
    sigma_s, alpha_t = process.sigma(s), process.alpha(t)
    phi_1 = math.expm1(-h)
    d_s = data_prediction(x, s)
    # First order (= DDIM with eta 0): x_t = sigma_t / sigma_s x_s - alpha_t (e^-h - 1) D_s.
    x_t = (process.sigma(t) / sigma_s) * x - (alpha_t * phi_1) * d_s
    if order == 1:
        return x_t
    s1 = times[1]
    r1 = (process.half_log_snr(s1) - lambda_s) / h
    x_s1 = (process.sigma(s1) / sigma_s) * x - (process.alpha(s1) * math.expm1(-r1 * h)) * d_s
    d_s1 = data_prediction(x_s1, s1)
    if order == 2:
        return x_t - (0.5 / r1 * alpha_t * phi_1) * (d_s1 - d_s)
    s2 = times[2]
    r2 = (process.half_log_snr(s2) - lambda_s) / h
    alpha_s2 = process.alpha(s2)
    phi_12 = math.expm1(-r2 * h)
    phi_22 = phi_12 / (r2 * h) + 1.0
    x_s2 = (
        (process.sigma(s2) / sigma_s) * x
        - (alpha_s2 * phi_12) * d_s
        + (r2 / r1 * alpha_s2 * phi_22) * (d_s1 - d_s)
    )
    d_s2 = data_prediction(x_s2, s2)
    phi_2 = phi_1 / h + 1.0
    return x_t + (alpha_t * phi_2 / r2) * (d_s2 - d_s)


EpsPrediction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Predicted noise from (x_t, per-image training timesteps, float)."""


def dpm_solver_sample(
    eps_prediction: EpsPrediction,
    x_T: torch.Tensor,
    alphas_cumprod: np.ndarray,
    nfe: int,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from ``x_T`` (t = 1) to t = 1/N with ``nfe`` model evaluations.

    ``eps_prediction(x, timesteps)`` is the (guided) noise prediction of a model trained on the
    process with these ``alphas_cumprod``; it is called exactly ``nfe`` times.
    """
    process = ContinuousTimeVP.from_alphas_cumprod(alphas_cumprod)
    times = time_points(nfe, process.num_timesteps)
    orders = fast_orders(nfe)
    batch = x_T.shape[0]
    bar = tqdm(total=nfe, disable=not progress, desc=f"dpm-solver x{batch}")

    def data_prediction(x: torch.Tensor, t: float) -> torch.Tensor:
        # float64 timesteps for a float64 state, so that an exact test model sees t without rounding.
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        timesteps = torch.full((batch,), process.model_timestep(t), device=x.device, dtype=dtype)
        eps = eps_prediction(x, timesteps).to(x.dtype)
        bar.update(1)
        return (x - process.sigma(t) * eps) / process.alpha(t)

    x, start = x_T, 0
    with torch.no_grad():
        for order in orders:
            x = singlestep_update(x, data_prediction, process, times[start : start + order + 1].tolist())
            start += order
    bar.close()
    return x

"""The Gaussian diffusion process: forward noising, the posterior, the model's reverse step, the loss.

The model predicts the noise eps and, with a learned sigma, a value v in [-1, 1] per element that
interpolates the log variance between the clipped posterior variance (v = -1) and beta (v = +1), as in
improved DDPM, ADM and DiT. The training loss is DiT's: MSE on eps plus, with a learned sigma, the
variational-bound term computed with the mean part of the output detached, so that the bound trains
only the variance (DiT's ``LossType.MSE``: the bound term is not rescaled).

All schedule arrays are float64 numpy arrays; they are cast to the working dtype only when indexed.
The working dtype is float64 for float64 inputs and float32 otherwise, so a bf16/fp16 model output
(autocast) never enters the loss or the sampler arithmetic in low precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dit_repro.config import ConfigError
from dit_repro.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl
from dit_repro.diffusion.schedule import beta_schedule, respaced_betas, space_timesteps, validate_timesteps

FIXED_VARIANCES = ("large", "small")
"""Variance of a model without learned sigma: ``large`` = beta_t (DiT's and ADM's default) or
``small`` = the posterior variance."""


@dataclass(frozen=True)
class PosteriorEstimate:
    """The model's reverse step p(x_{t-1} | x_t) and its prediction of x_0, all of x_t's shape."""

    mean: torch.Tensor
    """Mean of p(x_{t-1} | x_t): the posterior mean q(x_{t-1} | x_t, x_0 = pred_xstart)."""
    variance: torch.Tensor
    """Variance of p(x_{t-1} | x_t)."""
    log_variance: torch.Tensor
    """Log of ``variance`` (computed directly, not as log(variance), for a learned sigma)."""
    pred_xstart: torch.Tensor
    """The model's prediction of x_0, derived from its eps prediction."""


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (batch)."""
    return tensor.mean(dim=tuple(range(1, tensor.ndim)))


def working_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp32, bf16, fp16) is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _with_first(values: np.ndarray, first: float) -> np.ndarray:
    return np.concatenate([[first], values[1:]])


class GaussianDiffusion:
    """Schedule tables and the maths of one discrete Gaussian diffusion process.

    A respaced process (for sampling with fewer steps, see :meth:`respaced`) indexes its own steps
    0..num_timesteps-1 and hands the model the original training timesteps through
    :meth:`model_timesteps`.
    """

    def __init__(
        self,
        betas: np.ndarray | Sequence[float],
        *,
        learn_sigma: bool = True,
        fixed_variance: str = "large",
        timestep_map: Sequence[int] | None = None,
    ) -> None:
        """Precompute every table in float64.

        ``betas``: one beta per step, each in (0, 1]. ``learn_sigma``: the model returns 2*C channels
        (eps and v) instead of C (eps). ``fixed_variance``: ``large`` or ``small``, used when
        ``learn_sigma`` is False. ``timestep_map``: the training timestep the model sees at each step
        (identity by default; set by :meth:`respaced`).
        """
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ConfigError(f"betas must be a non-empty 1-D array; got shape {betas.shape}")
        if not ((betas > 0) & (betas <= 1)).all():
            raise ConfigError(f"every beta must lie in (0, 1]; got min {betas.min()}, max {betas.max()}")
        if fixed_variance not in FIXED_VARIANCES:
            raise ConfigError(
                f"unknown fixed_variance {fixed_variance!r}; choose one of {', '.join(FIXED_VARIANCES)}"
            )
        steps = betas.size
        mapping = np.arange(steps) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        if mapping.shape != (steps,):
            raise ConfigError(f"timestep_map needs one entry per step ({steps}); got shape {mapping.shape}")

        self.num_timesteps = steps
        """Number of steps of this process."""
        self.learn_sigma = learn_sigma
        """Whether the model output carries the variance interpolation v after eps."""
        self.fixed_variance = fixed_variance
        """Variance used without a learned sigma."""
        self.timestep_map = mapping.astype(np.int64)
        """Training timestep handed to the model at each step of this process."""

        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        self.log_betas = np.log(betas)

        # Posterior q(x_{t-1} | x_t, x_0).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        # The posterior variance is 0 at t = 0; its log is clipped to the value at t = 1. A one-step
        # process has no t = 1 and falls back to beta (that value is only read by the decoder term).
        floor = self.posterior_variance[1] if steps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(_with_first(self.posterior_variance, floor))
        # Fixed "large" variance is beta_t, with the first entry raised to the posterior variance at
        # t = 1 for a better decoder likelihood (ADM).
        if fixed_variance == "large":
            self.fixed_log_variance = np.log(_with_first(betas, floor))
        else:
            self.fixed_log_variance = self.posterior_log_variance_clipped
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ indexing

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The float64 table ``self.<name>`` indexed at ``t``, cast to ``like``'s dtype, shaped to broadcast over it.

        Tables are copied to each device once and cached.
        """
        key = (name, t.device)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = torch.from_numpy(getattr(self, name)).to(t.device)
        return table[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The training timesteps (long) the model must see at steps ``t`` of this process."""
        key = ("timestep_map", t.device)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = torch.from_numpy(self.timestep_map).to(t.device)
        return table[t]

    def sample_timesteps(
        self, batch: int, generator: torch.Generator, device: torch.device | str
    ) -> torch.Tensor:
        """Uniform training timesteps in [0, num_timesteps), drawn on the generator's device, moved to ``device``."""
        return torch.randint(
            0, self.num_timesteps, (batch,), generator=generator, device=generator.device
        ).to(device)

    def respaced(self, steps: int | Sequence[int]) -> GaussianDiffusion:
        """A process that visits only some steps of this one and keeps their alphas_cumprod.

        ``steps``: a count (evenly spaced, ADM's ``space_timesteps``) or the explicit steps to keep.
        """
        kept = (
            space_timesteps(self.num_timesteps, steps)
            if isinstance(steps, int)
            else validate_timesteps(steps, self.num_timesteps)
        )
        return GaussianDiffusion(
            respaced_betas(self.alphas_cumprod, kept),
            learn_sigma=self.learn_sigma,
            fixed_variance=self.fixed_variance,
            timestep_map=self.timestep_map[kept],
        )

    # ------------------------------------------------------------------ forward process

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, in the working dtype."""
        _check_batch(x0, t, noise)
        x0 = x0.to(working_dtype(x0))
        noise = noise.to(x0.dtype)
        return (
            self.extract("sqrt_alphas_cumprod", t, x0) * x0
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0); variances broadcast over x_t."""
        mean = (
            self.extract("posterior_mean_coef1", t, x_t) * x0
            + self.extract("posterior_mean_coef2", t, x_t) * x_t
        )
        return (
            mean,
            self.extract("posterior_variance", t, x_t),
            self.extract("posterior_log_variance_clipped", t, x_t),
        )

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 implied by x_t and a noise prediction: (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        """The noise implied by x_t and an x_0 prediction (inverse of :meth:`predict_xstart_from_eps`)."""
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    # ------------------------------------------------------------------ reverse process

    def split_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, v) for a learned sigma, (eps, None) otherwise; refuses an output of the wrong width."""
        channels = x_t.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if model_output.shape != (x_t.shape[0], expected, *x_t.shape[2:]):
            what = "eps and v" if self.learn_sigma else "eps"
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)}; with learn_sigma={self.learn_sigma} "
                f"an input of shape {tuple(x_t.shape)} needs {expected} channels ({what})"
            )
        if not self.learn_sigma:
            return model_output, None
        eps, v = torch.split(model_output, channels, dim=1)
        return eps, v

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *, clip_denoised: bool = False
    ) -> PosteriorEstimate:
        """The reverse step p(x_{t-1} | x_t) implied by a model output, in the working dtype of x_t.

        ``clip_denoised`` clamps the x_0 prediction to [-1, 1] (pixels); DiT samples latents without it.
        """
        dtype = working_dtype(x_t)
        x_t = x_t.to(dtype)
        eps, v = self.split_output(model_output.to(dtype), x_t)
        if v is None:
            log_variance = self.extract("fixed_log_variance", t, x_t).expand_as(x_t)
        else:
            min_log = self.extract("posterior_log_variance_clipped", t, x_t)
            max_log = self.extract("log_betas", t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return PosteriorEstimate(
            mean=mean, variance=torch.exp(log_variance), log_variance=log_variance, pred_xstart=pred_xstart
        )

    # ------------------------------------------------------------------ training loss

    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, torch.Tensor],
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses (shape (B,), float32 or float64) at the given timesteps and noise.

        Keys: ``mse`` (eps MSE), ``vb`` (learned sigma only: the variational-bound term in bits per
        dimension, through the variance only) and ``loss`` (= mse [+ vb]). Deterministic given ``t``
        and ``noise``; the model is called as ``model(x_t, model_timesteps(t), **model_kwargs)`` and
        may run under autocast: its output is cast up before any loss arithmetic.
        """
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, self.model_timesteps(t), **model_kwargs)
        # Leave the caller's autocast: the loss maths (exp, log, squares) stays in the working dtype.
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            x0 = x0.to(x_t.dtype)
            noise = noise.to(x_t.dtype)
            eps, v = self.split_output(model_output.to(x_t.dtype), x_t)
            terms = {"mse": mean_flat((noise - eps) ** 2)}
            if v is None:
                terms["loss"] = terms["mse"]
                return terms
            # The bound trains the variance only: the eps (mean) part enters it detached.
            frozen = torch.cat([eps.detach(), v], dim=1)
            terms["vb"] = self._vb_bits(frozen, x0, x_t, t)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def _vb_bits(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One term of the variational bound in bits/dim: decoder NLL at t = 0, KL to the posterior otherwise."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        estimate = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, estimate.mean, estimate.log_variance))
        decoder_nll = -mean_flat(
            discretized_gaussian_log_likelihood(
                x0, means=estimate.mean, log_scales=0.5 * estimate.log_variance
            )
        )
        return torch.where(t == 0, decoder_nll, kl) / math.log(2.0)


def _check_batch(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> None:
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape ({x0.shape[0]},) (one step per example); got {tuple(t.shape)}")
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}; got {tuple(noise.shape)}")


def create_diffusion(
    noise_schedule: str = "linear",
    num_timesteps: int = 1000,
    *,
    learn_sigma: bool = True,
    fixed_variance: str = "large",
) -> GaussianDiffusion:
    """The training diffusion of DiT: linear schedule over 1000 steps, learned sigma."""
    return GaussianDiffusion(
        beta_schedule(noise_schedule, num_timesteps), learn_sigma=learn_sigma, fixed_variance=fixed_variance
    )

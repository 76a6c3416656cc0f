"""Schedules, the forward process, the posterior, the likelihood terms and the training loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from dit_repro.config import ConfigError
from dit_repro.diffusion import (
    GaussianDiffusion,
    approx_standard_normal_cdf,
    beta_schedule,
    create_diffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
    space_timesteps,
)

T = 1000
F64_TOL = 1e-12
"""Relative tolerance for float64 maths checked against an independent float64 formula: a few
hundred float64 ulps (2.2e-16), room for differently ordered operations and sqrt/log rounding."""


class FixedOutput(nn.Module):
    """Stand-in model that ignores its input and returns a fixed (trainable) output."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = nn.Parameter(output.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.output


class TinyConv(nn.Module):
    """Stand-in with the model contract: a 1x1 convolution plus a label and timestep offset."""

    def __init__(self, channels: int = 4, num_classes: int = 3, learn_sigma: bool = True) -> None:
        super().__init__()
        self.in_channels = channels
        self.out_channels = 2 * channels if learn_sigma else channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.proj = nn.Conv2d(channels, self.out_channels, 1)
        self.label = nn.Embedding(num_classes + 1, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift = self.label(y) * (1 + t.float() / 1000)[:, None]
        return self.proj(x) + shift[:, :, None, None]


def _draw(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- schedules


@pytest.mark.equivalence
class TestSchedules:
    """Schedule tables against their definitions."""

    def test_linear_endpoints_and_monotonic(self) -> None:
        betas = beta_schedule("linear", T)
        assert betas.dtype == np.float64 and betas.shape == (T,)
        # np.linspace returns its endpoints exactly, and the ADM scale is exactly 1 at 1000 steps.
        assert betas[0] == 1e-4 and betas[-1] == 0.02
        assert np.all(np.diff(betas) > 0)
        abar = create_diffusion("linear").alphas_cumprod
        assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < abar[0] < 1

    def test_linear_scales_with_step_count(self) -> None:
        betas = beta_schedule("linear", 500)
        np.testing.assert_allclose([betas[0], betas[-1]], [2e-4, 0.04], rtol=F64_TOL)

    def test_cosine_matches_closed_form_alpha_bar(self) -> None:
        diffusion = create_diffusion("cosine")
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        expected = f(np.arange(1, T + 1) / T) / f(0.0)
        capped = diffusion.betas >= 0.999
        # Only the last steps hit the cap (alpha_bar reaches 0 at u = 1); before them the product telescopes.
        assert capped[-1] and capped.sum() < 5
        first_capped = int(np.argmax(capped))
        np.testing.assert_allclose(
            diffusion.alphas_cumprod[:first_capped], expected[:first_capped], rtol=1e-9
        )
        assert np.all(np.diff(diffusion.alphas_cumprod) < 0)

    def test_unknown_schedule_names_the_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="linear, cosine"):
            beta_schedule("quadratic")

    def test_space_timesteps_matches_adm_even_spacing(self) -> None:
        kept = space_timesteps(T, 250)
        # ADM's single-section spacing: round(i * 999 / 249); no value lands on .5 for these sizes.
        assert kept == np.round(np.arange(250) * 999 / 249).astype(int).tolist()
        assert kept[0] == 0 and kept[-1] == T - 1 and len(set(kept)) == 250
        assert space_timesteps(T, T) == list(range(T))
        assert space_timesteps(T, 1) == [0]

    @pytest.mark.parametrize("steps", [0, -3, T + 1])
    def test_bad_step_counts_name_the_valid_range(self, steps: int) -> None:
        with pytest.raises(ConfigError, match=f"between 1 and {T}"):
            space_timesteps(T, steps)

    def test_respacing_keeps_alphas_cumprod(self) -> None:
        diffusion = create_diffusion()
        kept = space_timesteps(T, 250)
        respaced = diffusion.respaced(250)
        assert respaced.num_timesteps == 250
        assert respaced.timestep_map.tolist() == kept
        np.testing.assert_allclose(respaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=F64_TOL)
        # Respacing twice composes the maps.
        twice = respaced.respaced([0, 10, 249])
        assert twice.timestep_map.tolist() == [kept[0], kept[10], kept[249]]

    def test_unknown_fixed_variance_names_the_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="large, small"):
            create_diffusion(learn_sigma=False, fixed_variance="medium")


# ---------------------------------------------------------------- forward process and posterior


@pytest.mark.equivalence
class TestForwardAndPosterior:
    """q(x_t | x_0) and q(x_{t-1} | x_t, x_0) against their closed forms in float64."""

    diffusion = create_diffusion()

    def test_q_sample_closed_form(self) -> None:
        x0, noise = _draw((5, 4, 3, 3), 0), _draw((5, 4, 3, 3), 1)
        t = torch.tensor([0, 1, 250, 998, 999])
        abar = np.array([np.prod(1.0 - self.diffusion.betas[: k + 1]) for k in t.tolist()])[
            :, None, None, None
        ]
        expected = np.sqrt(abar) * x0.numpy() + np.sqrt(1.0 - abar) * noise.numpy()
        got = self.diffusion.q_sample(x0, t, noise)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, rtol=F64_TOL, atol=1e-15)

    def test_q_sample_low_precision_input_is_computed_in_float32(self) -> None:
        x0 = _draw((2, 4, 2, 2), 0, torch.bfloat16)
        out = self.diffusion.q_sample(x0, torch.tensor([3, 700]), _draw((2, 4, 2, 2), 1, torch.float32))
        assert out.dtype == torch.float32

    def test_posterior_matches_gaussian_conditioning(self) -> None:
        x0, x_t = _draw((4, 2, 2, 2), 2), _draw((4, 2, 2, 2), 3)
        t = torch.tensor([1, 10, 500, 999])
        mean, var, log_var = self.diffusion.q_posterior_mean_variance(x0, x_t, t)
        # Product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0): precisions add, means are precision-weighted.
        betas = self.diffusion.betas[t.numpy()][:, None, None, None]
        abar_prev = np.array([np.prod(1.0 - self.diffusion.betas[:k]) for k in t.tolist()])[
            :, None, None, None
        ]
        precision = 1.0 / (1.0 - abar_prev) + (1.0 - betas) / betas
        expected_var = 1.0 / precision
        expected_mean = expected_var * (
            np.sqrt(abar_prev) * x0.numpy() / (1.0 - abar_prev) + np.sqrt(1.0 - betas) * x_t.numpy() / betas
        )
        np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(var.numpy(), expected_var, rtol=1e-9)
        np.testing.assert_allclose(log_var.numpy(), np.log(expected_var), rtol=1e-9)

    def test_eps_and_xstart_predictions_invert_q_sample(self) -> None:
        x0, noise = _draw((3, 2, 4, 4), 4), _draw((3, 2, 4, 4), 5)
        t = torch.tensor([0, 400, 999])
        x_t = self.diffusion.q_sample(x0, t, noise)
        # 1/sqrt(abar) at t = 999 is about 160: that is the float64 error amplification.
        torch.testing.assert_close(
            self.diffusion.predict_xstart_from_eps(x_t, t, noise), x0, rtol=0, atol=1e-12
        )
        torch.testing.assert_close(
            self.diffusion.predict_eps_from_xstart(x_t, t, x0), noise, rtol=0, atol=1e-12
        )


# ---------------------------------------------------------------- likelihood terms


@pytest.mark.equivalence
class TestLikelihoodTerms:
    """The KL and the decoder likelihood against closed forms and scipy."""

    def test_normal_kl_against_scipy_integration(self) -> None:
        for m1, v1, m2, v2 in [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 1e-2, 0.9, 3e-2)]:
            p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
            reference, _ = integrate.quad(
                lambda x, p=p, q=q: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)),
                m1 - 12 * v1**0.5,
                m1 + 12 * v1**0.5,
            )
            got = normal_kl(
                *(torch.tensor(v, dtype=torch.float64) for v in (m1, math.log(v1), m2, math.log(v2)))
            )
            assert got.item() == pytest.approx(reference, rel=1e-8, abs=1e-12)

    def test_normal_kl_closed_form_broadcast(self) -> None:
        m1, m2 = _draw((3, 5), 6), _draw((3, 5), 7)
        lv1, lv2 = _draw((3, 5), 8), _draw((3, 5), 9)
        s1, s2 = torch.exp(0.5 * lv1), torch.exp(0.5 * lv2)
        expected = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
        torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=F64_TOL, atol=1e-14)

    def test_tanh_cdf_is_within_its_known_error_of_the_normal_cdf(self) -> None:
        grid = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
        error = (
            (approx_standard_normal_cdf(grid) - torch.from_numpy(stats.norm.cdf(grid.numpy()))).abs().max()
        )
        print(f"tanh CDF approximation: max abs error {error.item():.3e}")
        # The tanh approximation's worst-case absolute error is about 1.8e-4 (near |x| = 2.6).
        assert error < 1.8e-4

    def test_discretized_likelihood_normalizes_over_the_256_levels(self) -> None:
        levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
        for mean, log_scale in [(0.0, math.log(0.3)), (0.7, math.log(0.02)), (-0.95, math.log(0.1))]:
            log_p = discretized_gaussian_log_likelihood(
                levels, means=torch.full_like(levels, mean), log_scales=torch.full_like(levels, log_scale)
            )
            # Adjacent bins share their edges, so the masses telescope to exactly one (any monotone CDF).
            assert torch.exp(log_p).sum().item() == pytest.approx(1.0, abs=1e-9)

    def test_discretized_likelihood_against_the_exact_normal(self) -> None:
        levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
        mean, scale = 0.1, 0.05
        log_p = discretized_gaussian_log_likelihood(
            levels, means=torch.full_like(levels, mean), log_scales=torch.full_like(levels, math.log(scale))
        )
        x = levels.numpy()
        upper = np.where(x > 0.999, 1.0, stats.norm.cdf(x + 1 / 255, mean, scale))
        lower = np.where(x < -0.999, 0.0, stats.norm.cdf(x - 1 / 255, mean, scale))
        exact = upper - lower
        # Each bin mass is a difference of two CDF values, each off by at most 1.8e-4 (the tanh bound).
        bound = 2 * 1.8e-4
        big = exact > 1e-2
        np.testing.assert_array_less(np.abs(np.exp(log_p.numpy()) - exact), bound)
        np.testing.assert_array_less(
            np.abs(log_p.numpy()[big] - np.log(exact[big])), bound / exact[big] * 1.01
        )

    def test_shape_mismatch_is_refused(self) -> None:
        with pytest.raises(ValueError, match="one shape"):
            discretized_gaussian_log_likelihood(
                torch.zeros(2), means=torch.zeros(3), log_scales=torch.zeros(2)
            )


# ---------------------------------------------------------------- training loss


@pytest.mark.equivalence
class TestTrainingLosses:
    """DiT's hybrid loss: eps MSE plus the variational bound through the variance only."""

    shape = (4, 4, 3, 3)

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x0 = _draw(self.shape, 10, torch.float32).clamp(-1, 1)
        noise = _draw(self.shape, 11, torch.float32)
        t = torch.tensor([0, 1, 500, 999])
        return x0, t, noise, {"y": torch.tensor([0, 1, 2, 0])}

    def test_fixed_variance_loss_is_the_eps_mse(self) -> None:
        diffusion = create_diffusion(learn_sigma=False)
        x0, t, noise, kwargs = self._inputs()
        model = FixedOutput(_draw(self.shape, 12, torch.float32))
        terms = diffusion.training_losses(model, x0, t, kwargs, noise)
        assert set(terms) == {"loss", "mse"}
        expected = ((noise - model.output.detach()) ** 2).mean(dim=(1, 2, 3))
        assert torch.equal(terms["mse"], expected)
        assert torch.equal(terms["loss"], terms["mse"])

    def test_vb_gradient_reaches_only_the_variance_channels(self) -> None:
        diffusion = create_diffusion()
        x0, t, noise, kwargs = self._inputs()
        model = FixedOutput(0.5 * _draw((4, 8, 3, 3), 13, torch.float32))
        terms = diffusion.training_losses(model, x0, t, kwargs, noise)
        assert set(terms) == {"loss", "mse", "vb"}
        torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"], rtol=0, atol=0)

        (vb_grad,) = torch.autograd.grad(terms["vb"].sum(), model.output, retain_graph=True)
        assert torch.count_nonzero(vb_grad[:, :4]) == 0  # the mean (eps) part is detached
        assert torch.all(vb_grad[:, 4:].abs().sum(dim=(1, 2, 3)) > 0)  # every example trains its variance
        (mse_grad,) = torch.autograd.grad(terms["mse"].sum(), model.output)
        assert torch.count_nonzero(mse_grad[:, 4:]) == 0
        assert torch.all(mse_grad[:, :4].abs().sum(dim=(1, 2, 3)) > 0)

    @pytest.mark.parametrize("num_timesteps", [T, 250])
    def test_vb_is_the_unscaled_kl_in_bits(self, num_timesteps: int) -> None:
        diffusion = create_diffusion(num_timesteps=num_timesteps)
        x0, noise = _draw(self.shape, 14).clamp(-1, 1), _draw(self.shape, 15)
        t = torch.tensor([1, 2, num_timesteps // 2, num_timesteps - 1])
        betas = diffusion.betas[t.numpy()]
        post_var = diffusion.posterior_variance[t.numpy()]
        for v, expected_nats in [
            (-1.0, np.zeros(4)),  # exact noise and the true posterior variance: KL = 0
            (1.0, 0.5 * (-1.0 + np.log(betas / post_var) + post_var / betas)),  # variance beta instead
        ]:
            output = torch.cat([noise, torch.full(self.shape, v, dtype=torch.float64)], dim=1)
            terms = diffusion.training_losses(
                FixedOutput(output), x0, t, {"y": torch.zeros(4, dtype=torch.long)}, noise
            )
            # DiT's LossType.MSE: no num_timesteps / 1000 factor, nats converted to bits.
            np.testing.assert_allclose(
                terms["vb"].detach().numpy(), expected_nats / math.log(2), rtol=1e-9, atol=1e-12
            )

    def test_vb_at_t0_is_the_decoder_nll(self) -> None:
        diffusion = create_diffusion()
        levels = torch.randperm(256, generator=torch.Generator().manual_seed(0))[:36]
        x0 = torch.linspace(-1, 1, 256, dtype=torch.float64)[levels].view(1, 4, 3, 3)
        noise = _draw((1, 4, 3, 3), 16)
        t = torch.tensor([0])
        output = torch.cat([noise, torch.zeros_like(noise)], dim=1)
        vb = diffusion.training_losses(
            FixedOutput(output), x0, t, {"y": torch.zeros(1, dtype=torch.long)}, noise
        )["vb"]
        estimate = diffusion.p_mean_variance(output, diffusion.q_sample(x0, t, noise), t)
        expected = -discretized_gaussian_log_likelihood(
            x0, means=estimate.mean, log_scales=0.5 * estimate.log_variance
        ).mean() / math.log(2)
        torch.testing.assert_close(vb.detach(), expected.view(1), rtol=F64_TOL, atol=0)

    def test_low_precision_output_gives_a_float32_loss(self) -> None:
        diffusion = create_diffusion()
        x0, t, noise, kwargs = self._inputs()
        out_bf16 = _draw((4, 8, 3, 3), 17, torch.float32).to(torch.bfloat16)
        low = diffusion.training_losses(lambda x, t, y: out_bf16, x0, t, kwargs, noise)
        high = diffusion.training_losses(lambda x, t, y: out_bf16.float(), x0, t, kwargs, noise)
        assert low["loss"].dtype == torch.float32
        assert torch.equal(low["loss"], high["loss"])
        model = TinyConv()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = diffusion.training_losses(model, x0, t, kwargs, noise)
        assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"]).all()

    def test_deterministic_given_t_and_noise(self) -> None:
        diffusion = create_diffusion()
        model = TinyConv()
        x0, _, _, kwargs = self._inputs()
        draws = []
        for seed in (0, 0, 1):
            generator = torch.Generator().manual_seed(seed)
            t = diffusion.sample_timesteps(4, generator, "cpu")
            noise = torch.randn(self.shape, generator=generator)
            draws.append((t, diffusion.training_losses(model, x0, t, kwargs, noise)["loss"]))
        assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
        assert not torch.equal(draws[0][1], draws[2][1])
        assert draws[0][0].dtype == torch.long and 0 <= draws[0][0].min() and draws[0][0].max() < T

    def test_model_sees_the_original_timesteps_of_a_respaced_process(self) -> None:
        seen = []
        respaced = create_diffusion(learn_sigma=False).respaced(250)
        x0, _, noise, kwargs = self._inputs()

        def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            seen.append(t)
            return torch.zeros_like(x)

        respaced.training_losses(model, x0, torch.tensor([0, 1, 248, 249]), kwargs, noise)
        assert seen[0].tolist() == [0, 4, 995, 999]

    def test_wrong_output_width_is_refused(self) -> None:
        x0, t, noise, kwargs = self._inputs()
        model = FixedOutput(_draw(self.shape, 18, torch.float32))
        with pytest.raises(ValueError, match="needs 8 channels"):
            create_diffusion().training_losses(model, x0, t, kwargs, noise)

    def test_bad_shapes_are_refused(self) -> None:
        x0, t, noise, _ = self._inputs()
        with pytest.raises(ValueError, match="t must have shape"):
            create_diffusion().q_sample(x0, t[:2], noise)
        with pytest.raises(ValueError, match="noise must have"):
            create_diffusion().q_sample(x0, t, noise[:2])

    def test_invalid_betas_are_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            GaussianDiffusion(np.array([0.1, 0.0, 0.2]))

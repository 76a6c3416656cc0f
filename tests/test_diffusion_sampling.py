"""DDPM/DDIM samplers, classifier-free guidance, seeding, and agreement with diffusers' schedulers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from dit_repro.config import ConfigError
from dit_repro.diffusion import (
    GaussianDiffusion,
    create_diffusion,
    ddim_step,
    ddpm_step,
    guided_model_output,
    sample,
    space_timesteps,
)

T = 1000
C, H, W = 4, 3, 3
NUM_CLASSES = 3


class PointOracle(nn.Module):
    """The optimal noise predictor when the data of each label is a single point x0[label].

    q(x_t | x_0) is then all there is: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) exactly, so a
    correct sampler must land on x0. The variance channels (learned sigma) are 0 (v = 0).
    """

    def __init__(self, diffusion: GaussianDiffusion, points: torch.Tensor, learn_sigma: bool) -> None:
        super().__init__()
        self.num_classes = points.shape[0] - 1
        self.learn_sigma = learn_sigma
        self.register_buffer("points", points)
        self.register_buffer("abar", torch.from_numpy(diffusion.alphas_cumprod))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (x - abar.sqrt() * self.points[y].to(x.dtype)) / (1 - abar).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if self.learn_sigma else eps


class LabelAffine(nn.Module):
    """Elementwise stand-in (exactly batch-independent): out[:, k] = x[:, k % C] * a[y, k] + b[y, k] * t/1000."""

    def __init__(self, learn_sigma: bool = True, nan_for_null: bool = False) -> None:
        super().__init__()
        out = 2 * C if learn_sigma else C
        generator = torch.Generator().manual_seed(0)
        self.num_classes = NUM_CLASSES
        self.learn_sigma = learn_sigma
        self.nan_for_null = nan_for_null
        self.a = nn.Parameter(0.1 * torch.randn(NUM_CLASSES + 1, out, generator=generator))
        self.b = nn.Parameter(torch.randn(NUM_CLASSES + 1, out, generator=generator))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((t.clone(), y.clone()))
        source = x.repeat(1, self.a.shape[1] // C, 1, 1)
        out = source * self.a[y][:, :, None, None] + (self.b[y] * t[:, None] / 1000)[:, :, None, None]
        # v must stay in [-1, 1]: squash the variance channels.
        out = torch.cat([out[:, :C], torch.tanh(out[:, C:])], dim=1)
        if self.nan_for_null:
            out = torch.where(
                (y == NUM_CLASSES)[:, None, None, None], torch.full_like(out, float("nan")), out
            )
        return out


def _labels(n: int) -> torch.Tensor:
    return torch.arange(n) % NUM_CLASSES


def _run(model: nn.Module, n: int = 3, **kwargs) -> tuple[torch.Tensor, dict]:
    kwargs.setdefault("steps", 20)
    return sample(
        create_diffusion(learn_sigma=model.learn_sigma), model.eval(), (n, C, H, W), _labels(n), **kwargs
    )


# ---------------------------------------------------------------- samplers recover a point distribution


@pytest.mark.equivalence
class TestOracleRecovery:
    """With the exact eps of a one-point distribution both samplers must return that point."""

    # One x_0 prediction carries float64 rounding (2.2e-16 * |x_t|, |x_t| < 5 here) amplified by at
    # most 1/sqrt(abar) < 160, i.e. < 2e-13; the last step maps x_0 to itself (coef1 = 1, coef2 = 0).
    TOL = 1e-12

    @pytest.mark.parametrize("learn_sigma", [True, False])
    @pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
    def test_recovers_x0(self, sampler: str, eta: float, learn_sigma: bool) -> None:
        diffusion = create_diffusion(learn_sigma=learn_sigma)
        points = torch.randn(
            NUM_CLASSES + 1, C, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        )
        model = PointOracle(diffusion, points, learn_sigma).eval()
        y = _labels(4)
        x_T = torch.randn(4, C, H, W, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        out, record = sample(
            diffusion,
            model,
            x_T.shape,
            y,
            sampler=sampler,
            eta=eta,
            steps=50,
            initial_noise=x_T,
            generator=torch.Generator().manual_seed(3),
        )
        error = (out - points[y]).abs().max().item()
        print(f"{sampler} eta={eta} learn_sigma={learn_sigma}: max |x - x0| = {error:.2e}")
        assert out.dtype == torch.float64 and error < self.TOL
        assert record["sampler"] == sampler and record["steps"] == 50


# ---------------------------------------------------------------- respacing


class TestRespacing:
    """The sampler takes the requested number of steps at ADM's timesteps."""

    @pytest.mark.parametrize("steps", [1, 7, 250])
    @pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
    def test_model_called_once_per_step_at_the_spaced_timesteps(self, sampler: str, steps: int) -> None:
        model = LabelAffine()
        _, record = _run(model, n=2, sampler=sampler, steps=steps)
        assert record["steps"] == steps and len(model.calls) == steps
        seen = [t[0].item() for t, _ in model.calls]
        assert seen == space_timesteps(T, steps)[::-1]

    @pytest.mark.parametrize("steps", [0, T + 1])
    def test_bad_step_counts_name_the_valid_range(self, steps: int) -> None:
        with pytest.raises(ConfigError, match=f"between 1 and {T}"):
            _run(LabelAffine(), steps=steps)


# ---------------------------------------------------------------- guidance


@pytest.mark.equivalence
class TestGuidance:
    """Classifier-free guidance: which channels are guided and what scale 1 means."""

    def _halves(self, model: LabelAffine, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, NUM_CLASSES))
        return cond, uncond

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randn(3, C, H, W, generator=torch.Generator().manual_seed(4))
        return x, torch.tensor([999, 500, 3]), _labels(3)

    def test_all_guides_every_noise_channel_and_keeps_the_conditional_variance(self) -> None:
        model = LabelAffine()
        x, t, y = self._inputs()
        out = guided_model_output(model, x, t, y, cfg_scale=4.0, cfg_channels="all", null_label=NUM_CLASSES)
        cond, uncond = self._halves(model, x, t, y)
        assert torch.equal(out[:, :C], uncond[:, :C] + 4.0 * (cond[:, :C] - uncond[:, :C]))
        assert not torch.equal(out[:, :C], cond[:, :C])
        assert torch.equal(out[:, C:], cond[:, C:])

    def test_first3_is_dits_forward_with_cfg(self) -> None:
        model = LabelAffine()
        x, t, y = self._inputs()
        out = guided_model_output(
            model, x, t, y, cfg_scale=4.0, cfg_channels="first3", null_label=NUM_CLASSES
        )
        cond, uncond = self._halves(model, x, t, y)
        assert torch.equal(out[:, 3], cond[:, 3])  # the fourth latent channel stays conditional
        assert not torch.equal(out[:, :3], cond[:, :3])
        # DiT's forward_with_cfg on the doubled batch: guide model_out[:, :3], keep the rest.
        doubled = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, NUM_CLASSES)]))
        eps, rest = doubled[:, :3], doubled[:, 3:]
        cond_eps, uncond_eps = eps.chunk(2)
        dit = torch.cat([uncond_eps + 4.0 * (cond_eps - uncond_eps), rest[:3]], dim=1)
        assert torch.equal(out, dit)

    def test_scale_one_is_exactly_the_conditional_model(self) -> None:
        model = LabelAffine(nan_for_null=True)
        x, t, y = self._inputs()
        out = guided_model_output(model, x, t, y, cfg_scale=1.0, cfg_channels="all", null_label=NUM_CLASSES)
        assert torch.equal(out, model(x, t, y))
        # Whole sampling runs: a model that is NaN on the null label changes nothing at scale 1 ...
        plain, record = _run(LabelAffine(), sampler="ddpm", generator=torch.Generator().manual_seed(0))
        poisoned, _ = _run(
            LabelAffine(nan_for_null=True), sampler="ddpm", generator=torch.Generator().manual_seed(0)
        )
        assert torch.equal(plain, poisoned) and torch.isfinite(plain).all()
        assert record["guided"] is False and record["cfg_scale"] == 1.0
        # ... and poisons the samples once guidance runs the null branch.
        guided, record = _run(LabelAffine(nan_for_null=True), cfg_scale=1.5)
        assert torch.isnan(guided).all() and record["guided"] is True and record["cfg_channels"] == "all"

    def test_guided_sampling_doubles_the_batch_with_null_labels(self) -> None:
        model = LabelAffine()
        _, record = _run(model, n=2, cfg_scale=2.0, cfg_channels="first3", steps=3)
        t, y = model.calls[0]
        assert y.tolist() == [0, 1, NUM_CLASSES, NUM_CLASSES] and t.shape == (4,)
        assert record["cfg_channels"] == "first3"

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"cfg_channels": "first4"}, "all, first3"),
            ({"cfg_scale": 0.5}, ">= 1.0"),
            ({"cfg_scale": float("nan")}, ">= 1.0"),
        ],
    )
    def test_bad_guidance_names_the_valid_values(self, kwargs: dict, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            _run(LabelAffine(), **kwargs)

    def test_first3_needs_three_channels(self) -> None:
        model = lambda x, t, y: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731
        with pytest.raises(ConfigError, match="cfg_channels='all'"):
            sample(
                create_diffusion(),
                model,
                (1, 1, 2, 2),
                torch.zeros(1, dtype=torch.long),
                cfg_scale=2.0,
                cfg_channels="first3",
                null_label=3,
            )


# ---------------------------------------------------------------- seeding


class TestSeeding:
    """Same seed, same samples; per-image generators make image i depend on seed i only."""

    @pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.5)])
    def test_same_seed_same_samples_other_seed_different(self, sampler: str, eta: float) -> None:
        runs = [
            _run(
                LabelAffine(),
                sampler=sampler,
                eta=eta,
                cfg_scale=1.5,
                generator=torch.Generator().manual_seed(s),
            )[0]
            for s in (7, 7, 8)
        ]
        assert torch.equal(runs[0], runs[1])
        assert not torch.allclose(runs[0], runs[2])

    def test_per_image_generators_make_images_independent_of_the_batch(self) -> None:
        seeds, labels = [11, 12, 13], torch.tensor([0, 1, 2])

        def draw(indices: list[int]) -> torch.Tensor:
            gens = [torch.Generator().manual_seed(seeds[i]) for i in indices]
            out, _ = sample(
                create_diffusion(),
                LabelAffine().eval(),
                (len(indices), C, H, W),
                labels[indices],
                steps=10,
                cfg_scale=2.0,
                generator=gens,
            )
            return out

        batch = draw([0, 1, 2])
        assert torch.equal(draw([1]), batch[1:2])
        assert torch.equal(draw([2, 0]), batch[[2, 0]])

    def test_initial_noise_replaces_the_first_draw(self) -> None:
        x_T = torch.randn(3, C, H, W, generator=torch.Generator().manual_seed(5))
        drawn, _ = _run(LabelAffine(), sampler="ddim", generator=torch.Generator().manual_seed(5))
        given, _ = _run(LabelAffine(), sampler="ddim", initial_noise=x_T)
        assert torch.equal(drawn, given)

    def test_generator_count_must_match_the_batch(self) -> None:
        with pytest.raises(ConfigError, match="one per image"):
            _run(LabelAffine(), generator=[torch.Generator()])


# ---------------------------------------------------------------- sampler input checks and precision


class TestSamplerInputs:
    """Refusals name what would be accepted; autocast keeps the update arithmetic in float32."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"sampler": "euler"}, "ddpm, ddim"),
            ({"sampler": "ddpm", "eta": 1.0}, "ddim sampler only"),
            ({"sampler": "ddim", "eta": -1.0}, ">= 0"),
            ({"initial_noise": torch.zeros(2, C, H, W)}, "initial_noise must have shape"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            _run(LabelAffine(), **kwargs)

    def test_training_mode_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="model.eval"):
            sample(create_diffusion(), LabelAffine(), (1, C, H, W), torch.zeros(1, dtype=torch.long), steps=2)

    def test_labels_must_match_the_batch(self) -> None:
        with pytest.raises(ConfigError, match="one label per image"):
            sample(create_diffusion(), LabelAffine().eval(), (2, C, H, W), torch.zeros(3, dtype=torch.long))

    def test_autocast_samples_stay_float32(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = _run(LabelAffine(), steps=3, cfg_scale=1.5, progress=True)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---------------------------------------------------------------- diffusers agreement


@pytest.mark.equivalence
class TestDiffusersAgreement:
    """The schedule and single steps agree with diffusers' schedulers."""

    @pytest.mark.parametrize(
        ("ours_name", "theirs_name", "beta_start", "beta_end"),
        [("linear", "linear", 1e-4, 0.02), ("scaled-linear", "scaled_linear", 0.00085, 0.012)],
    )
    def test_alphas_cumprod_matches_ddpm_scheduler(
        self, ours_name: str, theirs_name: str, beta_start: float, beta_end: float
    ) -> None:
        ours = create_diffusion(noise_schedule=ours_name).alphas_cumprod
        scheduler = DDPMScheduler(
            beta_schedule=theirs_name, beta_start=beta_start, beta_end=beta_end, num_train_timesteps=T
        )
        theirs = scheduler.alphas_cumprod.double().numpy()
        rel = np.abs(theirs / ours - 1)
        ulps = np.abs(theirs - ours) / np.spacing(ours.astype(np.float32)).astype(np.float64)
        print(
            f"{ours_name} alphas_cumprod vs diffusers (float32): max rel {rel.max():.2e}, "
            f"max {ulps.max():.1f} float32 ulps"
        )
        # diffusers computes in float32: each of the T subtractions 1 - beta and T products rounds once
        # (relative error <= u = 2**-24 each), so to first order |theirs / ours - 1| <= 2 T u; the
        # scaled-linear betas are a rounded square of a rounded linspace (<= 3u relative on betas
        # <= beta_end), which adds at most 3 u beta_end per step.
        assert rel.max() <= (2 + 3 * beta_end) * T * 2.0**-24

    def _float64_scheduler(self, scheduler, diffusion: GaussianDiffusion):
        # Hand diffusers our float64 tables so that the comparison isolates the update formula.
        scheduler.alphas_cumprod = torch.from_numpy(diffusion.alphas_cumprod)
        scheduler.betas = torch.from_numpy(diffusion.betas)
        scheduler.alphas = 1.0 - scheduler.betas
        return scheduler

    @pytest.mark.parametrize("eta", [0.0, 1.0])
    def test_ddim_step_matches_ddim_scheduler(self, eta: float) -> None:
        diffusion = create_diffusion(learn_sigma=False)
        scheduler = self._float64_scheduler(
            DDIMScheduler(
                beta_schedule="linear",
                beta_start=1e-4,
                beta_end=0.02,
                num_train_timesteps=T,
                clip_sample=False,
                set_alpha_to_one=True,
                steps_offset=0,
                timestep_spacing="leading",
            ),
            diffusion,
        )
        scheduler.set_timesteps(10)
        assert scheduler.timesteps.tolist() == list(range(900, -1, -100))
        process = diffusion.respaced(list(range(0, T, 100)))  # the same 10 steps
        generator = torch.Generator().manual_seed(6)
        x = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
        for index, timestep in enumerate(scheduler.timesteps.tolist()):
            eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            theirs = scheduler.step(
                eps, timestep, x, eta=eta, variance_noise=noise if eta else None
            ).prev_sample
            t = torch.full((2,), 9 - index)
            ours = ddim_step(process, eps, x, t, eta=eta, noise=noise)
            # float64 tables that agree to ~1e-16 and differently ordered float64 arithmetic.
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
            x = ours

    def test_learned_range_ddpm_step_matches_ddpm_scheduler_on_adm_spacing(self) -> None:
        diffusion = create_diffusion(learn_sigma=True)
        kept = space_timesteps(T, 25)
        scheduler = self._float64_scheduler(
            DDPMScheduler(
                beta_schedule="linear",
                beta_start=1e-4,
                beta_end=0.02,
                num_train_timesteps=T,
                variance_type="learned_range",
                clip_sample=False,
            ),
            diffusion,
        )
        scheduler.set_timesteps(timesteps=kept[::-1])
        process = diffusion.respaced(kept)
        generator = torch.Generator().manual_seed(7)
        x = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
        # The last step (t = 0) is excluded: there the clipped log variance differs by design and is unused.
        for index in range(len(kept) - 1, 0, -1):
            output = torch.cat(
                [
                    torch.randn(x.shape, generator=generator, dtype=torch.float64),
                    torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1,
                ],
                dim=1,
            )
            state = generator.get_state()
            theirs = scheduler.step(output, kept[index], x, generator=generator).prev_sample
            generator.set_state(state)
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            ours = ddpm_step(process, output, x, torch.full((2,), index), noise)
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
            x = ours

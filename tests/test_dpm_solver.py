"""DPM-Solver++ as U-ViT runs it: step orders, evaluation times, exactness, DDIM at first order, local order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dit_repro.config import ConfigError
from dit_repro.diffusion import create_diffusion, ddim_step, sample
from dit_repro.diffusion.dpm_solver import (
    ContinuousTimeVP,
    dpm_solver_sample,
    fast_orders,
    singlestep_update,
    time_points,
)

T = 1000
C, H, W = 4, 3, 3
NUM_CLASSES = 3
EPS64 = float(np.finfo(np.float64).eps)


def _process() -> ContinuousTimeVP:
    return ContinuousTimeVP.from_alphas_cumprod(create_diffusion().alphas_cumprod)


def _exact_flow(process: ContinuousTimeVP, x: torch.Tensor, mean: torch.Tensor | float, std: float,
                start: float, end: float) -> torch.Tensor:
    """The probability-flow ODE's exact map from ``start`` to ``end`` for data N(mean, std^2).

    The marginal at t is N(alpha_t mean, alpha_t^2 std^2 + sigma_t^2); the flow keeps each point's
    standardised coordinate, which gives the map in closed form (std = 0: a point mass).
    """
    def spread(t: float) -> float:
        return math.sqrt(process.alpha(t) ** 2 * std**2 + process.sigma(t) ** 2)

    standard = (x - process.alpha(start) * mean) / spread(start)
    return process.alpha(end) * mean + spread(end) * standard


class GaussianOracle(nn.Module):
    """The exact noise prediction when the data of label y are N(points[y], std^2), at fractional timesteps.

    E[eps | x_t] = sigma_t (x_t - alpha_t mu) / (alpha_t^2 std^2 + sigma_t^2), with alpha_t, sigma_t
    read from the solver's own continuous-time process (training step k sits at t = (k + 1) / N).
    Optionally returns zero variance channels (learned sigma), which the solver must ignore.
    """

    def __init__(self, points: torch.Tensor, std: float = 0.0, learn_sigma: bool = False) -> None:
        super().__init__()
        self.num_classes = points.shape[0] - 1
        self.learn_sigma = learn_sigma
        self.std = std
        self.process = _process()
        self.register_buffer("points", points)
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append(timesteps.clone())
        t = (float(timesteps[0]) + 1.0) / T
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        mean = self.points[y].to(x.dtype)
        eps = sigma * (x - alpha * mean) / (alpha**2 * self.std**2 + sigma**2)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if self.learn_sigma else eps


# ---------------------------------------------------------------- U-ViT's schedule of steps


@pytest.mark.parametrize(
    ("nfe", "orders"),
    [(50, [3] * 16 + [2]), (1, [1]), (2, [2]), (3, [2, 1]), (4, [3, 1]), (9, [3, 3, 2, 1]), (10, [3, 3, 3, 1])],
)
def test_fast_orders_are_dpm_solver_fasts(nfe: int, orders: list[int]) -> None:
    """K = nfe // 3 + 1 steps: third order, then 2+1, 1 or 2 by nfe mod 3 (DPM-Solver-fast)."""
    assert fast_orders(nfe) == orders and sum(orders) == nfe


def test_fewer_than_one_evaluation_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 1 model evaluation"):
        fast_orders(0)


@pytest.mark.parametrize("nfe", [1, 7, 50])
def test_the_model_runs_nfe_times_at_the_time_uniform_points(nfe: int) -> None:
    """Evaluations at t_i = 1 - i (1 - 1/N) / nfe, i < nfe, i.e. at training steps 999 - 999 i / nfe, in order."""
    model = GaussianOracle(torch.zeros(NUM_CLASSES + 1, C, H, W, dtype=torch.float64)).eval()
    x_T = torch.randn(2, C, H, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, record = sample(create_diffusion(learn_sigma=False), model, x_T.shape, torch.tensor([0, 1]),
                       sampler="dpm-solver", steps=nfe, initial_noise=x_T)
    seen = [float(t[0]) for t in model.calls]
    expected = [999.0 - 999.0 * i / nfe for i in range(nfe)]
    assert len(seen) == nfe and max(abs(a - b) for a, b in zip(seen, expected, strict=True)) < 1e-9
    assert record["sampler"] == "dpm-solver" and record["steps"] == nfe


def test_fifty_evaluations_are_u_vits_seventeen_steps() -> None:
    """The whole 50-evaluation run is sixteen third-order steps and one second-order step over the grid
    1 - i 0.999 / 50 (written out here, not taken from the module), bit for bit, on Gaussian data."""
    process = _process()
    mean, std = 0.7, 0.3
    x_T = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).view(-1, 1, 1, 1)

    def eps_prediction(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        t = (float(timesteps[0]) + 1.0) / T
        alpha, sigma = process.alpha(t), process.sigma(t)
        return sigma * (x - alpha * mean) / (alpha**2 * std**2 + sigma**2)

    def data_prediction(x: torch.Tensor, t: float) -> torch.Tensor:
        eps = eps_prediction(x, torch.full((x.shape[0],), t * T - 1.0, dtype=torch.float64))
        return (x - process.sigma(t) * eps) / process.alpha(t)

    grid = [1.0 - i * (1.0 - 1.0 / T) / 50 for i in range(51)]
    x, start = x_T, 0
    for order in [3] * 16 + [2]:
        x = singlestep_update(x, data_prediction, process, grid[start : start + order + 1])
        start += order
    solved = dpm_solver_sample(eps_prediction, x_T, create_diffusion().alphas_cumprod, 50)
    # The grid here and np.linspace's may differ in the last bit of a time; that moves the result by
    # far less than 1e-12 (the solution's sensitivity to the times is O(1)).
    assert (solved - x).abs().max().item() < 1e-12
    error = (solved - _exact_flow(process, x_T, mean, std, 1.0, 1.0 / T)).abs().max().item()
    print(f"50 evaluations on N(0.7, 0.3^2): max |x - exact flow| = {error:.4f}")


# ---------------------------------------------------------------- correctness against closed forms


@pytest.mark.equivalence
class TestExactness:
    """Closed forms the solver must meet: a point mass, and DDIM at first order."""

    @pytest.mark.parametrize("learn_sigma", [False, True])
    @pytest.mark.parametrize("nfe", [7, 50])
    def test_a_point_mass_is_integrated_exactly(self, nfe: int, learn_sigma: bool) -> None:
        """With one point per label, x_0's prediction is constant along the flow, so every order is exact.

        The exponential integrator's higher-order terms multiply differences of x_0 predictions,
        which are 0 here; what remains is float64 rounding. Each step rounds x_0's prediction to a few
        ulps of |x_s| / alpha_s and hands it on scaled by at most alpha_t, and the 1/r weights of the
        differences are below 4 on this grid: per step at most 16 ulps of max|x| * alpha_t / alpha_s
        (``amplification`` below, measured over the steps), summed over the steps.
        """
        points = torch.randn(NUM_CLASSES + 1, C, H, W, generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
        model = GaussianOracle(points, learn_sigma=learn_sigma).eval()
        y = torch.arange(4) % NUM_CLASSES
        x_T = torch.randn(4, C, H, W, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        out, _ = sample(create_diffusion(learn_sigma=learn_sigma), model, x_T.shape, y,
                        sampler="dpm-solver", steps=nfe, initial_noise=x_T)
        exact = _exact_flow(model.process, x_T, points[y], 0.0, 1.0, 1.0 / T)
        error = (out - exact).abs().max().item()
        print(f"nfe={nfe} learn_sigma={learn_sigma}: max |x - exact| = {error:.2e}")
        times, orders = time_points(nfe, T), fast_orders(nfe)
        starts = np.cumsum([0, *orders[:-1]])
        amplification = max(model.process.alpha(times[i + m]) / model.process.alpha(times[i])
                            for i, m in zip(starts, orders, strict=True))
        scale = max(x_T.abs().max().item(), points.abs().max().item())
        bound = len(orders) * 16 * EPS64 * scale * amplification
        print(f"  bound {bound:.1e} (amplification {amplification:.1f})")
        assert out.dtype == torch.float64 and error < bound

    @pytest.mark.parametrize(("j", "k"), [(0, 999), (19, 39), (500, 520), (998, 999)])
    def test_first_order_is_the_ddim_step(self, j: int, k: int) -> None:
        """DPM-Solver++(1) from training step k to j is DDIM (eta 0) on the process respaced to [j, k].

        Both are float64 evaluations of the same map written differently. ``ddim_step`` re-derives
        the noise from its x_0 prediction, (x_t / sqrt(abar_k) - x_0) / sqrt(1 / abar_k - 1), which
        amplifies rounding by up to 1 / abar_k (2.5e4 at k = 999); hence the relative bound
        64 eps / abar_k. (Against a 40-digit evaluation of the map, the solver's step at j = 0,
        k = 999 is off by 4e-16 relative, ``ddim_step``'s by 1.3e-13.)
        """
        diffusion = create_diffusion(learn_sigma=False)
        process = ContinuousTimeVP.from_alphas_cumprod(diffusion.alphas_cumprod)
        generator = torch.Generator().manual_seed(3)
        x = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
        eps = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
        s, t = (k + 1) / T, (j + 1) / T

        def data_prediction(x_t: torch.Tensor, time: float) -> torch.Tensor:
            return (x_t - process.sigma(time) * eps) / process.alpha(time)

        solver = singlestep_update(x, data_prediction, process, [s, t])
        ddim = ddim_step(diffusion.respaced([j, k]), eps, x, torch.ones(2, dtype=torch.long))
        bound = 64 * EPS64 / diffusion.alphas_cumprod[k] * ddim.abs().max().item()
        assert (solver - ddim).abs().max().item() < bound


@pytest.mark.parametrize("order", [1, 2, 3])
def test_local_error_shrinks_with_the_solvers_order(order: int) -> None:
    """One step on Gaussian data: the error is O(h^(order + 1)), measured by halving the step.

    The observed exponent log2(e(2h) / e(h)) tends to order + 1 with a deviation of O(h); at these
    steps (t from 0.3 over 0.01 and 0.005) it is within 0.05 of it, at twice and four times the step
    within 0.07 and 0.16: the bound 0.15 separates each order from the next by far.
    """
    process, mean, std = _process(), 0.7, 0.3
    x = torch.linspace(-3.0, 3.0, 101, dtype=torch.float64)

    def data_prediction(x_t: torch.Tensor, t: float) -> torch.Tensor:
        alpha, sigma = process.alpha(t), process.sigma(t)
        eps = sigma * (x_t - alpha * mean) / (alpha**2 * std**2 + sigma**2)
        return (x_t - sigma * eps) / alpha

    errors = []
    for span in (0.01, 0.005):
        start = 0.3
        times = np.linspace(start, start - span, order + 1).tolist()
        x_s = _exact_flow(process, x, mean, std, 1.0, start)
        step = singlestep_update(x_s, data_prediction, process, times)
        errors.append((step - _exact_flow(process, x_s, mean, std, start, start - span)).abs().max().item())
    observed = math.log2(errors[0] / errors[1])
    print(f"order {order}: errors {errors}, observed exponent {observed:.3f}")
    assert abs(observed - (order + 1)) < 0.15


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"eta": 0.5}, "ddim sampler only"), ({"clip_denoised": True}, "thresholding")],
)
def test_options_that_do_not_apply_are_refused(kwargs: dict, message: str) -> None:
    model = GaussianOracle(torch.zeros(NUM_CLASSES + 1, C, H, W)).eval()
    with pytest.raises(ConfigError, match=message):
        sample(create_diffusion(learn_sigma=False), model, (1, C, H, W), torch.tensor([0]),
               sampler="dpm-solver", steps=5, **kwargs)


def test_a_respaced_process_is_refused() -> None:
    model = GaussianOracle(torch.zeros(NUM_CLASSES + 1, C, H, W)).eval()
    with pytest.raises(ConfigError, match="before respacing"):
        sample(create_diffusion(learn_sigma=False).respaced(100), model, (1, C, H, W), torch.tensor([0]),
               sampler="dpm-solver", steps=5)


@pytest.mark.parametrize(
    ("alphas_cumprod", "message"),
    [(np.array([0.5]), "at least 2"), (np.array([0.9, 0.95]), "decrease"), (np.array([1.0, 0.5]), r"\(0, 1\)")],
)
def test_a_schedule_that_is_not_a_diffusion_is_refused(alphas_cumprod: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ContinuousTimeVP.from_alphas_cumprod(alphas_cumprod)


# ---------------------------------------------------------------- on a GPU (CPU twin: every test above)


@pytest.mark.gpu
def test_a_guided_dpm_solver_run_on_cuda_is_as_close_to_float64_as_the_cpu_run() -> None:
    """U-ViT's protocol on a random DiT-S/2, float32 with TF32 off, on CUDA and on the CPU, each against a
    float64 CPU run: the CUDA error may be at most 2x the CPU's plus a few float32 ulps of the output
    (the project's tolerance method for a changed kernel), and the same x_T reaches both devices."""
    from dit_repro.models import build_model
    from dit_repro.precision import tf32_allowed
    from tests.helpers import perturb_

    model = perturb_(build_model("DiT-S/2", input_size=4, in_channels=4, num_classes=10), seed=0).eval()
    x_T = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 7, 9])

    def run(device: str, dtype: torch.dtype) -> torch.Tensor:
        net = model.to(device=device, dtype=dtype)
        out, _ = sample(create_diffusion(), net, x_T.shape, y, sampler="dpm-solver", steps=10, cfg_scale=1.4,
                        initial_noise=x_T.to(device=device, dtype=dtype))
        return out.to("cpu", torch.float64)

    with tf32_allowed(False):
        reference = run("cpu", torch.float64)
        cpu_error = (run("cpu", torch.float32) - reference).abs().max().item()
        cuda_error = (run("cuda", torch.float32) - reference).abs().max().item()
    ulps = 16 * torch.finfo(torch.float32).eps * reference.abs().max().item()
    print(f"max |x - float64|: cpu {cpu_error:.2e}, cuda {cuda_error:.2e}")
    assert cuda_error <= 2 * cpu_error + ulps

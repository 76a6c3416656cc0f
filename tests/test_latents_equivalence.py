"""Cached latents train exactly like live encoding: the same latents and loss draw for draw, and the
same distribution; a cache with one frozen sample and one frozen flip is caught by the same test."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from dit_repro.config import Switches
from dit_repro.data.draws import draw_item
from dit_repro.data.sources import build_feature_source
from dit_repro.data.vae import load_vae, scaled_posterior_sample
from dit_repro.diffusion import create_diffusion
from tests.data_support import build_cache, train_config
from tests.helpers import assert_close_to_reference

pytestmark = pytest.mark.equivalence

FAMILY_ALPHA = 1e-3
"""False-failure rate of the whole statistical comparison (Bonferroni over all per-element tests)."""
DRAWS = 800
"""Draws per path for the statistical test."""


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Live and cached sources over the same 12 synthetic images (cache extracted in batches of 4)."""
    cache_dir = tmp_path_factory.mktemp("equivalence") / "cache"
    build_cache(cache_dir, batch_size=4)
    live = build_feature_source(train_config(switches=Switches(features="live"), strict_fp32_encode=True))
    cached = build_feature_source(
        train_config(switches=Switches(features="cached"), cache_dir=str(cache_dir))
    )
    return live, cached


class TinyDenoiser(nn.Module):
    """Stand-in for DiT in the loss check: a convolution plus label and time embeddings, learned sigma."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.label = nn.Embedding(num_classes + 1, 2 * channels)
        self.time = nn.Linear(1, 2 * channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bias = self.label(y) + self.time(t.to(x.dtype)[:, None] / 1000)
        return self.conv(x) + bias[:, :, None, None]


def _reference_latents(vae64: nn.Module, batch: dict[str, torch.Tensor], scale_factor: float) -> torch.Tensor:
    posterior = vae64.encode(batch["x"].double()).latent_dist
    return scaled_posterior_sample(posterior.mean, posterior.logvar, batch["eps"].double(), scale_factor)


def test_cached_and_live_steps_give_the_same_latents_and_loss(sources):
    """Tolerance: the live path's own fp32 error against a float64 encoding, times 2, plus 4 fp32 ulps.

    Both paths are fp32 computations of the same maths that differ only in batch composition
    (extraction batches of 4 images and their mirrors, training batches of 5), so each sits
    within the fp32 error of the float64 reference; a wrong flip or wrong noise is off by O(0.1).
    """
    live, cached = sources
    vae64 = copy.deepcopy(live.vae.model).double()
    diffusion = create_diffusion()
    torch.manual_seed(0)
    model = TinyDenoiser(4, live.num_classes)
    model64 = copy.deepcopy(model).double()
    for epoch in (0, 1):
        loaders = []
        for source in (live, cached):
            source.dataset.set_epoch(epoch)
            sampler = DistributedSampler(source.dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            loaders.append(DataLoader(source.dataset, batch_size=5, sampler=sampler))
        for live_batch, cached_batch in zip(*loaders, strict=True):
            assert torch.equal(live_batch["index"], cached_batch["index"])
            assert torch.equal(live_batch["flip"], cached_batch["flip"])
            z_live, y_live = live.prepare(live_batch, "cpu")
            z_cached, y_cached = cached.prepare(cached_batch, "cpu")
            assert torch.equal(y_live, y_cached) and z_live.dtype == z_cached.dtype == torch.float32
            with torch.no_grad():
                z_ref = _reference_latents(vae64, live_batch, live.vae.scale_factor)
            assert_close_to_reference("latents", z_cached, z_live, z_ref, torch.float32)

            n = len(y_live)
            # t = 0 is left out: its decoder likelihood term is so ill-conditioned in fp32 (error ~0.1
            # against float64) that the bound would admit a wrong flip.
            t = torch.tensor([1, 10, 250, 500, 999])[:n]
            noise = torch.randn(z_live.shape, generator=torch.Generator().manual_seed(epoch))
            with torch.no_grad():
                loss_live = diffusion.training_losses(model, z_live, t, {"y": y_live}, noise)["loss"]
                loss_cached = diffusion.training_losses(model, z_cached, t, {"y": y_cached}, noise)["loss"]
                loss_ref = diffusion.training_losses(model64, z_ref, t, {"y": y_live}, noise.double())["loss"]
            assert_close_to_reference("loss", loss_cached, loss_live, loss_ref, torch.float32)


# ------------------------------------------------------------------ statistical


def _draws(source, row: int, epochs: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and flips of dataset item ``row`` in each of ``epochs``, through the source's own path."""
    latents, flips = [], []
    for start in range(epochs.start, epochs.stop, 200):
        items = []
        for epoch in range(start, min(start + 200, epochs.stop)):
            source.dataset.set_epoch(epoch)
            items.append(source.dataset[row])
        batch = default_collate(items)
        latents.append(source.prepare(batch, "cpu")[0])
        flips.append(batch["flip"])
    return torch.cat(latents).flatten(1).double(), torch.cat(flips)


def same_distribution(first: torch.Tensor, second: torch.Tensor) -> tuple[bool, float, int]:
    """Per element, Welch's t-test (means) and the Brown-Forsythe test (variances), Bonferroni-combined.

    Returns (accepted, smallest p-value, number of tests); the family-wise false-failure rate
    for two samples of one distribution is at most FAMILY_ALPHA.
    """
    a, b = first.numpy(), second.numpy()
    # A constant sample (the frozen cache) makes scipy warn about precision; its p-values stay valid.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p_means = stats.ttest_ind(a, b, axis=0, equal_var=False).pvalue
        p_vars = np.array([stats.levene(a[:, k], b[:, k], center="median").pvalue for k in range(a.shape[1])])
    # NaN only arises when both samples are constant; count it as a rejection.
    pvalues = np.nan_to_num(np.concatenate([p_means, p_vars]), nan=0.0)
    return bool(pvalues.min() >= FAMILY_ALPHA / pvalues.size), float(pvalues.min()), int(pvalues.size)


@pytest.fixture(scope="module")
def live_draws(sources):
    """DRAWS live encodings of image 0 (epochs 0..DRAWS-1), shared by the statistical tests."""
    return _draws(sources[0], 0, range(0, DRAWS))


def test_cached_draws_have_the_distribution_of_live_encoding(sources, live_draws):
    _, cached = sources
    live_z, live_flips = live_draws
    # Disjoint epochs: independent draws, not the lined-up ones of the exact test.
    cached_z, cached_flips = _draws(cached, 0, range(DRAWS, 2 * DRAWS))
    accepted, pmin, tests = same_distribution(live_z, cached_z)
    print(f"live vs cache: {tests} tests, smallest p {pmin:.3g}, threshold {FAMILY_ALPHA / tests:.3g}")
    assert accepted
    for flips in (live_flips, cached_flips):
        heads = int(flips.sum())
        assert 0 < heads < DRAWS and stats.binomtest(heads, DRAWS, 0.5).pvalue > FAMILY_ALPHA


class FrozenSampleCache(Dataset):
    """The reference implementation's cache: one flip and one posterior sample per image, drawn once."""

    def __init__(self, live_source, row: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        image = live_source.images.load(row)
        self.flip = bool(torch.rand((), generator=generator) < 0.5)
        if self.flip:
            image = image.flip(-1)
        mean, logvar = live_source.vae.encode_moments(image[None])
        eps = torch.randn(mean.shape, generator=generator)
        self.latent = scaled_posterior_sample(mean, logvar, eps, live_source.vae.scale_factor)[0]
        self.label = live_source.images.label(row)

    def set_epoch(self, epoch: int) -> None:
        """The frozen cache ignores the epoch: that is its flaw."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {"x": self.latent, "y": torch.tensor(self.label), "flip": torch.tensor(self.flip)}


class _Served:
    """A source-like wrapper so the frozen cache is drawn through the same helper."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def prepare(self, batch, device):
        return batch["x"].to(device), batch["y"].to(device)


def test_the_same_test_catches_a_frozen_sample_cache(sources, live_draws):
    live, _ = sources
    live_z, _ = live_draws
    frozen_z, frozen_flips = _draws(_Served(FrozenSampleCache(live, 0, seed=123)), 0, range(DRAWS))
    accepted, pmin, tests = same_distribution(live_z, frozen_z)
    print(f"live vs frozen: {tests} tests, smallest p {pmin:.3g}, threshold {FAMILY_ALPHA / tests:.3g}")
    assert not accepted
    assert len(set(frozen_flips.tolist())) == 1, "a frozen cache shows one orientation only"


class FrozenFlipCache(Dataset):
    """A cache that stores only the orientation drawn at extraction, but draws fresh posterior samples."""

    def __init__(self, cached_source) -> None:
        self.inner = cached_source.dataset

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        mean, logvar, label, index = self.inner.cache.row(row)
        eps = draw_item(self.inner.seed, self.inner.epoch, index, self.inner.cache.latent_shape).eps
        latent = scaled_posterior_sample(mean[0], logvar[0], eps, self.inner.cache.scale_factor)
        return {"x": latent, "y": torch.tensor(label), "flip": torch.tensor(False)}


def test_the_same_test_also_catches_a_frozen_flip_alone(sources, live_draws):
    _, cached = sources
    frozen_flip_z, _ = _draws(_Served(FrozenFlipCache(cached)), 0, range(DRAWS, 2 * DRAWS))
    accepted, pmin, tests = same_distribution(live_draws[0], frozen_flip_z)
    print(f"live vs frozen flip: {tests} tests, smallest p {pmin:.3g}, threshold {FAMILY_ALPHA / tests:.3g}")
    assert not accepted


# ------------------------------------------------------------------ CUDA


@pytest.mark.gpu
def test_live_encoding_on_cuda_is_full_fp32_and_matches_caches_from_cpu_and_cuda(sources, tmp_path):
    """cuDNN runs fp32 convolutions in TF32 by default (error ~1e-3); the VAE must not.

    The CUDA live latents are judged against the CPU's fp32 error from the float64 reference, so
    TF32 would fail; then a cache extracted on the CPU and one extracted on the GPU must both match
    CUDA live encoding within the same bound.
    """
    live_cpu, cached_from_cpu = sources
    build_cache(tmp_path / "cuda-cache", vae=load_vae("tiny-random", "cuda"))
    cached_from_cuda = build_feature_source(
        train_config(switches=Switches(features="cached"), cache_dir=str(tmp_path / "cuda-cache"))
    )
    live_cuda = build_feature_source(train_config(switches=Switches(features="live"), strict_fp32_encode=True))
    rows = list(range(12))
    for source in (live_cpu, live_cuda, cached_from_cpu, cached_from_cuda):
        source.dataset.set_epoch(3)
    batch = default_collate([live_cuda.dataset[r] for r in rows])
    z_cuda = live_cuda.prepare(batch, "cuda")[0].cpu()
    z_cpu = live_cpu.prepare(batch, "cpu")[0]
    vae64 = copy.deepcopy(live_cpu.vae.model).double()
    with torch.no_grad():
        z_ref = _reference_latents(vae64, batch, live_cpu.vae.scale_factor)
    assert_close_to_reference("live cuda vs cpu fp32", z_cuda, z_cpu, z_ref, torch.float32)
    for name, cached in (("cache from cpu", cached_from_cpu), ("cache from cuda", cached_from_cuda)):
        z_cached = cached.prepare(default_collate([cached.dataset[r] for r in rows]), "cuda")[0].cpu()
        assert_close_to_reference(name, z_cached, z_cuda, z_ref, torch.float32)

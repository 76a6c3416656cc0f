"""The per-item draw scheme: stable seeds, the flip-then-noise order, and rank independence."""

from __future__ import annotations

import torch
from scipy import stats
from torch.utils.data import DistributedSampler

from dit_repro.data.draws import draw_item, item_generator, stable_seed
from dit_repro.data.images import AugmentedImageDataset
from dit_repro.data.synthetic import SyntheticImages

ALPHA = 1e-3
"""False-failure rate of each statistical check in this file."""


def test_stable_seed_is_pinned_across_processes_and_platforms():
    # Existing caches and live runs line up only while this mapping stays fixed; the values were
    # computed once and are pinned so that any change to the scheme fails here first.
    assert stable_seed("dit-repro/item-draws/v1", 0, 0, 0) == 5143416274477384061
    assert stable_seed("x") == 5717441744405258058
    assert 0 <= stable_seed("dit-repro/item-draws/v1", 2**40, -3, 7) < 2**63


def test_draws_are_deterministic_and_keyed_by_seed_epoch_and_index():
    first = draw_item(3, 1, 5, (4, 2, 2))
    again = draw_item(3, 1, 5, (4, 2, 2))
    assert first.flip == again.flip and torch.equal(first.eps, again.eps)
    for other in (
        draw_item(4, 1, 5, (4, 2, 2)),
        draw_item(3, 2, 5, (4, 2, 2)),
        draw_item(3, 1, 6, (4, 2, 2)),
    ):
        assert not torch.equal(first.eps, other.eps)


def test_flip_is_drawn_first_then_noise():
    with_noise = draw_item(0, 2, 9, (4, 3, 3))
    without_noise = draw_item(0, 2, 9)
    assert without_noise.eps is None
    assert with_noise.flip == without_noise.flip
    generator = item_generator(0, 2, 9)
    assert with_noise.flip == bool(torch.rand((), generator=generator).item() < 0.5)
    assert torch.equal(with_noise.eps, torch.randn((4, 3, 3), generator=generator))


def test_flip_probability_is_one_half():
    flips = sum(draw_item(0, 0, index).flip for index in range(4000))
    result = stats.binomtest(flips, 4000, 0.5)
    print(f"flips {flips}/4000, p={result.pvalue:.3g}")
    assert result.pvalue > ALPHA


def test_distributed_shards_draw_what_one_process_draws():
    images = SyntheticImages(8, channels=1, count=10, classes=2)
    single = AugmentedImageDataset(images, seed=7, latent_shape=(4, 1, 1))
    for epoch in (0, 1):
        single.set_epoch(epoch)
        seen = set()
        for rank in range(3):
            shard = AugmentedImageDataset(images, seed=7, latent_shape=(4, 1, 1))
            shard.set_epoch(epoch)
            sampler = DistributedSampler(shard, num_replicas=3, rank=rank, shuffle=True, seed=7)
            sampler.set_epoch(epoch)
            for index in sampler:
                mine, reference = shard[index], single[index]
                assert mine["flip"] == reference["flip"]
                assert torch.equal(mine["eps"], reference["eps"]) and torch.equal(mine["x"], reference["x"])
                seen.add(index)
        assert seen == set(range(10))

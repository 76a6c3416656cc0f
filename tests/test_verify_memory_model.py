"""The memory model: exact live-byte accounting, the parts it holds, and the effect of each switch."""

from __future__ import annotations

import pytest
import torch

from dit_repro.verify.machine import param_count
from dit_repro.verify.memory_model import MemoryModel, MemorySpec, _LiveStorages


def test_live_storages_count_each_storage_once_and_free_it_when_it_dies() -> None:
    tracker = _LiveStorages()
    with tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 4000 more
        view = b.view(10, 100)  # shares b's storage: nothing new
        assert tracker.current == 8000
        del a
        assert tracker.current == 4000
        c = torch.ones(250, dtype=torch.float64)  # 2000 bytes
        del b  # the view keeps the storage alive
        assert tracker.current == 6000
        del view
        assert tracker.current == 2000
        del c
    assert tracker.current == 0 and tracker.peak == 8000


def test_saved_activations_stay_live_until_backward_frees_them() -> None:
    tracker = _LiveStorages()
    with tracker:
        x = torch.ones(1000, requires_grad=True)  # created inside: tracked, 4000
        y = x.exp()  # exp saves its result: 4000
        loss = y.sum()  # 4
        del y  # autograd still holds exp's output
        assert tracker.current == 8004
        loss.backward()  # frees the saved output, creates x.grad (4000) and temporaries
        del loss
    assert tracker.current == 8000  # x and x.grad
    assert x.grad is not None


@pytest.fixture(scope="module")
def model() -> MemoryModel:
    return MemoryModel()


def small(**overrides) -> MemorySpec:
    values = dict(model="DiT-S/2", per_gpu_batch=4, checkpointing="none", precision="fp32", features="cached")
    values.update(overrides)
    return MemorySpec(**values)


def test_resident_parts_are_the_weights_ema_moments_and_buckets(model: MemoryModel) -> None:
    estimate = model.estimate(small())
    weights = 4 * param_count("DiT-S/2")  # fp32, pos_embed included
    parts = estimate.components
    assert parts["weights"] == weights and parts["ema"] == weights
    trainable = weights - 4 * 256 * 384  # pos_embed (256 tokens x 384) is not trained: no moments, no bucket
    assert parts["ddp_buckets"] == trainable
    assert trainable * 2 <= parts["optimizer"] <= trainable * 2 + 4 * 200  # two moments (+ one step scalar per tensor)
    assert parts["vae_weights"] == 0
    assert estimate.resident_bytes == sum(parts.values()) and estimate.peak_bytes > estimate.resident_bytes


def test_checkpointing_cuts_the_peak_and_live_features_add_the_vae(model: MemoryModel) -> None:
    plain, checkpointed = model.estimate(small()), model.estimate(small(checkpointing="full"))
    assert checkpointed.peak_bytes < plain.peak_bytes
    live = model.estimate(small(features="live"))
    assert live.components["vae_weights"] > 0
    assert live.peak_bytes - live.components["vae_weights"] > plain.peak_bytes  # encoding 256 px images costs more


def test_activations_scale_with_the_batch(model: MemoryModel) -> None:
    one, two = model.estimate(small(per_gpu_batch=4)), model.estimate(small(per_gpu_batch=8))
    ratio = (two.peak_bytes - two.resident_bytes) / (one.peak_bytes - one.resident_bytes)
    print(f"activation bytes ratio for twice the batch: {ratio:.4f}")
    # Everything above the resident state is per-image except a few kilobytes (the schedule's tables).
    assert 1.99 < ratio <= 2.0


def test_tf32_holds_the_same_tensors_as_fp32_and_half_precision_does_not(model: MemoryModel) -> None:
    assert small(precision="tf32").tensor_key == small(precision="fp32").tensor_key
    assert small(precision="fp16").tensor_key != small(precision="fp32").tensor_key
    assert model.cached(small(precision="tf32", per_gpu_batch=4)) is not None  # modelled above as fp32
    half = model.estimate(small(precision="fp16"))
    assert half.peak_bytes < model.estimate(small()).peak_bytes  # half-precision activations


@pytest.mark.parametrize("field, value, message", [
    ("model", "DiT-XXL/2", "unknown model preset"), ("per_gpu_batch", 0, "per_gpu_batch"),
    ("checkpointing", "every-k", "none or full"), ("precision", "fp8", "fp32, tf32"), ("features", "pixels", "live or cached"),
])
def test_impossible_specs_are_refused(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small(**{field: value})

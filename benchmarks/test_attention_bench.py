"""Micro-benchmarks: each attention backend's forward + backward at the DiT-XL/2 shape.

DiT-XL/2 at 256 px attends over 256 tokens with 16 heads of 72 channels. Run, save, compare::

    pytest benchmarks --benchmark-only --benchmark-autosave
    pytest benchmarks --benchmark-only --benchmark-compare            # against the last saved run
    pytest benchmarks --benchmark-only --benchmark-compare-fail=median:5%

On a GPU the batch is the paper's 128 in bf16 (the fused kernels need half precision); on a
CPU it shrinks to 1 in fp32 so that a run takes seconds. Backends that cannot run here are
skipped with the registry's reason. These live outside tests/ so the test suite never times.
"""

from __future__ import annotations

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from dit_repro.models.attention import Backend, attention, unavailable_reason

HEADS, TOKENS, HEAD_DIM = 16, 256, 72
"""DiT-XL/2 at 256 px: hidden 1152 = 16 x 72, a 32 x 32 latent in 2 x 2 patches = 256 tokens."""

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
BATCH = 128 if DEVICE.type == "cuda" else 1


def _synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@pytest.mark.parametrize("backend", [b.value for b in Backend])
def test_attention_forward_backward(benchmark: BenchmarkFixture, backend: str) -> None:
    reason = unavailable_reason(backend, str(DEVICE), DTYPE, HEAD_DIM)
    if reason is not None:
        pytest.skip(f"{backend} unavailable on {DEVICE.type}/{DTYPE}: {reason}")
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    shape = (BATCH, HEADS, TOKENS, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=DTYPE, generator=generator).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, device=DEVICE, dtype=DTYPE, generator=generator)

    def forward_backward() -> None:
        out = attention(q, k, v, backend)
        out.backward(grad)
        q.grad = k.grad = v.grad = None
        _synchronize()  # the timer must see the kernels finish, not only their launch

    forward_backward()  # first call: kernel selection and allocator warm-up, not timed
    benchmark.extra_info.update(backend=backend, device=DEVICE.type, dtype=str(DTYPE).removeprefix("torch."),
                                shape=list(shape))
    benchmark.pedantic(forward_backward, rounds=20 if DEVICE.type == "cuda" else 5, warmup_rounds=3)

"""Every attention backend against a float64 reference, in outputs and input gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dit_repro.models.attention import (
    AUTO,
    AttentionBackendUnavailable,
    Backend,
    attention,
    backend_report,
    math_attention,
    select_backend,
    unavailable_reason,
)
from tests.helpers import GRADIENT_ERROR_MULTIPLE, assert_close_to_reference

CPU_DTYPES = (torch.float32, torch.bfloat16)
GPU_DTYPES = (torch.float16, torch.bfloat16)


def available(device: str, dtype: torch.dtype, head_dim: int) -> list[Backend]:
    return [b for b in Backend if unavailable_reason(b.value, device, dtype, head_dim) is None]


def qkv(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3)]


def check_backend(backend: Backend, shape: tuple[int, int, int, int], dtype: torch.dtype, device: str, seed: int) -> None:
    """Output and dq, dk, dv of ``backend`` within the error rule against float64 math."""
    base = qkv(shape, dtype, device, seed)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)

    def run(fn, tensors):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        out = fn(*leaves)
        out.backward(grad_out.to(out.dtype))
        return out.detach(), [leaf.grad for leaf in leaves]

    out_ref, grads_ref = run(math_attention, [t.double() for t in base])
    out_pt, grads_pt = run(math_attention, base)
    out, grads = run(lambda q, k, v: attention(q, k, v, backend), base)
    tag = f"{backend.value} {dtype} {tuple(shape)}"
    # Rounding floors at the scale of the terms each result is made of: the values for the output;
    # for the gradients, dO * v * k products, which cancel exactly in the softmax backward when a
    # row has one token (the exact dq is then 0 and only that residue is left).
    value_scale = max(t.abs().max().item() for t in base)
    grad_scale = grad_out.abs().max().item() * value_scale**2
    assert_close_to_reference(f"{tag} out", out, out_pt, out_ref, dtype, input_scale=value_scale)
    for name, g, g_pt, g_ref in zip("qkv", grads, grads_pt, grads_ref, strict=True):
        assert_close_to_reference(
            f"{tag} d{name}", g, g_pt, g_ref, dtype, GRADIENT_ERROR_MULTIPLE, input_scale=grad_scale
        )


@pytest.mark.equivalence
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", [b for b in Backend], ids=lambda b: b.value)
def test_backend_matches_float64_reference_cpu(backend: Backend, dtype: torch.dtype) -> None:
    shape = (2, 3, 37, 24)
    reason = unavailable_reason(backend.value, "cpu", dtype, shape[-1])
    if reason is not None:
        pytest.skip(f"{backend.value} does not run on this CPU: {reason}")
    check_backend(backend, shape, dtype, "cpu", seed=0)


@pytest.mark.equivalence
@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 4),
    tokens=st.integers(1, 65),
    head_dim=st.sampled_from([8, 16, 24, 40, 64, 72]),
    seed=st.integers(0, 2**16),
)
def test_backends_agree_over_shapes(batch: int, heads: int, tokens: int, head_dim: int, seed: int) -> None:
    for backend in available("cpu", torch.float32, head_dim):
        check_backend(backend, (batch, heads, tokens, head_dim), torch.float32, "cpu", seed)


@pytest.mark.equivalence
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", [b for b in Backend], ids=lambda b: b.value)
def test_backend_matches_float64_reference_gpu(backend: Backend, dtype: torch.dtype) -> None:
    shape = (4, 16, 256, 72)  # DiT-XL/2's attention shape at 256 px
    reason = unavailable_reason(backend.value, "cuda", dtype, shape[-1])
    if reason is not None:
        pytest.skip(f"{backend.value} does not run on this GPU: {reason}")
    check_backend(backend, shape, dtype, "cuda", seed=0)


def test_auto_records_choice_and_refusals_on_cpu() -> None:
    selection = select_backend(AUTO, "cpu", torch.float32, 64)
    assert selection.backend is Backend.FLASH  # PyTorch's flash kernel runs on CPUs in fp32
    assert selection.refused == {}
    report = backend_report("cpu")
    assert report["backends"]["cudnn"]["reason"] == "needs a CUDA device, this is cpu"
    assert report["backends"]["efficient"]["available"] is False
    assert report["auto"]["backend"] == "flash"


def test_auto_prefers_in_order_and_lists_refused() -> None:
    # With fp16 on a CPU without CUDA the refusals must name a reason for each skipped backend.
    selection = select_backend(AUTO, "cpu", torch.float64, 16)
    skipped = [b.value for b in Backend if b.value in selection.refused]
    assert all(selection.refused[name] for name in skipped)
    assert selection.backend.value not in selection.refused


@pytest.mark.parametrize("name", ["cudnn", "efficient"])
def test_forced_unavailable_backend_is_an_error(name: str) -> None:
    with pytest.raises(AttentionBackendUnavailable, match="needs a CUDA device"):
        select_backend(name, "cpu", torch.float32, 64)


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="choose one of auto, math, sdpa, flash"):
        select_backend("fastest", "cpu")

"""Small utilities the tests share: error-vs-reference judging and seeded model perturbation."""

from __future__ import annotations

import torch
from torch import nn

# The flash-attention test suite's rule: a kernel may be at most K times as far from the float64
# reference as plain PyTorch in the same dtype, plus a floor of the dtype's rounding. K is 2 for
# outputs and 3 for gradients: a fused backward recomputes the softmax block by block, and over
# 300 random shapes on the CPU flash kernel in fp32 its gradient error reached 2.9x plain PyTorch's
# (plus one ulp) while its output error stayed under 1.5x.
OUTPUT_ERROR_MULTIPLE = 2.0
GRADIENT_ERROR_MULTIPLE = 3.0
# The floor: a few units of rounding at the data's scale, the largest magnitude of the reference
# or, where given, the scale of the inputs. Where an exact result is 0 (e.g. dq with one token)
# a fused kernel still leaves rounding residue of the O(1) terms that cancel: the input scale
# admits that residue.
FLOOR_ULPS = 4


def rounding_floor(reference: torch.Tensor, dtype: torch.dtype, input_scale: float = 0.0) -> float:
    """FLOOR_ULPS units of rounding of ``dtype`` at max(input_scale, the largest magnitude of ``reference``)."""
    return FLOOR_ULPS * torch.finfo(dtype).eps * max(reference.abs().max().item(), input_scale)


def assert_close_to_reference(
    name: str,
    candidate: torch.Tensor,
    plain: torch.Tensor,
    reference: torch.Tensor,
    dtype: torch.dtype,
    multiple: float = OUTPUT_ERROR_MULTIPLE,
    input_scale: float = 0.0,
) -> None:
    """Judge ``candidate`` (a switch's result) against the float64 ``reference``.

    ``plain`` is the plain-PyTorch implementation's result in the same dtype as ``candidate``.
    Prints max and mean errors before asserting, so a failure shows by how much.
    """
    ref = reference.double()
    err = (candidate.double() - ref).abs()
    plain_err = (plain.double() - ref).abs()
    bound = multiple * plain_err.max().item() + rounding_floor(ref, dtype, input_scale)
    print(
        f"{name}: max err {err.max().item():.3e} mean {err.mean().item():.3e} | plain max {plain_err.max().item():.3e} "
        f"mean {plain_err.mean().item():.3e} | bound {bound:.3e}"
    )
    assert err.max().item() <= bound, f"{name}: max error {err.max().item():.3e} exceeds {bound:.3e}"


def perturb_(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Add seeded noise to every trainable parameter.

    DiT's adaLN-Zero initialisation makes every block the identity and the output zero, which would
    make any two attention backends agree trivially; noise makes every path matter.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen).to(p) * std)  # drawn on the CPU: same noise on any device
    return model

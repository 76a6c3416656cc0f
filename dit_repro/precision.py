"""The precision switch's policy in one place: TF32 flags and the autocast dtype.

fp32 is strict (TF32 off: the paper's "GCP with TF32 disabled" row); tf32 turns TF32 on; fp16 and
bf16 run autocast and leave TF32 on for what stays fp32, as the paper's environment did.

TF32 is set through one API only, and in one place: here. PyTorch has two: the legacy flags
(``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``) and the newer
``fp32_precision`` attributes (``torch.backends.cuda.matmul``, ``torch.backends.cudnn.conv`` and
``.rnn``). cuBLAS, cuDNN and inductor still read the legacy getters, which raise "you have used mix
of the legacy and new APIs" when the two disagree; that check runs inside every fp32 cuBLAS matmul
and cuDNN convolution. Measured on torch 2.14 (tests/test_precision.py): writing the legacy flags
updates the new attributes too, so both APIs then read the same; writing the new attributes leaves
the legacy getters raising for any non-default value. So the legacy setters are the one API
written here; the test reads both APIs after every precision value and fails on a torch where
that stops holding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .config import Precision

AUTOCAST_DTYPES = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def autocast_dtype(precision: Precision) -> torch.dtype | None:
    """The autocast dtype of ``precision``, or None when it runs without autocast."""
    return AUTOCAST_DTYPES.get(Precision(precision))


def tf32_state() -> tuple[bool, bool]:
    """Whether TF32 is allowed for fp32 matmuls and for cuDNN, for :func:`restore_tf32_state`."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def restore_tf32_state(state: tuple[bool, bool]) -> None:
    """Put back settings read by :func:`tf32_state`."""
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state


def allow_tf32(allowed: bool) -> None:
    """Allow (or forbid) TF32 for fp32 matmuls and cuDNN convolutions and RNNs, process-wide.

    The matmul flag also sets ``torch.get_float32_matmul_precision()`` ("high" / "highest").
    """
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def set_matmul_precision(precision: Precision) -> None:
    """Set the process-wide TF32 flags for ``precision``: TF32 everywhere but fp32."""
    allow_tf32(Precision(precision) is not Precision.FP32)


@contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """Within the block, TF32 allowed or not; the previous settings are restored after."""
    saved = tf32_state()
    allow_tf32(allowed)
    try:
        yield
    finally:
        restore_tf32_state(saved)


@contextmanager
def matmul_precision(precision: Precision) -> Iterator[None]:
    """Within the block, the TF32 flags of ``precision``; the previous flags are restored after."""
    with tf32_allowed(Precision(precision) is not Precision.FP32):
        yield


@contextmanager
def strict_fp32() -> Iterator[None]:
    """Full-precision fp32 convolutions and matmuls (no TF32) inside the block, restored after.

    cuDNN allows TF32 convolutions by default; the VAE would then encode differently from run
    to run depending on the precision switch, and live encoding would drift from the cache.
    """
    with tf32_allowed(False):
        yield


def tf32_preflight(device: torch.device | str) -> list[dict[str, object]]:
    """Every precision value's TF32 flags, read through both APIs, with an fp32 matmul and convolution run
    on ``device`` under them and inside :func:`strict_fp32`.

    On a GPU each fp32 cuBLAS matmul and cuDNN convolution checks that the legacy and new APIs
    agree and raises if they do not; on a CPU reading the legacy getters is the same check. One
    line per precision: the flags outside and inside the strict block, and ``ok``. Raises nothing:
    a failure is recorded in ``error``. The process's flags are restored afterwards.
    """
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(64, 64, generator=generator).to(device) for _ in range(2))
    image = torch.randn(1, 3, 16, 16, generator=generator).to(device)
    kernel = torch.randn(4, 3, 3, 3, generator=generator).to(device)

    def probe() -> dict[str, object]:
        (a @ b).sum().item()
        torch.nn.functional.conv2d(image, kernel).sum().item()
        return {"legacy": tf32_state(), "new": (torch.backends.cuda.matmul.fp32_precision,
                                                torch.backends.cudnn.conv.fp32_precision)}

    lines: list[dict[str, object]] = []
    saved = tf32_state()
    try:
        for precision in Precision:
            line: dict[str, object] = {"precision": precision.value}
            try:
                set_matmul_precision(precision)
                line["outside"] = probe()
                with strict_fp32():
                    line["strict"] = probe()
                line["after_strict"] = probe()
                line["ok"] = line["outside"] == line["after_strict"] and line["strict"]["legacy"] == (False, False)
            except RuntimeError as exc:
                line.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            lines.append(line)
    finally:
        restore_tf32_state(saved)
    return lines

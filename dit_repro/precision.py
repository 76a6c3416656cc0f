"""The precision switch's policy in one place: TF32 flags and the autocast dtype.

fp32 is strict (TF32 off: the paper's "GCP with TF32 disabled" row); tf32 turns TF32 on; fp16 and
bf16 run autocast and leave TF32 on for what stays fp32, as the paper's environment did.
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


def set_matmul_precision(precision: Precision) -> None:
    """Set the process-wide TF32 flags for ``precision``."""
    allow_tf32 = Precision(precision) is not Precision.FP32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")


@contextmanager
def matmul_precision(precision: Precision) -> Iterator[None]:
    """Within the block, the TF32 flags of ``precision``; the previous flags are restored after."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    set_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]

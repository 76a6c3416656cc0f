"""The optimization switches applied to a model in one place, in one fixed order.

Order, everywhere: device, precision, attention, checkpointing, compile, DDP. Each later step
depends on the earlier ones: attention is selected for the dtype that precision makes it see;
checkpointing wraps the blocks before compile traces them; DDP wraps what compile returned.

The Trainer, sampling, the memory model and the machine-independent FLOP counts all go through
this module, and nothing else resolves a device, picks an autocast dtype (that is
:func:`dit_repro.precision.autocast_dtype`), sets a TF32 flag (:mod:`dit_repro.precision`) or
builds the set of checkpointed blocks. :func:`diffusion_loss` is the one training forward.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import Checkpointing, CompileMode, CompileScope, Distributed, Precision, Switches
from .models.attention import Attention, Backend, Selection, set_attention_backend
from .precision import autocast_dtype, set_matmul_precision

# ---------------------------------------------------------------------- device


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device named by ``spec``: ``auto`` (cuda when a GPU is visible, else cpu), ``cpu``, ``cuda``, ``cuda:N``.

    A bare ``cuda``/``auto`` gets an index: ``local_rank`` (a launcher's LOCAL_RANK) picks one GPU per
    process, round robin when there are more processes than GPUs; without it, the current device.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was asked for but no CUDA device is visible; use --device cpu")
        if device.index is None:  # an explicit index: parameters report cuda:N, and devices then compare equal
            index = torch.cuda.current_device() if local_rank is None else local_rank % torch.cuda.device_count()
            device = torch.device("cuda", index)
    return device


# ---------------------------------------------------------------------- precision


def apply_precision(precision: Precision) -> torch.dtype | None:
    """Set the process-wide TF32 flags of ``precision`` and return its autocast dtype (None: no autocast)."""
    set_matmul_precision(precision)
    return autocast_dtype(precision)


def autocast_context(device_type: str, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device_type``, or a no-op when ``dtype`` is None."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()


# ---------------------------------------------------------------------- attention


def apply_attention(model: nn.Module, backend: str, device: torch.device, dtype: torch.dtype | None) -> Selection:
    """Select ``backend`` (or check-then-select for ``auto``) for the dtype attention will see."""
    return set_attention_backend(model, backend, device, dtype or torch.float32)


def force_attention(model: nn.Module, backend: Backend) -> Selection:
    """Put every attention module of ``model`` on ``backend`` without probing it.

    For models on fake tensors (the memory model, the FLOP counts): the availability probe of
    :func:`apply_attention` needs real tensors. The backend must be one the counted computation
    can run, e.g. math (its two products are what a FLOP counter sees).
    """
    selection = Selection(backend.value, backend)
    for module in model.modules():
        if isinstance(module, Attention):
            module.selection = selection
    return selection


# ---------------------------------------------------------------------- checkpointing


def checkpointed_blocks(mode: Checkpointing, every: int, num_blocks: int) -> frozenset[int]:
    """Indices of the blocks to checkpoint: none, all, or every k-th (0, k, 2k, ...)."""
    mode = Checkpointing(mode)
    if mode is Checkpointing.NONE:
        return frozenset()
    if mode is Checkpointing.FULL:
        return frozenset(range(num_blocks))
    return frozenset(range(0, num_blocks, every))


def apply_checkpointing(model: nn.Module, mode: Checkpointing, every: int = 2) -> frozenset[int]:
    """Checkpoint the blocks of ``model`` that ``mode`` names; returns their indices."""
    blocks = checkpointed_blocks(mode, every, len(model.transformer_blocks))
    model.set_checkpointing(blocks)
    return blocks


# ---------------------------------------------------------------------- compile


def apply_compile(model: nn.Module, mode: CompileMode, scope: CompileScope) -> nn.Module:
    """``torch.compile`` the whole model, or each transformer block in place; the module to call forward on."""
    mode = CompileMode(mode)
    if mode is CompileMode.OFF:
        return model
    kwargs = {} if mode is CompileMode.DEFAULT else {"mode": mode.value}
    if CompileScope(scope) is CompileScope.MODEL:
        return torch.compile(model, **kwargs)
    for block in model.transformer_blocks:
        block.compile(**kwargs)  # in place: parameter names stay as they are
    return model


# ---------------------------------------------------------------------- DDP


def apply_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``module`` in DistributedDataParallel (the process group must already be initialised)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


# ---------------------------------------------------------------------- all of them


@dataclass(frozen=True)
class AppliedSwitches:
    """What applying the switches to a model produced."""

    forward_module: nn.Module
    """The module to call for the training forward (compiled and/or DDP-wrapped model)."""
    autocast_dtype: torch.dtype | None
    """Autocast dtype of the step, None without autocast."""
    attention: Selection
    """The attention backend in use."""
    checkpointed: frozenset[int]
    """Indices of the checkpointed blocks."""


def apply_switches(model: nn.Module, switches: Switches, device: torch.device) -> AppliedSwitches:
    """Apply every switch to ``model`` (already on ``device``) in the fixed order; see the module docstring."""
    dtype = apply_precision(switches.precision)
    selection = apply_attention(model, switches.attention, device, dtype)
    checkpointed = apply_checkpointing(model, switches.checkpointing, switches.checkpointing_k)
    forward_module = apply_compile(model, switches.compile, switches.compile_scope)
    if Distributed(switches.distributed) is Distributed.DDP:
        forward_module = apply_ddp(forward_module, device)
    return AppliedSwitches(forward_module, dtype, selection, checkpointed)


# ---------------------------------------------------------------------- the training forward


def diffusion_loss(
    forward_module: nn.Module,
    diffusion: Any,
    x0: torch.Tensor,
    t: torch.Tensor,
    model_kwargs: dict[str, Any],
    noise: torch.Tensor,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """The mean diffusion training loss of a batch, its forward under the precision switch's autocast.

    The Trainer's step, the memory model and the FLOP counts all compute the loss here, so that
    what is measured, modelled and counted is one computation.
    """
    with autocast_context(x0.device.type, dtype):
        losses = diffusion.training_losses(forward_module, x0, t, model_kwargs, noise)
    return losses["loss"].mean()

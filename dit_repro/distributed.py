"""Process-group set-up for DDP runs launched by torchrun or ``accelerate launch``.

Both launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; this module reads
them, picks gloo on CPUs and nccl on GPUs, and refuses a DDP run that was started without a
launcher (which would silently train as N independent single-process runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in the job."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (selects the GPU)."""


def launched_process() -> ProcessInfo:
    """The rank/world size a launcher exported, or a single process when none did."""
    return ProcessInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_process_group(device: torch.device) -> ProcessInfo:
    """Join the launcher's process group (gloo on CPU, nccl on CUDA) and return this process's place."""
    info = launched_process()
    if "MASTER_ADDR" not in os.environ or "WORLD_SIZE" not in os.environ:
        hint = ""
        if accelerate_uses_cpu():
            # accelerate launch --cpu starts one process unless mpirun is set up (--mpirun_hostfile).
            hint = (" accelerate launch --cpu starts a single process without mpirun; on CPUs launch with "
                    "`accelerate launch --multi_gpu --num_processes N -m dit_repro.cli train --device cpu ...` (gloo).")
        raise ConfigError(
            "--distributed ddp needs a launcher: run `torchrun --standalone --nproc_per_node=N -m dit_repro.cli train "
            "--distributed ddp ...` or `accelerate launch --multi_gpu --num_processes N -m dit_repro.cli train "
            f"--distributed ddp ...`.{hint}"
        )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if dist.get_world_size() != info.world_size:
        raise RuntimeError(f"process group has {dist.get_world_size()} members, the launcher said {info.world_size}")
    return info


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (an all-reduce); itself when not distributed.

    Logged losses go through this so they do not depend on the process count (one reference
    implementation divided the local loss by the process count without reducing it).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()


def gather_lists(local: list) -> list:
    """Every process's ``local`` list joined in rank order (an all-gather); ``local`` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return local
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


ACCELERATE_PRECISIONS = ("fp16", "bf16")
"""``accelerate launch --mixed_precision`` values that set the precision switch of the same name (``no`` sets none)."""


def accelerate_uses_cpu(environ: dict[str, str] | None = None) -> bool:
    """Whether ``accelerate launch --cpu`` started this process (ACCELERATE_USE_CPU)."""
    environ = os.environ if environ is None else environ
    return environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def accelerate_settings(
    precision: str | None, device: str, environ: dict[str, str] | None = None
) -> tuple[str, str]:
    """(precision, device) after ``accelerate launch``'s choices, which it passes in the environment.

    ``--mixed_precision fp16|bf16`` (ACCELERATE_MIXED_PRECISION) sets the precision switch when
    ``--precision`` is not given, and is refused when ``--precision`` says otherwise, naming both:
    training silently in another precision than the launcher was told is the trap this avoids.
    ``--cpu`` (ACCELERATE_USE_CPU) makes ``--device auto`` the CPU and contradicts ``--device cuda``.
    Only the launcher of accelerate is used: the switches apply precision and DDP themselves, in the
    order the measurements need, so an ``Accelerator`` would apply them a second time.
    """
    environ = os.environ if environ is None else environ
    mixed = environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mixed not in ("no", *ACCELERATE_PRECISIONS):
        raise ConfigError(
            f"accelerate launch --mixed_precision {mixed} has no precision switch here; use no, fp16 or bf16"
        )
    launched = mixed if mixed in ACCELERATE_PRECISIONS else None
    if precision is not None and launched is not None and precision != launched:
        raise ConfigError(
            f"--precision {precision} contradicts accelerate launch --mixed_precision {mixed} "
            f"(ACCELERATE_MIXED_PRECISION={mixed}); give one of them"
        )
    resolved_precision = precision or launched or "fp32"
    if accelerate_uses_cpu(environ):
        if device.startswith("cuda"):
            raise ConfigError(f"--device {device} contradicts accelerate launch --cpu (ACCELERATE_USE_CPU); give one of them")
        device = "cpu"
    return resolved_precision, device

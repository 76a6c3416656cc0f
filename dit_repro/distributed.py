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
        raise ConfigError(
            "distributed=ddp needs a launcher: run `torchrun --standalone --nproc_per_node=N -m dit_repro.cli train "
            "--distributed ddp ...` (or `accelerate launch --multi_gpu|--cpu --num_processes N -m dit_repro.cli train ...`)"
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


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

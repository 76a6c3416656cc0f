"""Measurement of one configuration inside its own process: warm-up, timed steps, memory, activations.

A :class:`RowSession` drives any :class:`Workload` (one training step per call). It warms up
until the step time is steady (:class:`~dit_repro.bench.stats.WarmupPolicy`), then times blocks
of steps on demand: with CUDA events on a GPU, ``time.perf_counter`` on a CPU. Data loading is
inside the timed region, as it is inside a training loop's steps per second.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .stats import WarmupPolicy

SAVED_ACTIVATIONS_METHOD = (
    "sum of untyped_storage().nbytes() over the unique storages packed by "
    "torch.autograd.graph.saved_tensors_hooks during one training step, excluding the storages of "
    "parameters and buffers"
)


class Workload(Protocol):
    """What a session measures: one full training step (data included) per call."""

    device: torch.device
    """Where the step runs; decides the clock and the memory probes."""

    def step(self) -> None:
        """Run one training step, fetching its batch; nothing is read back to the host."""

    def settle(self) -> None:
        """Read back and check what the steps so far produced (called outside the timed region)."""

    def persistent_tensors(self) -> Iterable[torch.Tensor]:
        """Parameters and buffers: tensors a step saves for backward that are not activations."""


@dataclass
class CudaMemoryTrace:
    """Per-step CUDA allocator peaks, each read after resetting the peak before the step."""

    allocated: list[int] = field(default_factory=list)
    """``max_memory_allocated`` of each timed step."""
    reserved: list[int] = field(default_factory=list)
    """``max_memory_reserved`` of each timed step."""
    encode_allocated: list[int] = field(default_factory=list)
    """Live-features rows: ``max_memory_allocated`` of each timed step's data phase (the VAE encode),
    read when the batch is ready (the peak is then reset)."""
    dit_allocated: list[int] = field(default_factory=list)
    """Live-features rows: ``max_memory_allocated`` from the ready batch to the end of each timed step."""


def cuda_memory_record(device: torch.device, trace: CudaMemoryTrace) -> dict[str, Any]:
    """The memory block of a CUDA result: overall peaks of the timed steps, per-step lists, allocator events."""
    stats = torch.cuda.memory_stats(device)
    return {
        "kind": "cuda",
        "max_allocated_bytes": max(trace.allocated, default=int(torch.cuda.max_memory_allocated(device))),
        "max_reserved_bytes": max(trace.reserved, default=int(torch.cuda.max_memory_reserved(device))),
        "per_step_max_allocated_bytes": list(trace.allocated),
        "per_step_max_reserved_bytes": list(trace.reserved),
        "encode_max_allocated_bytes": max(trace.encode_allocated) if trace.encode_allocated else None,
        "dit_step_max_allocated_bytes": max(trace.dit_allocated) if trace.dit_allocated else None,
        "num_alloc_retries": int(stats.get("num_alloc_retries", 0)),
        "num_ooms": int(stats.get("num_ooms", 0)),
    }


class PeakRss:
    """Peak resident set size over a window, reset at its start where the kernel allows it.

    Linux resets the high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs. Where
    that is not possible the process-lifetime peak of getrusage is reported, and the method says so.
    """

    def __init__(self) -> None:
        self.method = "getrusage ru_maxrss (process lifetime peak, not reset)"
        """How the figure was obtained."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM from /proc/self/status, reset through /proc/self/clear_refs before timing"
        except OSError:
            pass

    def record(self) -> dict[str, Any]:
        """The memory block of a CPU result."""
        return {"kind": "cpu", "peak_rss_bytes": self._read(), "peak_rss_method": self.method}

    def _read(self) -> int:
        if self.method.startswith("VmHWM"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def count_saved_activations(run_step: Callable[[], None], exclude: Iterable[torch.Tensor]) -> dict[str, Any]:
    """Bytes autograd saves for backward during ``run_step`` (see SAVED_ACTIVATIONS_METHOD).

    A storage is counted once however many views of it are saved: that is what memory holds.
    Under non-reentrant checkpointing only each checkpointed region's inputs reach these hooks,
    which is exactly what checkpointing keeps alive.
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}
    tensors = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal tensors
        tensors += 1
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in excluded:
            storages[pointer] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run_step()
    return {"bytes": int(sum(storages.values())), "storages": len(storages), "tensors": tensors,
            "method": SAVED_ACTIVATIONS_METHOD}


@dataclass
class StepTimes:
    """Times of consecutive steps: wall clock, and on a CPU also the CPU time the process used."""

    wall: list[float] = field(default_factory=list)
    """Seconds per step from the device clock (CUDA events, or perf_counter on a CPU)."""
    cpu: list[float] | None = None
    """CPU seconds per step (time.process_time), on a CPU only: unlike wall time it leaves out the
    time other processes held the core, so it is what the CPU gate compares on a shared machine."""

    def extend(self, other: StepTimes) -> None:
        """Append ``other``'s steps."""
        self.wall.extend(other.wall)
        if other.cpu is not None:
            self.cpu = (self.cpu or []) + other.cpu

    @property
    def gate_clock(self) -> list[float]:
        """The times steadiness and injected slowdowns refer to: CPU time on a CPU, else wall time."""
        return self.wall if self.cpu is None else self.cpu


def _stall(seconds: float, clock: Callable[[], float]) -> None:
    """Busy-wait until ``clock`` has advanced by ``seconds`` (exact, where time.sleep overshoots)."""
    deadline = clock() + seconds
    while clock() < deadline:
        pass


class RowSession:
    """Measures one workload: ``warmup`` once, ``time_block`` as often as the schedule asks, ``finish``.

    ``inject_slowdown`` (test-only) stretches every timed step by (factor - 1) times that step's
    own duration, by busy-waiting inside the timed region after the device has finished the step;
    it exists so that the gate's detection of a slower configuration can be shown. On a CPU the
    wait runs until the process has used that much more CPU time, as slower code would, and the
    factor is exact whatever the step costs at that moment (a figure taken during the warm-up fell
    short by about 1 %: warm-up steps ran with warmer caches than interleaved ones). On a GPU the
    reference is the step's synchronised host time, launch latency included, and the per-step
    synchronisation gives up the overlap of host and device: the factor seen by the CUDA events
    is somewhat above the one asked for.
    """

    def __init__(self, workload: Workload, policy: WarmupPolicy, inject_slowdown: float | None = None) -> None:
        if inject_slowdown is not None and inject_slowdown < 1.0:
            raise ValueError(f"inject_slowdown must be >= 1.0 (a slowdown factor), got {inject_slowdown}")
        self.workload = workload
        """The step being measured."""
        self.policy = policy
        """When the warm-up ends."""
        self.inject_slowdown = inject_slowdown
        """Test-only slowdown factor of the timed steps, or None."""
        self.on_cuda = workload.device.type == "cuda"
        """Clock and memory probes follow the device."""
        self.clock = "cuda-events" if self.on_cuda else "perf_counter"
        """Name of the wall clock (stored in the results)."""
        self.times = StepTimes(cpu=None if self.on_cuda else [])
        """Every timed step so far, in order."""
        self.cuda_memory = CudaMemoryTrace()
        """Per-step allocator peaks (CUDA only)."""
        self._peak_rss: PeakRss | None = None

    def _timed(self, n: int, slowdown: float | None) -> StepTimes:
        if self.on_cuda:
            return StepTimes(self._timed_cuda(n, slowdown))
        times = StepTimes(cpu=[])
        assert times.cpu is not None
        for _ in range(n):
            start, start_cpu = time.perf_counter(), time.process_time()
            self.workload.step()
            if slowdown is not None:
                _stall((slowdown - 1.0) * (time.process_time() - start_cpu), time.process_time)
            times.wall.append(time.perf_counter() - start)
            times.cpu.append(time.process_time() - start_cpu)
        return times

    def _timed_cuda(self, n: int, slowdown: float | None) -> list[float]:
        device = self.workload.device
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        encode_peaks: list[int] = []
        split = getattr(self.workload, "split_memory_at_ready_batch", None)
        if split is not None:
            # Allocator bookkeeping only (host side, no wait for the device).
            def ready() -> None:
                encode_peaks.append(int(torch.cuda.max_memory_allocated(device)))
                torch.cuda.reset_peak_memory_stats(device)

            split(ready)
        for start, end in zip(starts, ends, strict=True):
            torch.cuda.reset_peak_memory_stats(device)
            start.record()
            begun = time.perf_counter()
            self.workload.step()
            if slowdown is not None:
                # Stall only once the GPU is idle, so that the events see the added time.
                torch.cuda.synchronize(device)
                _stall((slowdown - 1.0) * (time.perf_counter() - begun), time.perf_counter)
            end.record()
            allocated = int(torch.cuda.max_memory_allocated(device))
            if split is not None and encode_peaks:
                self.cuda_memory.encode_allocated.append(encode_peaks[-1])
                self.cuda_memory.dit_allocated.append(allocated)
                allocated = max(allocated, encode_peaks[-1])
            self.cuda_memory.allocated.append(allocated)
            self.cuda_memory.reserved.append(int(torch.cuda.max_memory_reserved(device)))
        if split is not None:
            split(None)
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in zip(starts, ends, strict=True)]

    def warmup(self) -> dict[str, Any]:
        """Run steps until the policy calls the step time steady (or gives up); returns the warm-up record.

        Steadiness is judged on CPU time on a CPU (other processes' load must not prolong it).
        """
        times = StepTimes(cpu=None if self.on_cuda else [])
        while not self.policy.is_done(times.gate_clock):
            times.extend(self._timed(1, None))
        self.workload.settle()
        if self.on_cuda:
            self.cuda_memory = CudaMemoryTrace()  # warm-up peaks are not the steady state's
        return {"steps": len(times.wall), "steady": self.policy.is_steady(times.gate_clock),
                "step_times_s": times.wall, "cpu_times_s": times.cpu}

    def time_block(self, steps: int) -> StepTimes:
        """Time ``steps`` more steps; returns their times (also appended to :attr:`times`)."""
        if steps < 1:
            raise ValueError(f"a timed block needs at least one step, got {steps}")
        if self._peak_rss is None and not self.on_cuda:
            self._peak_rss = PeakRss()
        block = self._timed(steps, self.inject_slowdown)
        self.workload.settle()
        self.times.extend(block)
        return block

    def memory_record(self) -> dict[str, Any]:
        """The memory block of the result (timed steps only)."""
        if self.on_cuda:
            return cuda_memory_record(self.workload.device, self.cuda_memory)
        return (self._peak_rss or PeakRss()).record()

    def saved_activations(self) -> dict[str, Any]:
        """Saved-for-backward bytes of one more step (run after timing so it cannot disturb it)."""
        return count_saved_activations(self.workload.step, self.workload.persistent_tensors())

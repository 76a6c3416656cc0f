"""One benchmark row in its own process: ``python -m dit_repro.bench.worker``.

A fresh process per configuration keeps compiled graphs, autotuning caches and the CUDA caching
allocator of one row from leaking into the next. The parent (:mod:`dit_repro.bench.runner`)
talks to the worker in JSON lines: one request on stdin, one reply on the protocol stream (the
process's original stdout; anything the libraries print is sent to stderr instead).

Requests, in order: ``setup`` (with the row: its ``workload``, ``warmup`` policy and
``inject_slowdown`` and ``threads``), ``warmup``, ``time`` (any number of times, with
``steps``), ``finish``. Every reply has ``ok``; a failed request answers ``ok: false`` with a
``status`` (``oom``, ``unavailable`` or ``error``) and an ``error`` block, and the worker exits.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

import torch

from dit_repro.models.attention import AttentionBackendUnavailable

from .measure import CudaMemoryTrace, RowSession, cuda_memory_record
from .stats import WarmupPolicy
from .workload import MatmulWorkload, TrainerWorkload, build_workload

WORKER_PROTOCOL = 2
"""Version of the request/reply protocol. 2: the setup reply names the package the worker runs, so that
the two sides of a same-run A/B (``bench --against``) can prove which code they measured."""


ALLOCATION_FAILURES = ("can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")
"""Messages of a plain RuntimeError that mean memory ran out: the CPU allocator's, and cuBLAS's and
cuDNN's when they cannot get their workspace (the caching allocator's own OOM has its own type)."""


def classify_failure(exc: BaseException) -> str:
    """Result status of an exception: ``oom``, ``unavailable`` or ``error``."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return "oom"
    if isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in ALLOCATION_FAILURES):
        return "oom"
    if isinstance(exc, AttentionBackendUnavailable):
        return "unavailable"
    return "error"


def failure_reply(exc: BaseException, phase: str, device: torch.device | None) -> dict[str, Any]:
    """The reply to a request that raised: status, error block and, on a GPU, the memory at the failure."""
    status = classify_failure(exc)
    reply: dict[str, Any] = {
        "ok": False,
        "status": status,
        "error": {
            "type": type(exc).__name__,
            "message": str(exc).strip() or type(exc).__name__,
            "traceback": None if status == "oom" else traceback.format_exc(),
            "phase": phase,
        },
    }
    if status == "oom" and device is not None and device.type == "cuda":
        reply["memory"] = cuda_memory_record(device, CudaMemoryTrace())  # the peaks up to the failure
    return reply


SPAWNED_AT_ENV = "DIT_REPRO_SPAWNED_AT"
"""Environment variable in which the parent passes the wall-clock time (``time.time()``) it started the worker."""


class Worker:
    """Holds the row's session between requests and answers them."""

    def __init__(self) -> None:
        self.session: RowSession | None = None
        """The measurement session, once set up."""
        self.workload: TrainerWorkload | MatmulWorkload | None = None
        """The row's workload, once built."""
        self.import_s: float | None = None
        """Seconds from the parent's start of this process to the first request (None: not told when)."""

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Answer one request; the flag says whether the worker should exit afterwards."""
        op = request.get("op")
        try:
            if op == "setup":
                return self._setup(request["row"]), False
            if self.session is None:
                raise RuntimeError(f"request {op!r} before setup")
            if op == "warmup":
                return {"ok": True, "warmup": self.session.warmup()}, False
            if op == "time":
                block = self.session.time_block(int(request["steps"]))
                return {"ok": True, "times": block.wall, "cpu_times": block.cpu}, False
            if op == "finish":
                return self._finish(), True
            raise ValueError(f"unknown request {op!r}; expected setup, warmup, time or finish")
        except Exception as exc:  # every failure becomes a result; the parent decides what it means
            return failure_reply(exc, str(op), self._device()), True

    def _device(self) -> torch.device | None:
        """The row's device; during setup (no workload yet) the GPU if this process has used it."""
        if self.workload is not None:
            return self.workload.device
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return None

    def _setup(self, row: dict[str, Any]) -> dict[str, Any]:
        if row.get("threads"):
            torch.set_num_threads(int(row["threads"]))
        self.workload = build_workload(row["workload"])
        self.session = RowSession(self.workload, WarmupPolicy(**row["warmup"]), row.get("inject_slowdown"))
        return {"ok": True, "info": {**self.workload.describe(), "clock": self.session.clock,
                                     "setup_s": {"import_s": self.import_s, **self.workload.fixed_costs()},
                                     "inject_slowdown": self.session.inject_slowdown, "protocol": WORKER_PROTOCOL,
                                     "package": str(Path(__file__).resolve().parent.parent)}}

    def _finish(self) -> dict[str, Any]:
        assert self.session is not None
        memory = self.session.memory_record()
        notes: list[str] = []
        try:
            saved = self.session.saved_activations()
        except Exception as exc:  # e.g. a compiled graph that refuses saved-tensor hooks
            saved = None
            notes.append(f"saved activations not counted: {type(exc).__name__}: {exc}")
        return {"ok": True, "memory": memory, "saved_activations": saved, "notes": notes}


def serve(requests: IO[str], replies: IO[str]) -> int:
    """Answer requests from ``requests`` on ``replies`` until ``finish``, a failure or end of input."""
    worker = Worker()
    spawned_at = os.environ.get(SPAWNED_AT_ENV)
    # Interpreter start and every import up to here: the worker's share of a row's fixed cost.
    worker.import_s = None if spawned_at is None else max(0.0, time.time() - float(spawned_at))
    for line in requests:
        if not line.strip():
            continue
        reply, done = worker.handle(json.loads(line))
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if done:
            return 0
    return 0


def main() -> int:
    """Entry point: move stdout to stderr for the libraries, keep the original for replies."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(sys.stdin, replies)


if __name__ == "__main__":
    sys.exit(main())

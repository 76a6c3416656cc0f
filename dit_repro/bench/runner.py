"""Runs the rows of a matrix, each in a fresh worker process, on one of two schedules.

``sequential``: one row after another, each warmed up and timed to the end before the next
starts (the GPU schedule: only one row holds device memory at a time).

``interleaved``: every row's worker is started and warmed up, then the rows time blocks of
steps in turn, in a fresh seeded shuffle every round. Slow drifts of the machine (other jobs,
thermal state) then fall on all rows alike and cancel in ratios between rows. Only one worker
computes at any moment; the others wait on their pipe. This is the CPU schedule.

The shuffle never lets a row time two blocks back to back (across a round boundary, after the
warm-up, or when a row that failed drops out): a row that follows itself finds its own data still
in the caches, which made the first and last rows of a fixed or reversed order measurably faster
than identical rows in the middle (about 5-10 % on a 2-core VM). Shuffling also gives every row a
varying predecessor, so no row always inherits the caches of the same neighbour. Two rows simply
alternate.

A row that runs out of memory is a result (``oom``) and the matrix goes on; so is one whose
worker raises (``error``), dies (``crashed``) or stops answering (``timeout``).
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .reference import worker_environment
from .stats import WarmupPolicy
from .worker import SPAWNED_AT_ENV

SCHEDULES = ("sequential", "interleaved")

WORKER_COMMAND = (sys.executable, "-m", "dit_repro.bench.worker")
"""How a worker process is started."""

_STDERR_TAIL_CHARS = 4000

ORDER_SEED = 0
"""Seed of the interleaved schedule's shuffles: a rerun times the rows in the same order."""


class WorkerFailure(RuntimeError):
    """A worker that died or stopped answering; ``status`` is ``crashed`` or ``timeout``."""

    def __init__(self, status: str, message: str, stderr_tail: str | None) -> None:
        super().__init__(message)
        self.status = status
        """``crashed`` or ``timeout``."""
        self.stderr_tail = stderr_tail
        """The end of the worker's stderr, for the error block."""


class WorkerHandle:
    """A worker process and its JSON-lines channel; its stderr goes to ``log_path``."""

    def __init__(self, log_path: Path, command: Sequence[str] = WORKER_COMMAND, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log_path = log_path
        """File holding the worker's stderr (and whatever the libraries printed)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - kept open for the life of the process
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, bufsize=0,
            env={**os.environ, **(env or {})}, cwd=cwd,
        )
        """The worker process."""
        self._buffer = bytearray()

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and wait at most ``timeout_s`` for its reply."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            raise self._failure("crashed", f"worker exited before request {message.get('op')!r}") from None
        line = self._read_line(timeout_s)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise self._failure("crashed", f"worker sent a malformed reply: {line[:200]!r}") from None

    def _read_line(self, timeout_s: float) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self.kill()
                    raise self._failure("timeout", f"worker gave no reply within {timeout_s:.0f} s")
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.process.wait()
                    raise self._failure("crashed", f"worker process exited with code {code} without replying")
                self._buffer += chunk
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode()

    def _failure(self, status: str, message: str) -> WorkerFailure:
        self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return WorkerFailure(status, message, text[-_STDERR_TAIL_CHARS:] or None)

    def kill(self) -> None:
        """Stop the worker now."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self, timeout_s: float = 30.0) -> None:
        """Close the channel and reap the process (killed if it lingers)."""
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()


@dataclass
class RowJob:
    """One row to run: what the worker builds, and what comes back."""

    name: str
    """Row name."""
    switches: dict[str, Any]
    """The row's switches as given by the matrix (replaced by the resolved ones after setup)."""
    workload: dict[str, Any]
    """The worker's ``workload`` block."""
    inject_slowdown: float | None = None
    """Test-only slowdown factor of this row's timed steps."""
    threads: int | None = None
    """torch threads of the worker (None: torch's default)."""
    side: str | None = None
    """``candidate`` or ``reference`` in a same-run A/B (``bench --against``), else None."""
    code_root: Path | None = None
    """Folder whose ``dit_repro`` the worker must run (put first on its path, checked after setup);
    None: whatever the worker imports, as outside an A/B."""
    status: str = "pending"
    """ok, oom, unavailable, error, crashed or timeout once run."""
    error: dict[str, Any] | None = None
    """What went wrong, when status is not ok."""
    info: dict[str, Any] = field(default_factory=dict)
    """The worker's description of the workload (config, attention, analytic work)."""
    warmup: dict[str, Any] | None = None
    """The warm-up record."""
    times: list[float] = field(default_factory=list)
    """Every timed step (wall clock), in order."""
    cpu_times: list[float] | None = None
    """CPU time of every timed step, in order (CPU rows only)."""
    memory: dict[str, Any] | None = None
    """Memory block."""
    saved_activations: dict[str, Any] | None = None
    """Saved-for-backward bytes."""
    notes: list[str] = field(default_factory=list)
    """Remarks (e.g. a figure that could not be taken)."""
    fixed_cost: dict[str, float] = field(default_factory=dict)
    """Seconds from the worker's start to its first timed step: ``import_s`` (interpreter and
    libraries), ``data_s`` (data source), ``build_s`` (model, switches, optimizer, EMA), ``warmup_s``
    and their ``total_s`` (see :func:`fixed_cost_split`)."""
    handle: WorkerHandle | None = None
    """The live worker while the row runs."""

    @property
    def label(self) -> str:
        """The row's name, with its side in an A/B: ``gcp [reference]``."""
        return self.name if self.side is None else f"{self.name} [{self.side}]"

    @property
    def active(self) -> bool:
        """True while the row still runs without failure."""
        return self.status == "pending"


@dataclass(frozen=True)
class Schedule:
    """How rows are timed."""

    kind: str
    """``sequential`` or ``interleaved``."""
    timed_steps: int
    """Timed steps per row."""
    block_steps: int
    """Steps per block when interleaved."""
    warmup: WarmupPolicy
    """When each row's warm-up ends."""
    timeout_s: float
    """Longest wait for any one reply (the warm-up of a compiled row included)."""

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.timed_steps < 1 or self.block_steps < 1:
            raise ValueError(f"timed steps (--steps) and steps per block (--block-steps) must be >= 1, got "
                             f"{self.timed_steps} and {self.block_steps}")
        if self.timeout_s <= 0:
            raise ValueError(f"the reply timeout (--row-timeout) must be positive, got {self.timeout_s}")

    def blocks(self) -> list[int]:
        """Sizes of the blocks each row times (one block when sequential)."""
        if self.kind == "sequential":
            return [self.timed_steps]
        count = math.ceil(self.timed_steps / self.block_steps)
        sizes = [self.block_steps] * count
        sizes[-1] = self.timed_steps - self.block_steps * (count - 1)
        return sizes


def fixed_cost_split(setup: dict[str, float | None], warmup_s: float) -> dict[str, float]:
    """A row's fixed cost: the worker's own ``import_s``, ``data_s`` and ``build_s`` (0 where it could not
    tell), the warm-up's duration, and their ``total_s``. Time a worker spent waiting for its turn is not
    counted; but the interleaved schedule (CPU) starts every worker at once, so there ``import_s``
    includes the cores being shared by all of them importing together."""
    cost = {key: float(setup.get(key) or 0.0) for key in ("import_s", "data_s", "build_s")}
    cost["warmup_s"] = warmup_s
    cost["total_s"] = sum(cost.values())
    return cost


def format_fixed_cost(cost: dict[str, float]) -> str:
    """``12.3 s (import 4.1, data 0.2, build 6.0, warm-up 2.0)``."""
    return (f"{cost['total_s']:.1f} s (import {cost['import_s']:.1f}, data {cost['data_s']:.1f}, "
            f"build {cost['build_s']:.1f}, warm-up {cost['warmup_s']:.1f})")


def round_order(rng: random.Random, rows: Sequence[int], previous: int | None) -> list[int]:
    """One round of an interleaved schedule: a shuffle of ``rows`` (the indices still running) whose
    first entry is not ``previous``, the row that computed last, whenever another row is left."""
    order = list(rows)
    rng.shuffle(order)
    if len(order) > 1 and order[0] == previous:
        order[0], order[-1] = order[-1], order[0]
    return order


def log_name(row_name: str) -> str:
    """A file name for a row's worker log (row names hold '/', '+', ':')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", row_name) + ".log"


class MatrixRunner:
    """Runs jobs on a schedule, printing one progress line per event to ``progress``."""

    def __init__(self, schedule: Schedule, log_dir: Path, worker_command: Sequence[str] = WORKER_COMMAND,
                 progress: Any = sys.stderr) -> None:
        self.schedule = schedule
        """How rows are timed."""
        self.log_dir = log_dir
        """Directory of the per-row worker logs."""
        self.worker_command = tuple(worker_command)
        """Command of a worker process."""
        self.progress = progress
        """Stream for progress lines."""

    def run(self, jobs: list[RowJob], on_row_done: Callable[[RowJob], None] | None = None) -> list[RowJob]:
        """Run every job; each ends with a status. Returns ``jobs``.

        ``on_row_done`` is called after each row has its final status (after every row on the
        sequential schedule, at the end on the interleaved one), e.g. to write partial results.
        """
        done = on_row_done or (lambda job: None)
        if self.schedule.kind == "sequential":
            for job in jobs:
                self._start(job)
                self._prepare(job)
                self._time_blocks([job])
                self._finish(job)
                done(job)
        else:
            for job in jobs:
                self._start(job)
            for job in jobs:
                self._prepare(job)
            self._time_blocks(jobs)
            for job in jobs:
                self._finish(job)
                done(job)
        return jobs

    def say(self, text: str) -> None:
        """Print one progress line."""
        print(f"[bench] {text}", file=self.progress, flush=True)

    def _start(self, job: RowJob) -> None:
        env = cwd = None
        if job.code_root is not None:
            env, cwd = worker_environment(job.code_root), job.code_root
        env = {**(env or {}), SPAWNED_AT_ENV: repr(time.time())}
        job.handle = WorkerHandle(self.log_dir / log_name(job.label), self.worker_command, env=env, cwd=cwd)

    def _ask(self, job: RowJob, message: dict[str, Any]) -> dict[str, Any] | None:
        """Send a request; on any failure record it on the job, stop its worker and return None."""
        assert job.handle is not None
        try:
            reply = job.handle.request(message, self.schedule.timeout_s)
        except WorkerFailure as failure:
            job.status = failure.status
            job.error = {"type": "WorkerFailure", "message": str(failure), "traceback": None,
                         "stderr_tail": failure.stderr_tail, "phase": message["op"]}
        else:
            if reply.get("ok"):
                return reply
            job.status = reply["status"]
            job.error = reply["error"]
            job.memory = reply.get("memory")
        self.say(f"{job.label}: {job.status} during {message['op']}: {job.error['message'].splitlines()[0]}")
        job.handle.close()
        job.handle = None
        return None

    def _prepare(self, job: RowJob) -> None:
        reply = self._ask(job, {"op": "setup", "row": {
            "workload": job.workload, "warmup": self.schedule.warmup.to_dict(), "inject_slowdown": job.inject_slowdown,
            "threads": job.threads}})
        if reply is None:
            return
        job.info = reply["info"]
        if not self._runs_expected_code(job):
            return
        self.say(f"{job.label}: warming up")
        began = time.perf_counter()
        reply = self._ask(job, {"op": "warmup"})
        if reply is None:
            return
        job.warmup = reply["warmup"]
        job.fixed_cost = fixed_cost_split(job.info.get("setup_s") or {}, time.perf_counter() - began)
        self.say(f"{job.label}: fixed cost {format_fixed_cost(job.fixed_cost)}")
        steady = "steady" if job.warmup["steady"] else "NOT steady (warm-up cap reached)"
        self.say(f"{job.label}: {job.warmup['steps']} warm-up steps, {steady}")

    def _runs_expected_code(self, job: RowJob) -> bool:
        """In an A/B, fail the row unless its worker imported the code of its side."""
        package = job.info.get("package")
        if job.code_root is None or (package and Path(package).resolve() == (job.code_root / "dit_repro").resolve()):
            return True
        job.status = "error"
        job.error = {"type": "WrongCode", "message": f"the {job.side} worker ran dit_repro from {package}, not from "
                     f"{job.code_root / 'dit_repro'}", "traceback": None, "phase": "setup"}
        self.say(f"{job.label}: error during setup: {job.error['message']}")
        assert job.handle is not None
        job.handle.kill()
        job.handle.close()
        job.handle = None
        return False

    def _time_blocks(self, jobs: list[RowJob]) -> None:
        rng = random.Random(ORDER_SEED)
        previous = len(jobs) - 1  # the last row warmed up just before the first round
        for steps in self.schedule.blocks():
            queue = collections.deque(round_order(rng, [i for i, job in enumerate(jobs) if job.active], previous))
            while queue:
                index = queue.popleft()
                if index == previous and queue:  # the row between them failed: keep them apart
                    queue.append(index)
                    index = queue.popleft()
                job = jobs[index]
                reply = self._ask(job, {"op": "time", "steps": steps})
                if reply is not None:
                    previous = index
                    job.times.extend(reply["times"])
                    if reply.get("cpu_times") is not None:
                        job.cpu_times = (job.cpu_times or []) + reply["cpu_times"]
        for job in jobs:
            if job.active and job.times:
                self.say(f"{job.label}: {len(job.times)} steps timed")

    def _finish(self, job: RowJob) -> None:
        if not job.active:
            return
        reply = self._ask(job, {"op": "finish"})
        if reply is None:
            return
        job.memory = reply["memory"]
        job.saved_activations = reply["saved_activations"]
        job.notes.extend(reply["notes"])
        job.status = "ok"
        assert job.handle is not None
        job.handle.close()
        job.handle = None

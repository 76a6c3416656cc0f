"""Rows in fresh worker processes: schedules, out-of-memory as a result, crashes, timeouts, injection.

The rows run the small matmul workload so that each worker needs only torch, not a model.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import pytest
import torch

from dit_repro.bench.runner import MatrixRunner, RowJob, Schedule, round_order
from dit_repro.bench.stats import WarmupPolicy
from dit_repro.bench.worker import classify_failure

POLICY = WarmupPolicy(window=3, rel_tol=0.5, min_steps=6, max_steps=30)


def _job(name: str, size: int = 384, inject: float | None = None) -> RowJob:
    # A few milliseconds per step, so that scheduling noise is small against the injected 50 %.
    return RowJob(name, {}, {"kind": "matmul", "size": size, "batch": 256}, inject, threads=1)


def _runner(tmp_path: Path, kind: str, steps: int = 12, block: int = 4, timeout: float = 120.0,
            command: tuple[str, ...] | None = None) -> MatrixRunner:
    schedule = Schedule(kind, steps, block, POLICY, timeout)
    kwargs = {"worker_command": command} if command else {}
    return MatrixRunner(schedule, tmp_path / "logs", progress=io.StringIO(), **kwargs)


def test_schedule_blocks_cover_the_timed_steps() -> None:
    assert Schedule("interleaved", 12, 5, POLICY, 1.0).blocks() == [5, 5, 2]
    assert Schedule("sequential", 12, 5, POLICY, 1.0).blocks() == [12]
    with pytest.raises(ValueError, match="schedule"):
        Schedule("parallel", 12, 5, POLICY, 1.0)


def _sequence(rows: int, rounds: int, seed: int, drop: dict[int, int] | None = None) -> tuple[list[list[int]], list[int]]:
    """Rounds as the runner builds them, row ``r`` dropping out before round ``drop[r]``."""
    rng, previous, orders = random.Random(seed), rows - 1, []
    for round_index in range(rounds):
        active = [r for r in range(rows) if round_index < (drop or {}).get(r, rounds)]
        orders.append(round_order(rng, active, previous))
        previous = orders[-1][-1]
    return orders, [row for order in orders for row in order]


@pytest.mark.parametrize("rows", [2, 3, 6])
def test_interleaved_rounds_are_shuffles_without_a_row_twice_in_a_row(rows: int) -> None:
    orders, sequence = _sequence(rows, 200, seed=3)
    assert all(sorted(order) == list(range(rows)) for order in orders)
    assert sequence[0] != rows - 1  # the last row to warm up does not time first either
    assert all(a != b for a, b in zip(sequence[:-1], sequence[1:], strict=True))
    assert orders == _sequence(rows, 200, seed=3)[0]  # seeded: a rerun times the same order
    if rows >= 3:
        assert len({tuple(order) for order in orders}) > 1  # not one fixed order
        predecessors = {order[i - 1] for order in orders for i in range(1, rows) if order[i] == 0}
        assert len(predecessors) == rows - 1  # row 0 follows every other row at some point


class _RecordingRunner(MatrixRunner):
    """The runner's real interleaving loop with the workers replaced by a log of who timed when."""

    def __init__(self, fail_at: dict[str, int]) -> None:
        super().__init__(Schedule("interleaved", 400, 2, POLICY, 1.0), Path("unused"), progress=io.StringIO())
        self.fail_at = fail_at
        """Row name -> how many blocks it times before failing."""
        self.timed: list[str] = []

    def _ask(self, job: RowJob, message: dict) -> dict | None:
        if self.timed.count(job.name) == self.fail_at.get(job.name, -1):
            job.status = "error"
            return None
        self.timed.append(job.name)
        return {"times": [0.001] * message["steps"], "cpu_times": None}


def test_the_runner_never_times_a_row_twice_in_a_row_even_when_rows_drop_out() -> None:
    # Three rows with the middle one failed from the start (as in the out-of-memory test below),
    # six rows of which two fail part-way, and three rows with one failing after each of 1..40
    # blocks: some of those failures open a round, where the row that timed last comes next.
    cases = [(["a", "b", "c"], {"b": 0}), (["a", "b", "c", "d", "e", "f"], {"c": 40, "e": 90})]
    cases += [(["a", "b", "c"], {"b": blocks}) for blocks in range(1, 41)]
    for names, fail_at in cases:
        runner = _RecordingRunner(fail_at)
        runner._time_blocks([RowJob(name, {}, {"kind": "test"}) for name in names])
        assert runner.timed[0] != names[-1]  # the last row to warm up does not time first
        assert all(a != b for a, b in zip(runner.timed[:-1], runner.timed[1:], strict=True))
        for name in names:
            assert runner.timed.count(name) == fail_at.get(name, 200)  # 400 steps in blocks of 2
    assert round_order(random.Random(0), [4], previous=4) == [4]  # one row left: nothing to avoid


@pytest.mark.slow
def test_interleaved_rows_time_every_step_and_an_oom_row_does_not_stop_the_matrix(tmp_path: Path) -> None:
    # The middle row asks for a 10^7 x 10^7 weight: the allocator refuses it during setup.
    jobs = [_job("a"), _job("huge", size=10**7), _job("b", inject=1.5)]
    runner = _runner(tmp_path, "interleaved", steps=20)
    runner.run(jobs)
    a, huge, b = jobs
    assert (a.status, huge.status, b.status) == ("ok", "oom", "ok")
    assert huge.error is not None and "can't allocate memory" in huge.error["message"]
    assert huge.error["phase"] == "setup" and huge.times == []
    for job in (a, b):
        assert len(job.times) == 20
        assert job.warmup is not None and job.warmup["steps"] >= POLICY.min_steps
        assert job.saved_activations is not None and job.saved_activations["bytes"] == 2 * 256 * 384 * 4  # input + ReLU output, fp32
        assert job.memory is not None and job.memory["kind"] == "cpu" and job.memory["peak_rss_bytes"] > 0
        assert job.handle is None and (tmp_path / "logs" / f"{job.name}.log").exists()
    # b's worker applies the injected slowdown to its timed steps (what that does to each step is shown,
    # independent of the machine's load, on a virtual clock in test_bench_measure.py).
    assert a.cpu_times is not None and b.cpu_times is not None and len(b.cpu_times) == 20
    assert (a.info["inject_slowdown"], b.info["inject_slowdown"]) == (None, 1.5)


@pytest.mark.slow
def test_sequential_schedule_runs_one_row_at_a_time(tmp_path: Path) -> None:
    jobs = [_job("a"), _job("b")]
    runner = _runner(tmp_path, "sequential", steps=5)
    runner.run(jobs)
    assert [j.status for j in jobs] == ["ok", "ok"]
    assert [len(j.times) for j in jobs] == [5, 5]


def test_a_worker_that_dies_is_a_crashed_row_with_its_stderr(tmp_path: Path) -> None:
    command = (sys.executable, "-c", "import sys; sys.stderr.write('fatal: simulated'); sys.exit(3)")
    jobs = [_job("a")]
    _runner(tmp_path, "sequential", command=command).run(jobs)
    assert jobs[0].status == "crashed"
    assert "code 3" in jobs[0].error["message"]
    assert "fatal: simulated" in jobs[0].error["stderr_tail"]


def test_a_worker_that_stops_answering_is_a_timeout(tmp_path: Path) -> None:
    command = (sys.executable, "-c", "import time; time.sleep(60)")
    jobs = [_job("a")]
    _runner(tmp_path, "sequential", timeout=1.0, command=command).run(jobs)
    assert jobs[0].status == "timeout"
    assert "no reply within 1 s" in jobs[0].error["message"]


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_out_of_memory_is_a_result_with_the_memory_at_the_failure(tmp_path: Path) -> None:
    # 2^18 x 2^18 fp32 is 256 GiB: more than any single GPU holds.
    jobs = [RowJob("huge", {}, {"kind": "matmul", "size": 2**18, "batch": 8, "device": "cuda"}),
            RowJob("fits", {}, {"kind": "matmul", "size": 1024, "batch": 1024, "device": "cuda"})]
    _runner(tmp_path, "sequential", steps=5).run(jobs)
    huge, fits = jobs
    assert huge.status == "oom" and huge.error["type"] == "OutOfMemoryError"
    assert huge.memory is not None and huge.memory["kind"] == "cuda" and huge.memory["num_ooms"] >= 1
    assert fits.status == "ok" and len(fits.times) == 5 and fits.memory["kind"] == "cuda"


def test_library_allocation_failures_are_out_of_memory_results() -> None:
    # The messages torch raises when cuBLAS or cuDNN cannot get memory, and the CPU allocator's.
    for message in ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED", "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
                    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"):
        assert classify_failure(RuntimeError(message)) == "oom", message
    assert classify_failure(torch.OutOfMemoryError("CUDA out of memory")) == "oom"
    assert classify_failure(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")) == "error"
    assert classify_failure(ValueError("bad")) == "error"

"""Rows in fresh worker processes: schedules, out-of-memory as a result, crashes, timeouts, injection.

The rows run the small matmul workload so that each worker needs only torch, not a model.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from dit_repro.bench.runner import MatrixRunner, RowJob, Schedule, round_orders
from dit_repro.bench.stats import WarmupPolicy

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


@pytest.mark.slow
@pytest.mark.parametrize("rows", [1, 2, 3, 6])
def test_interleaved_rounds_are_shuffles_without_a_row_twice_in_a_row(rows: int) -> None:
    orders = round_orders(rows, 200, seed=3)
    assert all(sorted(order) == list(range(rows)) for order in orders)
    sequence = [index for order in orders for index in order]
    if rows > 1:
        assert all(a != b for a, b in zip(sequence[:-1], sequence[1:], strict=True))
    assert orders == round_orders(rows, 200, seed=3)  # seeded: a rerun times the same order
    if rows >= 3:
        assert len({tuple(order) for order in orders}) > 1  # not one fixed order
        predecessors = {order[i - 1] for order in orders for i in range(1, rows) if order[i] == 0}
        assert len(predecessors) == rows - 1  # row 0 follows every other row at some point


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
    # b is a's workload stretched by 1.5 in CPU time (wall time also carries other processes' load).
    # The bounds allow for the CPU time of identical steps varying by ~10 % on a shared machine.
    assert a.cpu_times is not None and b.cpu_times is not None and len(b.cpu_times) == 20
    assert 1.25 < np.median(b.cpu_times) / np.median(a.cpu_times) < 1.8


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

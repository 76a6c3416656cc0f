"""The gate's self-test across fresh runs: what run-to-run noise does to the CPU gate.

The step-time self-test (``selftest.py``) resamples baseline and candidate from the steps of one
process, so it sees only the noise within a run. A real gate compares two runs made in fresh
processes, minutes or weeks apart, and on a shared machine rows then also move against each other:
other tenants load the memory system unequally over time, and every process gets its own page
placement. This self-test measures that directly.

``runs`` fresh interleaved runs of ``rows`` identical one-thread matmul rows are timed as the CPU
bench times them (process CPU time, rounds of two steps, a shuffled order every round). Every
pair of runs (the earlier one as baseline, the later as candidate) and every row goes through
the gate's relative step-time comparison, the candidate row's times scaled by each factor. The
share of regression verdicts at x1.00 is the per-row false-alarm rate across runs; at x1.10 the
detection rate. The pairs share runs, so the draws are not independent and the intervals are
indicative only.
"""

from __future__ import annotations

import io
import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from dit_repro.bench.runner import MatrixRunner, RowJob, Schedule
from dit_repro.bench.stats import WarmupPolicy

from .compare import RunSamples, Thresholds, Verdict
from .metrics import MIN_ROWS_FOR_RELATIVE_TIME, GateInputs, machine_speed_factor, relative_time_comparison
from .selftest import FACTORS, RateEstimate, spread_line

BLOCK_STEPS = 2
"""Steps per round, as in the CPU smoke bench."""
ROWS, SIZE, BATCH = 6, 384, 512
"""Default rows per run and the matmul step each row times (about 3 ms of CPU time)."""


def time_identical_rows(runs: int, rows: int = ROWS, steps: int = 120, size: int = SIZE, batch: int = BATCH,
                        progress: TextIO | None = None) -> list[RunSamples]:
    """Per-step CPU times of ``runs`` fresh interleaved runs of ``rows`` identical matmul rows.

    Every run starts new worker processes, as every ``dit-repro bench`` does.
    """
    if runs < 2 or rows < MIN_ROWS_FOR_RELATIVE_TIME or steps < 2 * BLOCK_STEPS:
        raise ValueError(f"the between-run self-test needs >= 2 runs, >= {MIN_ROWS_FOR_RELATIVE_TIME} rows and "
                         f">= {2 * BLOCK_STEPS} steps, got runs={runs}, rows={rows}, steps={steps}")
    schedule = Schedule("interleaved", steps, BLOCK_STEPS, WarmupPolicy(window=5, rel_tol=0.2, min_steps=10,
                                                                         max_steps=40), timeout_s=120)
    out = []
    with tempfile.TemporaryDirectory(prefix="dit-repro-selftest-") as logs:
        for run in range(runs):
            if progress is not None:
                print(f"[self-test] run {run + 1}/{runs}: {rows} identical {size}x{size} matmul rows, {steps} steps each",
                      file=progress, flush=True)
            jobs = [RowJob(f"m{row}", {}, {"kind": "matmul", "size": size, "batch": batch}, None, threads=1)
                    for row in range(rows)]
            MatrixRunner(schedule, Path(logs) / f"run{run}", progress=io.StringIO()).run(jobs)  # it prints its own line per run
            failed = [f"{job.name}: {job.status} ({(job.error or {}).get('message', '')})" for job in jobs
                      if job.status != "ok" or job.cpu_times is None]
            if failed:
                raise RuntimeError(f"self-test run {run + 1} failed: {'; '.join(failed)}")
            out.append(RunSamples({job.name: list(job.cpu_times or []) for job in jobs}, BLOCK_STEPS))
    return out


def relative_changes(runs: Sequence[RunSamples]) -> np.ndarray:
    """Point estimates of every row's relative change over every pair of runs at equal code, flattened."""
    out = []
    for base, cur in itertools.combinations(runs, 2):
        machine = machine_speed_factor(base, cur)
        out.extend(np.median(cur.rows[n]) / np.median(base.rows[n]) / machine for n in base.rows)
    return np.asarray(out, dtype=float)


def between_run_rates(runs: Sequence[RunSamples], thresholds: Thresholds, factors: Sequence[float] = FACTORS,
                      resamples: int = 2000, seed: int = 0) -> list[RateEstimate]:
    """Per-row regression verdicts of the relative step-time comparison over all pairs of runs, per factor."""
    if len(runs) < 2:
        raise ValueError(f"the between-run self-test needs at least 2 runs, got {len(runs)}")
    names = list(runs[0].rows)
    if any(list(run.rows) != names for run in runs):
        raise ValueError("every run must time the same rows")
    inputs = GateInputs(thresholds=thresholds, resamples=resamples, seed=seed)
    rng = np.random.default_rng(seed)
    estimates = []
    for factor in factors:
        flagged = draws = 0
        for base, cur in itertools.combinations(runs, 2):
            for name in names:
                scaled = RunSamples({n: np.asarray(v, dtype=float) * (factor if n == name else 1.0)
                                     for n, v in cur.rows.items()}, cur.block)
                flagged += relative_time_comparison(name, base, scaled, inputs, rng).verdict is Verdict.REGRESSION
                draws += 1
        estimates.append(RateEstimate.from_counts(factor, draws, flagged))
    return estimates


def between_runs_report(runs: Sequence[RunSamples], estimates: Sequence[RateEstimate], thresholds: Thresholds,
                        source: str = f"{SIZE}x{SIZE} matmul step, batch {BATCH}, one thread, CPU time") -> str:
    """Markdown: the run-to-run spread at equal code and the flag rate per factor."""
    rows = len(runs[0].rows)
    lines = [
        "## Across fresh runs",
        "",
        f"runs: {len(runs)} fresh interleaved runs of {rows} identical rows ({source}); every pair of runs "
        f"(earlier = baseline) and every row through the gate's relative step-time comparison; "
        f"time threshold {thresholds.time:.0%}, significance level {thresholds.alpha}",
        spread_line(relative_changes(runs), "run-to-run spread at equal code (row change / machine factor)"),
        "",
        "| slowdown | row-pairs | flagged as regression | rate | 95% CI (pairs share runs: indicative) |",
        "|---|---|---|---|---|",
    ]
    lines += [e.table_row() for e in estimates]
    return "\n".join(lines) + "\n"


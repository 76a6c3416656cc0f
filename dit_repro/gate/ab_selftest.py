"""The gate's self-test in same-run A/B mode: false alarms and detection, measured with the real bench.

``R`` fresh runs of ``dit-repro bench --against REF`` with REF's code identical to this code
(``--against HEAD`` on a clean tree): every regression verdict at x1.00 is a false alarm. Each
run's candidate side is then made slower by each factor (its per-step CPU times multiplied, which
is what ``--inject-slowdown`` does to every step: it busy-waits (factor - 1) times that step's
own CPU time) and goes through the gate's A/B step-time comparison against REF's side of the same
run. Unlike the stored-baseline self-test across runs, the draws are independent: every row of
every run is its own A/B pair, and no two pairs share a run side.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from dit_repro.atomic import write_json_atomic
from dit_repro.bench.matrices import build_matrix, select_rows
from dit_repro.bench.plan import BenchRequest, BenchRun, default_scale, resolve_device_type, run_bench
from dit_repro.bench.reference import Reference, ReferenceUnusable, candidate_root, repository_of

from .compare import RunSamples, Thresholds, Verdict, round_ratios
from .metrics import GateInputs, ab_time_comparison, interleave_block, step_clock
from .selftest import FACTORS, RateEstimate, spread_line


@dataclass(frozen=True)
class ABRun:
    """One A/B run's per-step times, REF's and the candidate's, by row."""

    reference: RunSamples
    """REF's side."""
    candidate: RunSamples
    """This code's side."""


def require_identical_code(reference: Reference) -> None:
    """Refuse a REF whose package differs from the candidate's: its flags would not all be false alarms."""
    repo = repository_of(candidate_root())
    if repo is None or repo.resolve() != reference.repo.resolve():
        raise ReferenceUnusable(f"the A/B self-test needs REF in the repository holding this code "
                                f"({candidate_root()}); REF is in {reference.repo}")
    done = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", reference.commit, "--", "dit_repro"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ReferenceUnusable(
            f"the A/B self-test needs REF's code identical to this code, but dit_repro differs from "
            f"{reference.spec} ({reference.commit[:12]}): commit or stash the changes, or use --against HEAD")


def ab_samples(run: BenchRun) -> ABRun:
    """The per-step gate-clock times of the rows that ran on both sides of an A/B bench."""
    assert run.reference is not None
    clock = step_clock(run.reference, run.results)
    sides = []
    for document in (run.reference, run.results):
        rows = {row["name"]: row["timing"][clock] for row in document["rows"] if row["status"] == "ok"}
        sides.append(rows)
    names = [name for name in sides[0] if name in sides[1]]
    block = interleave_block(run.results)
    return ABRun(RunSamples({n: sides[0][n] for n in names}, block), RunSamples({n: sides[1][n] for n in names}, block))


def time_ab_runs(runs: int, reference: Reference, matrix: str = "table4", rows: Sequence[str] | None = None,
                 device: str = "auto", progress: TextIO | None = None) -> tuple[list[ABRun], dict[str, Any]]:
    """``runs`` fresh A/B benches of ``matrix`` (or its ``rows``) at the device's default scale, and the
    hardware key they ran on."""
    if runs < 1:
        raise ValueError(f"the A/B self-test needs at least 1 run, got {runs}")
    require_identical_code(reference)
    device_type = resolve_device_type(device)
    chosen = build_matrix(matrix, device_type)
    if rows:
        chosen = select_rows(chosen, list(rows))
    out: list[ABRun] = []
    hardware: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dit-repro-ab-selftest-") as logs:
        for index in range(runs):
            if progress is not None:
                print(f"[self-test] A/B run {index + 1}/{runs}: {len(chosen.rows)} rows x 2 sides against "
                      f"{reference.how}", file=progress, flush=True)
            request = BenchRequest(chosen, default_scale(device_type), device_type, against=reference,
                                   command=["dit-repro", "gate", "--self-test", "--against", reference.spec])
            run = run_bench(request, Path(logs) / f"run{index}")
            failed = [f"{row['name']} ({doc['ab']['role']}): {row['status']}" for doc in (run.results, run.reference)
                      for row in (doc or {"rows": []})["rows"] if row["status"] != "ok"]
            if failed:
                raise RuntimeError(f"A/B self-test run {index + 1} had failed rows: {'; '.join(failed)}")
            out.append(ab_samples(run))
            hardware = run.results["device"]["hardware_key"]
    return out, hardware


def ab_rates(runs: Sequence[ABRun], thresholds: Thresholds, factors: Sequence[float] = FACTORS,
             resamples: int = 2000, seed: int = 0) -> list[RateEstimate]:
    """Regression verdicts of the A/B step-time comparison per factor, over every row of every run."""
    if not runs:
        raise ValueError("the A/B self-test needs at least one run")
    inputs = GateInputs(thresholds=thresholds, resamples=resamples, seed=seed)
    rng = np.random.default_rng(seed)
    estimates = []
    for factor in factors:
        flagged = draws = 0
        for run in runs:
            scaled = RunSamples({n: np.asarray(v, dtype=float) * factor for n, v in run.candidate.rows.items()},
                                run.candidate.block)
            for name in run.reference.rows:
                verdict = ab_time_comparison(name, run.reference, scaled, inputs, rng).verdict
                flagged += verdict is Verdict.REGRESSION
                draws += 1
        estimates.append(RateEstimate.from_counts(factor, draws, flagged))
    return estimates


def save_ab_runs(path: Path, runs: Sequence[ABRun], source: str, hardware: dict[str, Any]) -> Path:
    """Write the runs' per-step times as JSON (a recording the gate's statistics can be tested on)."""
    # Unsorted, like a results file: the recording reads source, hardware, then runs.
    return write_json_atomic(path, {
        "source": source, "hardware_key": hardware,
        "runs": [{"block": run.candidate.block, "reference": {n: list(map(float, v)) for n, v in run.reference.rows.items()},
                  "candidate": {n: list(map(float, v)) for n, v in run.candidate.rows.items()}} for run in runs]},
        sort_keys=False, allow_nan=False)


def load_ab_runs(path: Path) -> list[ABRun]:
    """The runs of a recording written by :func:`save_ab_runs`."""
    data = json.loads(Path(path).read_text())
    return [ABRun(RunSamples(run["reference"], run["block"]), RunSamples(run["candidate"], run["block"]))
            for run in data["runs"]]


def ab_changes(runs: Sequence[ABRun]) -> np.ndarray:
    """The gate's point estimate (median paired round ratio) of every row of every run (identical code)."""
    return np.asarray([np.median(round_ratios(run.reference.rows[n], run.candidate.rows[n], run.candidate.block or 1))
                       for run in runs for n in run.reference.rows], dtype=float)


def ab_report(runs: Sequence[ABRun], estimates: Sequence[RateEstimate], thresholds: Thresholds, source: str) -> str:
    """Markdown: the spread of identical code between the sides, and the flag rate per factor."""
    lines = [
        "## Same-run A/B",
        "",
        f"runs: {len(runs)} fresh `bench --against` runs ({source}), REF's code identical to this code; every row of "
        f"every run is one A/B pair, the candidate side's step times scaled by the factor; time threshold "
        f"{thresholds.time:.0%}, significance level {thresholds.alpha}",
        spread_line(ab_changes(runs), "spread between the sides at equal code"),
        "",
        "| slowdown | row-pairs | flagged as regression | rate | 95% CI |",
        "|---|---|---|---|---|",
    ]
    lines += [e.table_row() for e in estimates]
    return "\n".join(lines) + "\n"

"""Partial results: a bench that stops early keeps the rows it finished, and the rest fail the gate.

The results file is rewritten after every finished row with the rows still to come as
``not_run``; the gate fails those rows and a baseline refuses them.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dit_repro.bench.baselines import record_baseline
from dit_repro.bench.runner import MatrixRunner, RowJob, Schedule
from dit_repro.bench.schema import ResultsError, load_results, validate_results, write_results
from dit_repro.bench.stats import WarmupPolicy
from dit_repro.gate import EXIT_REGRESSION, GateInputs, Verdict, run_gate
from tests.bench_documents import make_job, make_results


def test_rows_still_running_or_waiting_are_recorded_as_not_run() -> None:
    finished = make_job("gcp", times=[0.1] * 12, device_type="cpu")
    waiting = RowJob("gcp+amp", {"precision": "bf16"}, {"kind": "test"})
    document = make_results([finished, waiting])
    rows = {row["name"]: row for row in document["rows"]}
    assert rows["gcp"]["status"] == "ok"
    assert rows["gcp+amp"]["status"] == "not_run" and rows["gcp+amp"]["timing"] is None
    assert "stopped before this row finished" in rows["gcp+amp"]["error"]["message"]
    with pytest.raises(ResultsError, match=r"gcp\+amp \(not_run\)"):
        record_baseline(document, "unused")


def test_the_gate_fails_a_row_the_bench_never_finished(tmp_path: Path) -> None:
    names = ["original", "gcp", "gcp+amp"]
    baseline = make_results([make_job(n, times=[0.1] * 12, device_type="cpu") for n in names])
    record_baseline(baseline, tmp_path / "baselines")
    partial = make_results([make_job("original", times=[0.1] * 12, device_type="cpu"),
                            RowJob("gcp", {}, {"kind": "test"}), RowJob("gcp+amp", {}, {"kind": "test"})])
    path = write_results(tmp_path / "partial" / "results.json", partial)
    outcome = run_gate(path, tmp_path / "baselines", GateInputs())
    assert outcome.exit_code == EXIT_REGRESSION
    failed = {c.metric: c.note for c in outcome.comparisons if c.verdict is Verdict.FAIL}
    assert set(failed) == {"gcp: status", "gcp+amp: status"}
    assert all(note.startswith("not_run: the bench stopped") for note in failed.values())


def test_the_runner_reports_each_row_as_it_finishes(tmp_path: Path) -> None:
    policy = WarmupPolicy(window=3, rel_tol=0.5, min_steps=6, max_steps=30)
    runner = MatrixRunner(Schedule("sequential", 4, 4, policy, 120.0), tmp_path / "logs", progress=io.StringIO())
    jobs = [RowJob(name, {}, {"kind": "matmul", "size": 64, "batch": 8}, None, threads=1) for name in ("a", "b")]
    seen: list[list[str]] = []
    runner.run(jobs, on_row_done=lambda job: seen.append([f"{j.name}:{j.status}" for j in jobs]))
    assert seen == [["a:ok", "b:pending"], ["a:ok", "b:ok"]]


@pytest.mark.slow
def test_a_killed_bench_leaves_valid_results_with_the_rows_it_finished(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    rows = "first@features:pixels;second@ckpt:full+features:pixels;third@precision:tf32+features:pixels"
    command = [sys.executable, "-m", "dit_repro.cli", "bench", "--device", "cpu", "--schedule", "sequential",
               "--matrix", f"tiny={rows}", "--batch-size", "2", "--image-size", "16", "--steps", "4",
               "--warmup-max", "10", "--out", str(out)]
    out.write_text("{}")  # an earlier run's file must not survive as this run's
    bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    statuses: list[str] = []
    try:
        while time.monotonic() < deadline and bench.poll() is None:
            if out.exists():
                statuses = [row["status"] for row in json.loads(out.read_text()).get("rows", [])]
                if statuses and statuses[0] == "ok":
                    break
            time.sleep(0.2)
    finally:
        os.killpg(bench.pid, signal.SIGKILL)  # as a CI time limit would, worker processes included
        bench.wait()
    assert statuses[:1] == ["ok"], bench.stderr.read() if bench.stderr else ""
    document = load_results(out)  # validates against the schema
    final = [row["status"] for row in document["rows"]]
    assert final[0] == "ok" and "not_run" in final
    validate_results(document)

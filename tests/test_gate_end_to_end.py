"""Measured runs through the gate: one configuration made 10 % slower must fail it, equal code must pass.

The rows are real timed steps in fresh worker processes (interleaved, as on a CPU), the slowdown
comes from the bench's test-only injection knob, and the gate is the CPU gate the smoke bench
uses. A slow test also drives the ``dit-repro bench`` and ``dit-repro gate`` commands.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dit_repro.bench.baselines import record_baseline
from dit_repro.bench.matrices import Matrix, MatrixRow
from dit_repro.bench.results import device_block, results_document
from dit_repro.bench.runner import MatrixRunner, RowJob, Schedule
from dit_repro.bench.schema import write_results
from dit_repro.bench.stats import WarmupPolicy
from dit_repro.gate import EXIT_PASS, EXIT_REGRESSION, GateInputs, Verdict, run_gate
from tests.bench_documents import hardware_key

# Six identical rows of about 3 ms each, timed as the CPU smoke bench times, in rounds of 2 steps.
# Identical rows: load from other tenants of a shared VM slows rows of different sizes unequally
# (up to 4.5 % apart between two runs of equal code with sizes 256..512), which the machine speed
# factor cannot absorb; identical rows it slows alike (relative changes within about 2 %).
# 300 steps (150 rounds, under 6 s of timing per run): with 60, run-to-run noise left the 10%
# slowdown at p = 0.03 in one CI run; steps are cheap next to starting the worker processes.
SIZES = {f"m{index}": 384 for index in range(6)}
SLOWED = "m2"
SCALE = {"model": "matmul", "global_batch_size": 512, "image_size": 1, "smoke": True, "timed_steps": 300,
         "schedule": "interleaved", "block_steps": 2,
         "warmup": {"window": 5, "rel_tol": 0.2, "min_steps": 10, "max_steps": 40},
         "data": "random", "vae": None, "notes": []}


def _measure(tmp_path: Path, name: str, inject: dict[str, float]) -> Path:
    jobs = [RowJob(row, {}, {"kind": "matmul", "size": size, "batch": 512}, inject.get(row), threads=1)
            for row, size in SIZES.items()]
    schedule = Schedule("interleaved", SCALE["timed_steps"], SCALE["block_steps"], WarmupPolicy(**SCALE["warmup"]), 120)
    MatrixRunner(schedule, tmp_path / name / "logs", progress=io.StringIO()).run(jobs)
    assert [job.status for job in jobs] == ["ok"] * len(SIZES), [job.error for job in jobs]
    matrix = Matrix("matmul", tuple(MatrixRow(row, {}) for row in SIZES))
    document = results_document(command=["test"], matrix=matrix, scale=SCALE,
                                device=device_block(hardware_key("cpu"), None), environment={}, jobs=jobs)
    return write_results(tmp_path / name / "results.json", document)


@pytest.mark.slow
def test_injected_ten_percent_slowdown_fails_the_gate_and_equal_code_passes(tmp_path: Path) -> None:
    baselines = tmp_path / "baselines"
    record_baseline(json.loads(_measure(tmp_path, "baseline", {}).read_text()), baselines)

    same = run_gate(_measure(tmp_path, "same", {}), baselines, GateInputs(), report_dir=tmp_path / "same")
    print(same.markdown)
    assert same.exit_code == EXIT_PASS

    slowed = run_gate(_measure(tmp_path, "slowed", {SLOWED: 1.10}), baselines, GateInputs(),
                      report_dir=tmp_path / "slowed")
    print(slowed.markdown)
    assert slowed.exit_code == EXIT_REGRESSION
    failing = {c.metric for c in slowed.comparisons if c.verdict is Verdict.REGRESSION}
    assert failing == {f"{SLOWED}: step time relative to the run"}
    assert (tmp_path / "slowed" / "gate.png").exists()


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dit_repro.cli", *argv], capture_output=True, text=True)


@pytest.mark.slow
def test_bench_and_gate_commands_fail_on_an_injected_slowdown(tmp_path: Path) -> None:
    # Pixel-space rows: no VAE and no latent cache to build, so the commands finish quickly.
    # Twelve rounds of 2 steps: with six rounds of 5 one round of stray load weighed so much in the
    # block bootstrap that a measured +45 % reached only p = 0.012.
    rows = "plain@features:pixels;ckpt@ckpt:full+features:pixels;tf32@precision:tf32+features:pixels"
    common = ["bench", "--device", "cpu", "--matrix", f"tiny={rows}",
              "--batch-size", "2", "--image-size", "16", "--steps", "24", "--block-steps", "2", "--warmup-max", "10"]
    baselines = tmp_path / "baselines"
    done = _cli(*common, "--out", str(tmp_path / "base" / "results.json"), "--record", str(baselines))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "baseline written" in done.stdout and "CPU smoke scale" in done.stderr
    slowed = tmp_path / "slowed" / "results.json"
    done = _cli(*common, "--out", str(slowed), "--inject-slowdown", "ckpt=1.5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| ckpt | ok (slowed x1.5) |" in done.stdout
    gate = _cli("gate", str(slowed), "--baselines", str(baselines))
    assert gate.returncode == EXIT_REGRESSION, gate.stdout + gate.stderr
    assert "ckpt: step time relative to the run" in gate.stdout and "**Verdict: FAIL**" in gate.stdout
    assert "CPU gate" in gate.stdout

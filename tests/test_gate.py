"""The gate end to end on synthetic results documents: verdicts, exit codes, report files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from dit_repro.bench.baselines import baseline_path, record_baseline
from dit_repro.bench.matrices import RowRatio
from dit_repro.bench.schema import ResultsError, write_results
from dit_repro.commands import gate as gate_command
from dit_repro.gate import EXIT_DATA_ERROR, EXIT_PASS, EXIT_REGRESSION, GateInputs, Verdict, run_gate
from dit_repro.gate.metrics import gate_comparisons
from tests.bench_documents import make_job, make_results, noisy_times

ROWS = ("original", "gcp", "gcp+amp", "gcp+features", "gcp+amp+features")
MEDIANS = dict(zip(ROWS, (0.20, 0.26, 0.30, 0.18, 0.21), strict=True))
RATIOS = (
    RowRatio("checkpointing saved-activation ratio", "saved_activation_bytes", "gcp", "original", False),
    RowRatio("cached-latents speed-up", "time", "gcp", "gcp+features", True),
)


def _run(device: str, seed: int, slow: dict[str, float] | None = None, machine: float = 1.0,
         saved: dict[str, int] | None = None, n: int = 40, **overrides) -> dict:
    rng = np.random.default_rng(seed)
    jobs = []
    for name in ROWS:
        median = MEDIANS[name] * machine * (slow or {}).get(name, 1.0)
        kwargs = {"times": noisy_times(median, n, rng), "device_type": device,
                  "saved_bytes": (saved or {}).get(name, 4000 if name == "original" else 1000)}
        kwargs.update(overrides.get(name, {}))
        jobs.append(make_job(name, **kwargs))
    return make_results(jobs, device, RATIOS)


def _verdicts(baseline: dict, current: dict) -> dict[str, Verdict]:
    comparisons, _ = gate_comparisons(baseline, current, GateInputs())
    return {c.metric: c.verdict for c in comparisons}


def test_gpu_gate_flags_the_slowed_row_only() -> None:
    verdicts = _verdicts(_run("cuda", 0), _run("cuda", 1, slow={"gcp+amp": 1.10}))
    assert verdicts["gcp+amp: step time"] is Verdict.REGRESSION
    flagged = {m for m, v in verdicts.items() if v.fails_gate}
    # gcp's speed-up ratio does not involve gcp+amp; only the slowed row fails.
    assert flagged == {"gcp+amp: step time"}


def test_gpu_gate_memory_threshold_is_ten_percent() -> None:
    base = _run("cuda", 0)
    fatter = _run("cuda", 1, **{"gcp": {"allocated": [int(1.12 * 2**30)] * 40}})
    slightly = _run("cuda", 1, **{"gcp": {"allocated": [int(1.08 * 2**30)] * 40}})
    assert _verdicts(base, fatter)["gcp: peak allocated memory"] is Verdict.REGRESSION
    assert _verdicts(base, slightly)["gcp: peak allocated memory"] is Verdict.PASS


def test_cpu_gate_ignores_machine_speed_but_catches_one_slower_row() -> None:
    base = _run("cpu", 0)
    # A 40 % slower machine: nothing changed relative to the other rows.
    verdicts = _verdicts(base, _run("cpu", 1, machine=1.4))
    assert not any(v.fails_gate for v in verdicts.values()), verdicts
    assert not any(m.endswith(": step time") for m in verdicts)  # absolute times are not gated on a CPU
    # The same slow machine, and gcp+features 10 % slower on top: that row, and the speed-up it is part of.
    verdicts = _verdicts(base, _run("cpu", 2, machine=1.4, slow={"gcp+features": 1.10}))
    flagged = {m for m, v in verdicts.items() if v.fails_gate}
    assert flagged == {"gcp+features: step time relative to the run", "cached-latents speed-up"}


def test_cpu_gate_checks_saved_activation_bytes_and_their_ratio() -> None:
    base = _run("cpu", 0)
    current = _run("cpu", 1, saved={"original": 4000, "gcp": 1200})  # checkpointing saves less (+20 %)
    verdicts = _verdicts(base, current)
    assert verdicts["gcp: saved activations"] is Verdict.REGRESSION
    assert verdicts["checkpointing saved-activation ratio"] is Verdict.REGRESSION
    assert verdicts["original: saved activations"] is Verdict.PASS


@pytest.mark.parametrize(
    "current_row, expected",
    [
        ({"status": "crashed", "error": "worker died"}, Verdict.FAIL),
        ({"status": "error", "error": "boom"}, Verdict.FAIL),
        ({"status": "oom"}, Verdict.REGRESSION),
        ({"saved_bytes": None}, Verdict.FAIL),
    ],
)
def test_failed_rows_and_missing_metrics_fail(current_row: dict, expected: Verdict) -> None:
    verdicts = _verdicts(_run("cuda", 0), _run("cuda", 1, **{"gcp": current_row}))
    relevant = {m: v for m, v in verdicts.items() if m.startswith("gcp:") and v is not Verdict.PASS}
    assert expected in relevant.values(), relevant


def test_oom_in_both_runs_is_a_pass_and_a_fix_is_an_improvement() -> None:
    oom_base = _run("cuda", 0, **{"original": {"status": "oom"}})
    assert _verdicts(oom_base, _run("cuda", 1, **{"original": {"status": "oom"}}))["original: status"] is Verdict.PASS
    assert _verdicts(oom_base, _run("cuda", 1))["original: status"] is Verdict.IMPROVEMENT


def test_row_missing_from_results_fails_and_new_rows_are_reported() -> None:
    base = _run("cuda", 0)
    current = _run("cuda", 1)
    current["rows"] = [r for r in current["rows"] if r["name"] != "gcp"]
    current["matrix"]["rows"] = [r for r in current["matrix"]["rows"] if r["name"] != "gcp"]
    assert _verdicts(base, current)["gcp: status"] is Verdict.FAIL
    assert _verdicts(current, base)["gcp: status"] is Verdict.NEW


def _gate_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    gate_command.register(parser.add_subparsers())
    args = parser.parse_args(["gate", *argv])
    return args.func(args)


def test_cli_exit_codes_and_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baselines = tmp_path / "baselines"
    record_baseline(_run("cuda", 0), baselines)
    same, slower = tmp_path / "same.json", tmp_path / "slower.json"
    write_results(same, _run("cuda", 1))
    write_results(slower, _run("cuda", 2, slow={"gcp": 1.10}))

    assert _gate_cli(str(same), "--baselines", str(baselines), "--report-dir", str(tmp_path / "r1")) == EXIT_PASS
    assert "**Verdict: PASS**" in capsys.readouterr().out
    assert _gate_cli(str(slower), "--baselines", str(baselines), "--report-dir", str(tmp_path / "r2")) == EXIT_REGRESSION
    out = capsys.readouterr().out
    assert "| gcp: step time |" in out and "**REGRESSION**" in out and "**Verdict: FAIL**" in out
    assert (tmp_path / "r2" / "gate.md").read_text() == out.split("plot: ")[0]
    assert (tmp_path / "r2" / "gate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A looser threshold lets the same 10 % slowdown pass.
    assert _gate_cli(str(slower), "--baselines", str(baselines), "--time-threshold", "15%",
                     "--report-dir", str(tmp_path / "r3")) == EXIT_PASS


def test_missing_baseline_is_a_data_error_naming_the_device(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results.json"
    write_results(results, _run("cuda", 0, **{"gcp": {"status": "crashed", "error": "segfault"}}))
    assert _gate_cli(str(results), "--baselines", str(tmp_path / "none")) == EXIT_DATA_ERROR
    err = capsys.readouterr().err
    assert "name=NVIDIA H100 80GB HBM3" in err and "nvidia-h100-80gb-hbm3-x1-cuda12.8-" in err
    assert "stored for this setup: none" in err and "--against auto" in err
    # --allow-missing gates only faults: the crashed row still fails.
    assert _gate_cli(str(results), "--baselines", str(tmp_path / "none"), "--allow-missing",
                     "--report-dir", str(tmp_path)) == EXIT_REGRESSION


def test_baseline_of_another_setup_is_refused(tmp_path: Path) -> None:
    baseline = _run("cuda", 0)
    baseline["scale"]["global_batch_size"] = 256
    path = tmp_path / "b.json"
    write_results(path, baseline)
    results = tmp_path / "r.json"
    write_results(results, _run("cuda", 1))
    with pytest.raises(ResultsError, match="global_batch_size"):
        run_gate(results, path, GateInputs())


def test_record_refuses_failed_rows_and_injected_slowdowns(tmp_path: Path) -> None:
    crashed = _run("cuda", 0, **{"gcp": {"status": "crashed", "error": "x"}})
    with pytest.raises(ResultsError, match="failed rows"):
        record_baseline(crashed, tmp_path)
    injected = _run("cuda", 0)
    injected["rows"][0]["injected_slowdown"] = 1.1
    with pytest.raises(ResultsError, match="injected"):
        record_baseline(injected, tmp_path)
    path = record_baseline(_run("cuda", 0), tmp_path)
    assert path == baseline_path(tmp_path, _run("cuda", 0))
    assert path.relative_to(tmp_path).as_posix() == "nvidia-h100-80gb-hbm3-x1-cuda12.8-ca2f29/dit-s2-b8-32px-table4.json"

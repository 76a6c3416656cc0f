"""tools/gpu_check.py: its commands are valid requests, and its summary reads results files.

The whole dry run (``python tools/gpu_check.py --out DIR --device cpu --smoke``, about 2.5 minutes
here) is run by hand and reported in the README; these tests check, in seconds, what would make
the one GPU call fail before it measured anything.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dit_repro.cli import build_parser
from dit_repro.commands import bench as bench_command

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device, smoke", [("cuda", False), ("cpu", True)])
def test_every_bench_step_is_a_valid_request(gpu_check, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             device: str, smoke: bool) -> None:
    monkeypatch.setattr(bench_command, "resolve_device_type", lambda spec: device)  # no GPU here
    steps = gpu_check.planned_steps(tmp_path, device, smoke)
    assert [s.name for s in steps] == ["tf32-preflight", "pytest-gpu", "table4", "attention", "bf16-no-checkpointing",
                                       "verify"]
    verify = build_parser().parse_args(steps[-1].command[3:])
    assert verify.results == [tmp_path / "table4" / "results.json"] and str(verify.out) == str(tmp_path / "verify")
    for step in steps[2:-1]:
        args = build_parser().parse_args(step.command[3:])  # after: python -m dit_repro.cli
        request = bench_command.bench_request(args, None)
        assert request.device_type == device and request.matrix.rows, step.name
        if step.name == "table4":
            assert args.record == tmp_path / "baselines"
        if not smoke:
            assert request.scale.model == "DiT-XL/2" and not request.scale.smoke, step.name
    total = sum(s.timeout_s for s in steps)
    print(f"{device}: step timeouts sum to {total:.0f} s")


def test_a_step_is_skipped_when_the_deadline_has_passed(gpu_check, tmp_path: Path) -> None:
    step = gpu_check.Step("late", [sys.executable, "-c", "raise SystemExit(3)"], 60)
    gpu_check.run_step(step, tmp_path, deadline=0.0, env={})
    assert step.status.startswith("skipped") and step.exit_code is None
    failing = gpu_check.Step("failing", [sys.executable, "-c", "raise SystemExit(3)"], 60)
    gpu_check.run_step(failing, tmp_path, deadline=float("inf"), env={})
    assert failing.status == "failed (exit 3)" and Path(failing.log).is_file()


def test_the_summary_names_the_best_mfu_and_the_checkpointed_rows_memory(gpu_check, tmp_path: Path) -> None:
    def row(name: str, ckpt: str, mfu: float, peak: int) -> dict:
        return {"name": name, "status": "ok", "switches": {"checkpointing": ckpt},
                "compute": {"mfu": mfu}, "memory": {"max_allocated_bytes": peak},
                "fixed_cost": {"total_s": 12.34}}

    results = {"device": {"name": "NVIDIA H100 80GB HBM3"}, "rows": [
        row("original", "none", 0.31, 70 << 30), row("gcp", "full", 0.28, 20 << 30),
        row("gcp+amp", "full", 0.42, 15 << 30), {"name": "oom-row", "status": "oom", "switches": {}}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    summary = gpu_check.bench_summary(path)
    assert summary["best_mfu"] == {"row": "gcp+amp", "mfu": 0.42}
    assert summary["peak_memory_full_checkpointing_mib"] == {"gcp": 20480.0, "gcp+amp": 15360.0}
    assert summary["rows"]["oom-row"] == "oom" and summary["fixed_cost_s"]["gcp"] == 12.3
    assert gpu_check.bench_summary(tmp_path / "missing.json") == {"results": None}

"""The GitHub workflows: valid against the GitHub workflow schema, and the GPU job as documented.

The schema check is check-jsonschema with its vendored copy of the workflow schema (no network).
The GPU job's own rules (runner labels, fork guard, forced CUDA, GPU tests first, A/B against the
base commit, a persistent environment, reports, baseline recording) are checked on the parsed file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"


def _check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_every_workflow_follows_the_github_workflow_schema(tmp_path: Path) -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {p.name for p in files} >= {"ci.yml", "gpu-bench.yml"}
    done = _check(*files)
    assert done.returncode == 0, done.stdout + done.stderr
    # The check can fail: a misspelled job key is refused.
    broken = tmp_path / "broken.yml"
    broken.write_text((WORKFLOWS / "gpu-bench.yml").read_text().replace("runs-on:", "run-on:"))
    assert _check(broken).returncode != 0


def _gpu_job() -> tuple[dict[str, Any], dict[str, Any]]:
    workflow = YAML(typ="safe").load((WORKFLOWS / "gpu-bench.yml").read_text())
    return workflow, workflow["jobs"]["gpu-bench"]


def _step(job: dict[str, Any], name_part: str) -> dict[str, Any]:
    return next(step for step in job["steps"] if name_part in step.get("name", ""))


def test_the_gpu_job_runs_on_labelled_gpu_runners_and_never_for_forks() -> None:
    _, job = _gpu_job()
    assert job["runs-on"] == ["self-hosted", "linux", "a100"]
    assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]


def test_the_gpu_job_tests_the_gpu_first_then_gates_on_cuda_against_the_base_commit() -> None:
    workflow, job = _gpu_job()
    runs = [step.get("run", "") for step in job["steps"]]
    gpu_tests = next(i for i, run in enumerate(runs) if "-m gpu" in run)
    benches = [i for i, run in enumerate(runs) if "gpu_bench" in run or "dit_repro.cli bench" in run]
    assert benches and all(gpu_tests < i for i in benches)
    assert all("--device cuda" in runs[i] for i in benches)  # no silent fall-back to the CPU smoke matrix
    pull = _step(job, "A/B against the pull request's base commit")
    assert pull["env"]["BASE_SHA"] == "${{ github.event.pull_request.base.sha }}" and '--against "$BASE_SHA"' in pull["run"]
    checkout = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # the base commit must be there to check out
    assert "record" in workflow["on"]["workflow_dispatch"]["inputs"]


def test_the_gpu_job_keeps_its_environment_outside_the_temporary_folder_keyed_on_pyproject() -> None:
    _, job = _gpu_job()
    venv = _step(job, "Environment outside")["run"]
    assert "DIT_REPRO_VENV=$HOME/.cache/dit-repro/" in venv and "hashFiles('pyproject.toml'" in venv
    assert "runner.temp" not in (WORKFLOWS / "gpu-bench.yml").read_text()


def test_the_gpu_job_publishes_its_report_and_a_recorded_baseline_for_review() -> None:
    _, job = _gpu_job()
    summary = _step(job, "job summary")
    assert summary["if"] == "always()" and "GITHUB_STEP_SUMMARY" in summary["run"] and "gate.md" in summary["run"]
    report = _step(job, "Upload the report")
    assert report["if"] == "always()" and "bench-out/gate.md" in report["with"]["path"]
    assert "bench-out/results-reference.json" in report["with"]["path"]
    record = _step(job, "Record a baseline")
    assert "--record recorded-baselines" in record["run"] and "inputs.record" in record["if"]
    upload = _step(job, "recorded baseline for review")
    assert upload["with"]["path"] == "recorded-baselines/" and upload["with"]["if-no-files-found"] == "error"

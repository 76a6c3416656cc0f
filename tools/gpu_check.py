#!/usr/bin/env python3
"""The first GPU run, prepared: every GPU path of the project in one short call, results under one folder.

Runs with the standard library and whatever the machine has; nox is not needed. Where
diffusers, torch-fidelity or jsonschema are missing they are installed from a wheel folder made
beforehand by ``tools/prepare_gpu_wheels.py`` (the machine has no network). Then, in order,
each step under its own timeout and all of them under one deadline (8 minutes on a GPU):

1. ``environment``: Python, torch, CUDA, the GPU, and the installs from the wheel folder;
2. ``tf32-preflight``: every precision's TF32 flags read through both APIs, with a cuBLAS matmul
   and a cuDNN convolution run under them and inside the VAE's strict-fp32 block;
3. ``pytest-gpu``: ``pytest -m gpu``;
4. ``table4``: Table 4 at the paper's scale with ``--record`` (timed steps reduced to fit), the
   baseline file written under ``OUT/baselines``;
5. ``attention``: the attention matrix at DiT-XL/2;
6. ``bf16-no-checkpointing``: one bf16 row without checkpointing (out of memory is a result);
7. ``verify``: the claims verifier on the Table 4 results of step 4, its report under ``OUT/verify``.

Everything goes to ``OUT``: one log per step, each bench's results.json/.md, ``summary.json`` and
``summary.md`` with the table, the best row's MFU and the peak memory with full checkpointing.
``--device cpu --smoke`` is the dry run of the same steps at the CPU smoke scale.

    python tools/gpu_check.py --out "$OUT"                       # on the GPU machine
    python tools/gpu_check.py --out /tmp/gpu-check --device cpu --smoke   # the CPU dry run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_MODULES = {
    "diffusers": "diffusers", "torch_fidelity": "torch-fidelity", "jsonschema": "jsonschema",
    "sklearn": "scikit-learn", "matplotlib": "matplotlib", "timm": "timm", "safetensors": "safetensors",
    "scipy": "scipy", "tqdm": "tqdm", "PIL": "pillow", "torchvision": "torchvision", "pytest": "pytest",
}
"""Import name -> distribution of everything the steps import."""


@dataclass
class Step:
    """One step: a command, its timeout, and what it produced."""

    name: str
    command: list[str]
    timeout_s: float
    status: str = "not run"
    seconds: float = 0.0
    exit_code: int | None = None
    log: str = ""
    details: dict = field(default_factory=dict)


def python() -> str:
    """The interpreter running this script (the GPU image's, with its CUDA torch)."""
    return sys.executable


def missing_modules() -> list[str]:
    """Import names of :data:`REQUIRED_MODULES` that this interpreter cannot find."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def environment_step(out: Path, wheels: Path | None) -> Step:
    """Record the machine and install what is missing from ``wheels`` (offline)."""
    step = Step("environment", [], 120)
    began = time.monotonic()
    lines = [f"python {platform.python_version()} ({sys.executable})"]
    missing = missing_modules()
    if missing and wheels is not None and wheels.is_dir():
        dists = [REQUIRED_MODULES[name] for name in missing]
        command = [python(), "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *dists]
        lines.append("$ " + " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, timeout=step.timeout_s)
        lines += [done.stdout[-4000:], done.stderr[-4000:]]
        importlib.invalidate_caches()
        missing = missing_modules()
    probe = subprocess.run([python(), "-c", (
        "import torch, json; cuda = torch.cuda.is_available(); "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': cuda, "
        "'gpu': torch.cuda.get_device_name(0) if cuda else None, "
        "'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None}))")],
        capture_output=True, text=True, timeout=60)
    step.details = {"python": platform.python_version(), "missing_modules": missing}
    try:
        step.details.update(json.loads(probe.stdout.strip().splitlines()[-1]))
    except (json.JSONDecodeError, IndexError):
        lines.append(probe.stderr[-4000:])
    lines.append(json.dumps(step.details, indent=1))
    step.log = str(out / "environment.log")
    Path(step.log).write_text("\n".join(lines) + "\n")
    step.seconds = time.monotonic() - began
    step.status = "failed" if missing else "ok"
    if missing:
        step.details["fix"] = (f"missing {', '.join(REQUIRED_MODULES[m] for m in missing)}: run "
                               f"`python tools/prepare_gpu_wheels.py --python-version {platform.python_version_tuple()[0]}."
                               f"{platform.python_version_tuple()[1]}` where the index is reachable and carry .gpu-wheels")
    return step


def planned_steps(out: Path, device: str, smoke: bool) -> list[Step]:
    """The commands of steps 2-7 (see the module docstring)."""
    cli = [python(), "-m", "dit_repro.cli"]
    preflight = ("import json, sys; from dit_repro.precision import tf32_preflight; "
                 "lines = tf32_preflight(sys.argv[1]); print(json.dumps(lines, indent=1)); "
                 "sys.exit(0 if all(line['ok'] for line in lines) else 1)")
    # The paper's scale on a GPU, timed steps reduced to fit the deadline; the CPU smoke scale's
    # minimum in the dry run (two rows of each matrix).
    if smoke:
        table4 = ["--steps", "2", "--block-steps", "2", "--warmup-max", "10", "--rows", "gcp,gcp+amp+features"]
        attention = ["--steps", "2", "--block-steps", "2", "--warmup-max", "10", "--rows", "math,sdpa"]
        single = ["--steps", "2", "--block-steps", "2", "--warmup-max", "10"]
    else:
        table4 = ["--steps", "20"]
        attention = ["--steps", "10", "--model", "DiT-XL/2"]
        single = ["--steps", "10"]
    bench = [*cli, "bench", "--device", device]
    return [
        Step("tf32-preflight", [python(), "-c", preflight, device], 90),
        Step("pytest-gpu", [python(), "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
                            f"--junitxml={out / 'pytest-gpu.xml'}"], 150),
        Step("table4", [*bench, "--matrix", "table4", *table4, "--record", str(out / "baselines"),
                        "--out", str(out / "table4" / "results.json")], 270),
        Step("attention", [*bench, "--matrix", "attention", *attention,
                           "--out", str(out / "attention" / "results.json")], 150),
        Step("bf16-no-checkpointing", [*bench, "--matrix", "bf16-nockpt=bf16-no-ckpt@ckpt:none+precision:bf16", *single,
                                       "--out", str(out / "bf16-no-checkpointing" / "results.json")], 90),
        # The verifier's GPU subset on the Table 4 rows just measured (no bench of its own); the
        # equivalence checks run on the CPU and are covered by the suite.
        Step("verify", [*cli, "verify", "--results", str(out / "table4" / "results.json"), "--skip-equivalence",
                        "--out", str(out / "verify")], 90),
    ]


def run_step(step: Step, out: Path, deadline: float, env: dict[str, str]) -> None:
    """Run ``step`` with its timeout cut to what is left before ``deadline``; its output goes to its log."""
    left = deadline - time.monotonic()
    if left < 10:
        step.status = "skipped: no time left before the deadline"
        return
    timeout = min(step.timeout_s, left)
    step.log = str(out / f"{step.name}.log")
    began = time.monotonic()
    print(f"[gpu-check] {step.name} (timeout {timeout:.0f} s): {' '.join(step.command)}", flush=True)
    with open(step.log, "w") as log:
        try:
            done = subprocess.run(step.command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT, env=env)
            step.exit_code = done.returncode
            step.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            step.status = f"timeout after {timeout:.0f} s"
    step.seconds = time.monotonic() - began
    print(f"[gpu-check] {step.name}: {step.status} in {step.seconds:.0f} s", flush=True)


def bench_summary(results_path: Path) -> dict:
    """Best MFU row, peak memory of the full-checkpointing rows, and the fixed costs, from a results file."""
    if not results_path.is_file():
        return {"results": None}
    results = json.loads(results_path.read_text())
    rows = [row for row in results["rows"] if row["status"] == "ok"]
    mfu_rows = [row for row in rows if row.get("compute") and row["compute"].get("mfu") is not None]
    best = max(mfu_rows, key=lambda row: row["compute"]["mfu"], default=None)
    summary = {
        "results": str(results_path),
        "device": results["device"]["name"],
        "rows": {row["name"]: row["status"] for row in results["rows"]},
        "best_mfu": None if best is None else {"row": best["name"], "mfu": best["compute"]["mfu"]},
        "fixed_cost_s": {row["name"]: round((row.get("fixed_cost") or {}).get("total_s", float("nan")), 1) for row in rows},
    }
    peaks = {}
    for row in rows:
        memory = row.get("memory") or {}
        if row["switches"].get("checkpointing") == "full":
            peak = memory.get("max_allocated_bytes", memory.get("peak_rss_bytes"))
            peaks[row["name"]] = None if peak is None else round(peak / 2**20, 1)
    summary["peak_memory_full_checkpointing_mib"] = peaks
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run every step; exit 0 only when every step passed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for logs, results, baseline and summary")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default), or cpu for the dry run")
    parser.add_argument("--smoke", action="store_true", help="the CPU smoke scale, two rows per matrix (dry run)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels",
                        help="wheel folder from tools/prepare_gpu_wheels.py (default .gpu-wheels)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for all steps together (default 480 on cuda, 1500 on cpu)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline_s = args.deadline or (480.0 if args.device == "cuda" else 1500.0)
    deadline = time.monotonic() + deadline_s
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    steps = [environment_step(out, args.wheels)]
    print(f"[gpu-check] environment: {json.dumps(steps[0].details)}", flush=True)
    if steps[0].status == "ok":
        for step in planned_steps(out, args.device, args.smoke):
            run_step(step, out, deadline, env)
            steps.append(step)
    benches = {name: bench_summary(out / name / "results.json") for name in ("table4", "attention", "bf16-no-checkpointing")}
    baselines = sorted(str(p.relative_to(out)) for p in (out / "baselines").rglob("*.json")) if (out / "baselines").is_dir() else []
    summary = {"device": args.device, "smoke": args.smoke, "deadline_s": deadline_s,
               "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 1), "log": s.log,
                          **({"details": s.details} if s.details else {})} for s in steps],
               "benches": benches, "recorded_baselines": baselines}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# GPU check ({args.device}{', smoke' if args.smoke else ''})", "", "| step | status | s |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in steps]
    table4 = benches["table4"]
    lines += ["", f"best MFU: {table4.get('best_mfu')}",
              f"peak memory with full checkpointing (MiB): {table4.get('peak_memory_full_checkpointing_mib')}",
              f"fixed cost per row (s): {table4.get('fixed_cost_s')}", f"recorded baselines: {baselines}"]
    table = out / "table4" / "results.md"
    if table.is_file():
        lines += ["", table.read_text()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(steps) + 10]), flush=True)
    return 0 if all(s.status == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Sessions: tests, equivalence, lint, gpu_bench (the main job), verify.

Every session shares one environment (``.venv`` beside this file, or $DIT_REPRO_VENV): torch
with torchvision is several GB and is installed once, not per session. The environment is made
with --system-site-packages, so a GPU runner's own CUDA torch is seen and kept; only where no
torch is importable is the pinned CPU pair from constraints/cpu.txt installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DIT_REPRO_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if sys.platform == "win32" else "bin")
PYTHON = str(BIN / "python")
STAMP = VENV / ".dit-repro-installed"

nox.options.sessions = ["tests"]
nox.options.error_on_external_run = False


def _install_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints/cpu.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def project_env(session: nox.Session) -> str:
    """Create or reuse the shared environment and install the project into it; returns its python."""
    if not (BIN / "python").exists():
        session.log(f"creating the shared environment {VENV}")
        session.run(sys.executable, "-m", "venv", "--system-site-packages", str(VENV), external=True)
    fingerprint = _install_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        session.log(f"reusing {VENV} (installed for this pyproject.toml)")
        return PYTHON
    session.run(PYTHON, "-m", "pip", "install", "--upgrade", "pip", external=True, silent=True)
    has_torch = subprocess.run([PYTHON, "-c", "import torch, torchvision"], capture_output=True).returncode == 0
    if has_torch:
        session.log("keeping the torch/torchvision already installed")
        session.run(PYTHON, "-m", "pip", "install", "-e", ".[dev]", external=True)
    else:
        session.log("no torch found: installing the pinned CPU pair from constraints/cpu.txt")
        session.run(PYTHON, "-m", "pip", "install", "-c", "constraints/cpu.txt", "torch", "torchvision", external=True)
        session.run(PYTHON, "-m", "pip", "install", "-c", "constraints/cpu.txt", "-e", ".[dev]", external=True)
    STAMP.write_text(fingerprint)
    return PYTHON


# One pytest-xdist worker per core, each test file on one worker (its module fixtures are built
# once, and the files that launch processes on fixed ports or git worktrees never overlap
# themselves); the test timings are never asserted on, so a parallel run is as valid as a serial
# one. pytest-benchmark is off: the suite has no benchmark (they live in benchmarks/).
PARALLEL = ["-n", "auto", "--dist", "loadfile", "-p", "no:benchmark"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Everything that runs on this machine (gpu-marked tests skip themselves without CUDA), in parallel."""
    python = project_env(session)
    session.run(python, "-m", "pytest", *PARALLEL, *(session.posargs or ["-q"]), external=True)


@nox.session(python=False)
def equivalence(session: nox.Session) -> None:
    """Only the tests that prove each switch keeps the maths."""
    python = project_env(session)
    session.run(python, "-m", "pytest", *PARALLEL, "-m", "equivalence", *(session.posargs or ["-q"]), external=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and benchmarks."""
    python = project_env(session)
    session.run(python, "-m", "ruff", "check", "dit_repro", "tests", "benchmarks", "noxfile.py", external=True)


@nox.session(python=False)
def gpu_bench(session: nox.Session) -> None:
    """The main job: the Table 4 matrix (paper scale on a GPU, smoke scale on a CPU), then the gate.

    Runs ``dit-repro bench-gate``: against the stored baseline of this hardware when one exists,
    else against the parent / merge-base commit measured in the same run (``--against auto``).
    Arguments after ``--`` go to it (e.g. ``-- --steps 20``, ``-- --against HEAD~3``,
    ``-- --rows gcp,gcp+amp``). The session exits with the gate's own code, which nox would
    otherwise fold into 1: 0 pass, 1 regression, 2 bad data or no reference.
    """
    python = project_env(session)
    command = [python, "-m", "dit_repro.cli", "bench-gate", "--out", "bench-out/results.json", *session.posargs]
    session.log(" ".join(command))
    code = subprocess.call(command)
    if code != 0:
        session.log(f"gate exit code {code} (1 regression, 2 bad data or no reference)")
        # SystemExit passes through nox (it catches Exception only) and keeps the gate's code.
        raise SystemExit(code)


@nox.session(python=False)
def verify(session: nox.Session) -> None:
    """Every claim of the paper with a verdict: verify/report.md, report.json and plots (the committed report).

    Arguments after ``--`` go to ``dit-repro verify`` (e.g. ``-- --results bench-out/results.json``).
    """
    python = project_env(session)
    session.run(python, "-m", "dit_repro.cli", "verify", "--out", "verify", *session.posargs, external=True)

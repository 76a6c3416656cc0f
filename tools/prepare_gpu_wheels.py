#!/usr/bin/env python3
"""Download the wheels a GPU machine without network needs to run ``tools/gpu_check.py``.

Run it where the package index is reachable. GPU images usually carry torch (with CUDA), timm,
accelerate, pytest and scipy, but not diffusers, torch-fidelity or jsonschema; this downloads
those, and the smaller libraries they and the project need, as wheels (no dependencies
resolved: torch and the NVIDIA libraries are never fetched) into an ignored folder that is
copied with the working tree. Binary wheels are specific to one Python version: pass the GPU
image's (``tools/gpu_check.py`` prints it first thing). The folder must stay under 64 MiB, the
limit of what is copied to the device machine.

    python tools/prepare_gpu_wheels.py --python-version 3.11          # -> .gpu-wheels/
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / ".gpu-wheels"
SIZE_LIMIT_BYTES = 64 << 20
"""What the device machine accepts beside the working tree, in all."""

PACKAGES = (
    # what the GPU image lacks
    "diffusers", "importlib-metadata", "zipp", "regex",
    "torch-fidelity",
    "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "attrs",
    # what the project needs and a bare CUDA image may lack (installed only where missing)
    "scikit-learn", "joblib", "threadpoolctl",
    "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing", "python-dateutil", "six",
)
"""Distributions fetched, without their dependencies (torch, numpy, scipy, pillow come with the image)."""

PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
"""Linux x86-64 wheel tags a current GPU image accepts."""


def main(argv: list[str] | None = None) -> int:
    """Download, then report the folder's size against the limit (exit 1 when over it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the GPU image's Python, e.g. 3.11 (default: this interpreter's)")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"wheel folder (default {DEFAULT_DEST})")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", str(args.dest), "--python-version", args.python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    done = subprocess.run(command + list(PACKAGES))
    if done.returncode != 0:
        print(f"pip download failed (exit {done.returncode})", file=sys.stderr)
        return done.returncode
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels for Python {args.python_version} in {args.dest}: {total / 2**20:.1f} MiB "
          f"(limit {SIZE_LIMIT_BYTES / 2**20:.0f} MiB)")
    if total > SIZE_LIMIT_BYTES:
        print("over the limit: remove wheels of other Python versions, or of packages the GPU image has",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

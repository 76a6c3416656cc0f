"""The hardware key: everything about a machine that moves the relative speed of benchmark rows.

A stored baseline is valid only on hardware with the same key. "Step time relative to the run"
removes a machine's overall speed but not its instruction set: bf16 autocast runs level with
fp32 on one CPU, at half its speed on an AVX-512 CPU and fifty times slower on an AVX2-only one.
So the key holds, on a CPU, the model name, the instruction-set features torch's kernels
dispatch on and the core count; on a GPU, its name, count and memory and the CUDA and torch
releases (major.minor), which choose the kernels.

The baseline folder is a readable slug plus a short hash of the whole key, for example
``cpu-intel-xeon-processor-amx-2c-1a2b3c``: the slug is for people, the hash for exact matching.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CPU_DISPATCH_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve", "sve2", "bf16",
                         "i8mm")
"""CPU features that decide which kernels torch (oneDNN, its own vectorised code) runs: x86's AVX2,
AVX-512, its bf16 extension and AMX; Arm's Advanced SIMD, SVE, SVE2, bf16 and int8 matrix multiply."""

_ISA_LEVELS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2"),
               ("sve2", "sve2"), ("sve", "sve"), ("asimd", "neon"))
"""Most capable first: the label of the best feature present names the CPU's class in the slug."""

HASH_CHARS = 6
"""Hex digits of the key's hash in the folder name."""


def parse_cpuinfo(text: str) -> tuple[str | None, list[str]]:
    """Model name and dispatch features from the text of /proc/cpuinfo (x86 ``flags``, Arm ``Features``)."""
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, [feature for feature in CPU_DISPATCH_FEATURES if feature in flags]


def cpu_key(cpuinfo: str | None = None, cores: int | None = None, machine: str | None = None) -> dict[str, Any]:
    """The key of this CPU (arguments replace what is read from the machine, for tests)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    model, features = parse_cpuinfo(cpuinfo)
    return {
        "type": "cpu",
        "name": model or platform.processor() or "unknown cpu",
        "arch": machine or platform.machine(),
        "isa": features,
        "cores": cores if cores is not None else (os.cpu_count() or 1),
    }


def major_minor(version: str | None) -> str | None:
    """``2.14.1+cu128`` -> ``2.14``; None stays None."""
    if version is None:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def gpu_key(name: str, count: int, memory_bytes: int, cuda: str | None, torch_version: str) -> dict[str, Any]:
    """The key of ``count`` GPUs named ``name`` with ``memory_bytes`` each, under these releases."""
    return {
        "type": "cuda",
        "name": name,
        "count": count,
        "memory_gib": round(memory_bytes / 2**30),
        "cuda": major_minor(cuda),
        "torch": major_minor(torch_version),
    }


def key_hash(key: dict[str, Any]) -> str:
    """Short SHA-256 of the key's canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def _words(text: str) -> str:
    """``Intel(R) Xeon(R) Processor @ 2.10GHz`` -> ``intel-xeon``: trademarks, clock and filler words go."""
    text = re.sub(r"\((r|tm|c)\)|@.*$", "", text.lower())
    text = re.sub(r"\b(cpu|processor)\b", " ", text)
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-") or "unknown"


def isa_label(features: Iterable[str]) -> str:
    """The most capable dispatch class present, e.g. ``amx`` or ``avx2`` (``baseline`` when none)."""
    present = set(features)
    return next((label for feature, label in _ISA_LEVELS if feature in present), "baseline")


def key_slug(key: dict[str, Any]) -> str:
    """Folder name of the key's baselines: a readable slug plus the key's short hash."""
    if key["type"] == "cpu":
        readable = f"cpu-{_words(key['name'])}-{isa_label(key['isa'])}-{key['cores']}c"
    else:
        readable = f"{_words(key['name'])}-x{key['count']}-cuda{key['cuda']}"
    return f"{readable[:80].rstrip('-')}-{key_hash(key)}"


def describe_key(key: dict[str, Any]) -> str:
    """One line naming every field of the key."""
    return ", ".join(f"{field}={value if not isinstance(value, list) else '+'.join(value) or '-'}"
                     for field, value in key.items())

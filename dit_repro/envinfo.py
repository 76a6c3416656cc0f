"""The environment fingerprint recorded beside every number: device, libraries, attention."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from .bench.hardware import cpu_key, gpu_key
from .models.attention import backend_report
from .switches import resolve_device

PACKAGES = ("torch", "torchvision", "timm", "diffusers", "accelerate", "torch-fidelity", "scipy", "safetensors", "numpy")


def device_name(device: torch.device) -> str:
    """A human name of the device: the GPU's marketing name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() or platform.processor() or "cpu"


def _cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose behaviour the numbers depend on (None: missing)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES + ("xformers",):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the working tree this package runs from (with -dirty), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cuda_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def hardware_key(device: torch.device) -> dict[str, Any]:
    """The key stored baselines are matched on (dit_repro.bench.hardware): what moves relative speeds."""
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
        return gpu_key(device_name(device), torch.cuda.device_count(), memory, torch.version.cuda, torch.__version__)
    return cpu_key()


def environment_fingerprint(device: torch.device | str = "auto", attention_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Device name and count, torch/CUDA/cuDNN/driver, package versions, git commit, attention backends."""
    dev = resolve_device(device) if isinstance(device, str) else device
    cuda = torch.cuda.is_available()
    return {
        "device": dev.type,
        "device_name": device_name(dev),
        "device_count": torch.cuda.device_count() if dev.type == "cuda" else 1,
        "cpu_count": os.cpu_count(),
        "hardware_key": hardware_key(dev),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": _cuda_driver() if cuda else None,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "attention": backend_report(dev, attention_dtype),
    }

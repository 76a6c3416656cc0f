"""``dit-repro env``: the device, library versions and attention backends of this machine."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..bench.hardware import describe_key, key_slug
from ..envinfo import environment_fingerprint

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``env``."""
    parser = subparsers.add_parser(
        "env",
        help="device, versions and which attention backends run here",
        description="Print the environment fingerprint every result records: device, torch/CUDA/cuDNN/driver, "
        "package versions, git commit, and each attention backend with whether it runs here and why not, "
        "plus what 'auto' (check-then-select) picks.",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N; default auto")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype attention is probed in")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the fingerprint."""
    try:
        env = environment_fingerprint(args.device, DTYPES[args.dtype])
    except ValueError as exc:
        print(f"dit-repro env: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(env, indent=2))
        return 0
    print(f"device      {env['device_name']} ({env['device']}, count {env['device_count']})")
    print(f"hardware    {key_slug(env['hardware_key'])}: {describe_key(env['hardware_key'])}")
    print(f"torch       {env['torch']}  cuda {env['cuda']}  cudnn {env['cudnn']}  driver {env['driver']}")
    print("packages    " + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v))
    print(f"git commit  {env['git_commit']}")
    report = env["attention"]
    print(f"attention   ({report['dtype']}, head_dim {report['head_dim']})")
    for name, entry in report["backends"].items():
        status = "available" if entry["available"] else f"unavailable: {entry['reason']}"
        print(f"  {name:<10} {status}")
    print(f"  auto picks {report['auto']['backend']}")
    return 0

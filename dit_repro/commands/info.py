"""``dit-repro info``: parameter counts, token counts and multiply-adds of a preset."""

from __future__ import annotations

import argparse
import json
import sys

from ..models import PRESETS
from ..models.facts import model_info
from .arguments import at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info``."""
    parser = subparsers.add_parser(
        "info",
        help="parameters, tokens and multiply-adds of a model preset",
        description="Print a preset's parameter count, token count, analytic forward multiply-adds "
        "(gmacs_forward: the unit the DiT papers call 'Gflops') and model FLOPs per training image.",
    )
    parser.add_argument("--model", default="DiT-XL/2", help="preset name (see --list); default DiT-XL/2")
    parser.add_argument("--image-size", type=at_least(1), default=256, help="image side in pixels; default 256")
    parser.add_argument("--num-classes", type=at_least(1), default=1000, help="class labels; default 1000 (ImageNet)")
    parser.add_argument("--pixel-space", action="store_true", help="model the image itself, no VAE")
    parser.add_argument("--list", action="store_true", help="list every preset with its facts")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the facts of one preset, or of all of them with --list."""
    names = list(PRESETS) if args.list else [args.model]
    try:
        rows = [model_info(n, args.image_size, args.num_classes, args.pixel_space) for n in names]
    except ValueError as exc:
        print(f"dit-repro info: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows if args.list else rows[0], indent=2))
        return 0
    print(f"{'model':<12} {'params':>13} {'tokens':>6} {'gmacs_fwd':>10} {'train TFLOPs/img':>16}")
    for row in rows:
        print(f"{row['model']:<12} {row['params']:>13,} {row['tokens']:>6} {row['gmacs_forward']:>10.2f} "
              f"{row['train_flops_per_image'] / 1e12:>16.3f}")
    return 0

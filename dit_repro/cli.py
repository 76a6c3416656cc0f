"""The ``dit-repro`` command line: one subcommand per module in :mod:`dit_repro.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes register(subparsers); the order here is the order in --help.
COMMANDS = ("info", "env", "train", "extract", "sample", "fid", "fid_protocol", "bench", "gate", "bench_gate", "verify")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dit-repro",
        description=(
            "Reproduce and verify 'Optimizing Diffusion Transformers': train DiT/U-ViT with every "
            "optimization as a switch, benchmark speed/memory/FID, gate regressions, verify the paper's claims."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"dit_repro.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the subcommand and return its exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

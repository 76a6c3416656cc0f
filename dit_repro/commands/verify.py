"""``dit-repro verify``: check every claim of the paper and write report.md, report.json and plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dit_repro.bench.schema import ResultsError
from dit_repro.commands.arguments import writable_target
from dit_repro.config import ConfigError
from dit_repro.verify import SCALES, ClaimsError, PaperDataError, VerifyOptions, run_verification
from dit_repro.verify.report import summary_lines, write_report

EPILOG = """\
verdicts: reproduced | direction only | not reproduced | not checkable here (with the reason) |
          inconsistent in the paper itself (the paper's own numbers contradict its text)

On a CPU the verifier checks what does not depend on the machine: parameter counts, FLOPs,
per-GPU memory at the paper's scale (a tensor-level model on fake tensors), the paper against
itself, and the equivalence of the switches (short in-process training runs). Speed claims need
GPU results: pass --results FILE from `dit-repro bench` on a GPU, or run --scale small there.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``verify`` subcommand."""
    parser = subparsers.add_parser(
        "verify",
        help="check every claim of the paper; write report.md, report.json, speed.png, memory.png",
        description="Give each claim of 'Optimizing Diffusion Transformers' a verdict from the paper's own numbers "
        "and from what this machine (or the given benchmark results) can measure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", type=Path, nargs="+", default=[], metavar="FILE",
                        help="results JSON files of `dit-repro bench` to read (GPU results give the speed claims)")
    parser.add_argument("--scale", choices=SCALES, default="none",
                        help="small: first benchmark a DiT-S/2 subset on this GPU (a few minutes); default none")
    parser.add_argument("--out", type=Path, default=Path("verify"),
                        help="output folder for report.md, report.json and the plots (default verify: the committed report)")
    parser.add_argument("--skip-equivalence", action="store_true",
                        help="skip the in-process equivalence checks (the slowest part on a CPU)")
    parser.add_argument("--claims", type=Path, default=None, help="another claims file (default: the shipped one)")
    parser.add_argument("--only", nargs="+", default=[], metavar="ID", help="verify only these claim ids")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Verify, write the report, print one line per claim; 0 once written, 2 on bad input."""
    options = VerifyOptions(results=list(args.results), scale=args.scale, out_dir=args.out,
                            equivalence=not args.skip_equivalence, claims_path=args.claims, only=list(args.only))
    try:
        writable_target(args.out, "--out", folder=True)
        report = run_verification(options)
    except (ClaimsError, PaperDataError, ResultsError, ConfigError) as exc:
        print(f"dit-repro verify: error: {exc}", file=sys.stderr)
        return 2
    paths = write_report(report, args.out)
    print("\n".join(summary_lines(report)))
    print(f"report: {paths['markdown']}\njson: {paths['json']}\nplots: {paths['speed']}, {paths['memory']}")
    return 0

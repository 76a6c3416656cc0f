"""``dit-repro bench-gate``: the main job (``nox -s gpu_bench``): bench, then gate, against what fits.

With a stored baseline recorded on hardware with exactly this hardware key, the matrix is
benched and gated against it. Without one (a new machine, a new GPU class, a new CUDA release),
the code is measured against a git commit in the same run (``--against``, default ``auto``:
the merge-base with the default branch, or HEAD's parent on the default branch itself), so a
first run on any machine ends in a real verdict instead of a false regression or a missing
baseline. The exit code is the gate's: 0 pass, 1 regression, 2 bad data or no reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dit_repro.bench.baselines import MissingBaseline, baseline_name, find_baseline
from dit_repro.bench.hardware import describe_key
from dit_repro.bench.plan import EnvironmentProbeError, default_environment
from dit_repro.bench.results import device_block
from dit_repro.bench.schema import ResultsError
from dit_repro.commands.arguments import writable_target
from dit_repro.config import ConfigError
from dit_repro.gate import DEFAULT_BASELINES, EXIT_DATA_ERROR, GateInputs, Thresholds, run_gate

from .bench import add_bench_arguments, bench_request, run_and_report
from .gate import add_threshold_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench-gate`` subcommand."""
    parser = subparsers.add_parser(
        "bench-gate",
        help="the main job: bench the matrix, then gate it against this hardware's baseline or, without one, "
             "against a git commit in the same run (exit 0 pass, 1 regression, 2 error)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bench_arguments(parser)
    parser.add_argument("--baselines", type=Path, default=DEFAULT_BASELINES,
                        help="stored baselines root (default baselines/)")
    parser.add_argument("--against", default=None, metavar="REF",
                        help="always A/B against REF in the same run, even where a stored baseline exists "
                             "(default: only without one, against auto); --rows implies it")
    add_threshold_arguments(parser)
    parser.set_defaults(func=run)


def _say(text: str) -> None:
    print(f"[bench-gate] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Choose the reference, bench, gate; returns the gate's exit code."""
    try:
        thresholds = Thresholds(time=args.time_threshold, memory=args.memory_threshold, alpha=args.alpha)
        request = bench_request(args, against=None)
        # The results, results.md/.png and gate.md/.png all go beside --out: proven writable before the bench.
        writable_target(args.out, "--out")
        fingerprint = default_environment(request.device_type)
        device = device_block(fingerprint["hardware_key"], None)
        lookup = {"device": device, "scale": request.scale.to_dict(), "matrix": {"name": request.matrix.name}}
        against, reason = args.against, None
        if against is None and args.rows is not None:
            against, reason = "auto", "--rows picks a subset of the matrix, which a stored baseline cannot gate"
        if against is None:
            try:
                stored = find_baseline(lookup, args.baselines)
            except MissingBaseline:
                against = "auto"
                reason = (f"no stored baseline of {baseline_name(lookup)} for this hardware "
                          f"({device['slug']}: {describe_key(device['hardware_key'])}) under {args.baselines}")
        if against is None:
            _say(f"gating against the stored baseline of this hardware: {stored}")
        else:
            request = bench_request(args, against)
            assert request.against is not None
            _say(f"same-run A/B: this code against {request.against.how}"
                 + (f"; {reason}" if reason else "; --against given"))
        run_and_report(request, args.out, environment=lambda _: fingerprint)
        outcome = run_gate(args.out, None if against is not None else args.baselines, GateInputs(thresholds),
                           report_dir=args.out.parent, notes=[reason] if reason else None)
    except (ConfigError, ResultsError, ValueError, EnvironmentProbeError) as exc:
        print(f"dit-repro bench-gate: error: {exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    print(outcome.markdown, end="")
    if outcome.plot_path is not None:
        print(f"plot: {outcome.plot_path}")
    return outcome.exit_code

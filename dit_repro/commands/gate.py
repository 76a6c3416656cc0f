"""``dit-repro gate``: results against REF's side of an A/B or this hardware's baseline; exit 0, 1 or 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dit_repro.bench.reference import resolve_reference
from dit_repro.bench.schema import ResultsError, load_results
from dit_repro.commands.arguments import at_least, number_between, writable_target
from dit_repro.gate import EXIT_DATA_ERROR, EXIT_PASS, EXIT_REGRESSION, GateInputs, Thresholds, run_gate
from dit_repro.gate.ab_selftest import ab_rates, ab_report, save_ab_runs, time_ab_runs
from dit_repro.gate.between_runs import between_run_rates, between_runs_report, time_identical_rows
from dit_repro.gate.selftest import measure_matmul_samples, requirements_met, run_self_test, self_test_report


def parse_fraction(text: str) -> float:
    """A fraction in (0, 1) written as 0.05 or 5%."""
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = float("nan")  # refused below, with the same message as any other bad value
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) such as 0.05 or 5%, got {text!r}")
    return value


MIN_STEPS_PER_RUN = 5
"""Fewest steps per resampled run the self-test accepts (its rank test has no power below)."""

SELF_TEST_DEFAULTS = {"draws": 1000, "steps_per_run": 50, "between_runs": 0, "matrix": "table4",
                      "samples": None, "against": None, "rows": None, "repo": None, "save_samples": None}
"""Defaults of the self-test's flags: one that differs was given, and is an error without --self-test."""

GATE_ONLY_DEFAULTS = {"results": None, "baselines": None, "portable": False, "allow_missing": False, "report_dir": None}
"""Defaults of the flags that only gating a results file reads: an error with --self-test."""


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    """--time-threshold, --memory-threshold and --alpha (shared with ``bench-gate``)."""
    parser.add_argument("--time-threshold", type=parse_fraction, default=0.05,
                        help="relative change of time metrics that counts (default 0.05 = 5%%)")
    parser.add_argument("--memory-threshold", type=parse_fraction, default=0.10,
                        help="relative change of memory metrics that counts (default 0.10 = 10%%)")
    parser.add_argument("--alpha", type=number_between(0.0, 0.5), default=0.01,
                        help="significance level of each one-sided test, in (0, 0.5) (default 0.01)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``gate`` subcommand."""
    parser = subparsers.add_parser(
        "gate",
        help="compare benchmark results with REF's side of an A/B or this hardware's baseline (exit 0/1/2)",
        description=(
            "Compare a results file of `dit-repro bench` with a reference measured on the same hardware: REF's side "
            "when the file comes from `bench --against REF` (results-reference.json beside it), else the stored "
            "baseline recorded on hardware with exactly this hardware key "
            "(BASELINES/<hardware slug>/<model>-b<batch>-<image>px-<matrix>.json). A baseline from other "
            "hardware is never used for timings: the gate names the key it looked for and those stored, and "
            "exits 2 (--portable compares the machine-independent figures against it instead). A metric "
            "regresses only when its change exceeds the threshold AND is significant (one-sided Mann-Whitney U "
            "on per-step samples, bootstrap over rounds for interleaved CPU runs). "
            "Writes gate.md and gate.png to --report-dir. Exit codes: 0 pass, 1 regression or failed row, "
            "2 usage or data error (including no baseline for this hardware, unless --allow-missing)."
        ),
    )
    parser.add_argument("results", nargs="?", type=Path, help="results JSON written by `dit-repro bench`")
    parser.add_argument("--baselines", type=Path, default=None,
                        help="stored baselines root (or one baseline file); default: REF's side for an A/B results "
                             "file, else baselines/")
    parser.add_argument("--portable", action="store_true",
                        help="compare only machine-independent figures (multiply-adds, saved-activation bytes and "
                             "their ratios) against a baseline of this setup from any hardware")
    add_threshold_arguments(parser)
    parser.add_argument("--allow-missing", action="store_true",
                        help="without a baseline for this device, gate only faults (crashed rows) instead of failing")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="where to write gate.md and gate.png (default: the results file's directory)")
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the bootstrap (default 0)")
    selftest = parser.add_argument_group("self-test")
    selftest.add_argument("--self-test", action="store_true",
                          help="measure the gate's detection and false-alarm rates on real step-time noise and exit")
    selftest.add_argument("--samples", type=str, default=None, metavar="RESULTS[:ROW]",
                          help="self-test on a results file's step times (first ok row, or ROW) instead of "
                               "timing a matmul step now")
    selftest.add_argument("--draws", type=at_least(1), default=SELF_TEST_DEFAULTS["draws"],
                          help="self-test draws per slowdown factor (default 1000)")
    selftest.add_argument("--steps-per-run", type=at_least(MIN_STEPS_PER_RUN),
                          default=SELF_TEST_DEFAULTS["steps_per_run"],
                          help="self-test steps in each resampled baseline and current run (default 50, the GPU "
                               "bench's timed steps per row)")
    selftest.add_argument("--between-runs", type=at_least(0), default=SELF_TEST_DEFAULTS["between_runs"], metavar="R",
                          help="also time R fresh runs of 6 identical matmul rows (about 15 s each) and report "
                               "the rates when baseline and candidate are separate runs, as in real use: "
                               "run-to-run noise that resampling one process cannot see")
    selftest.add_argument("--against", default=None, metavar="REF",
                          help="with --between-runs R: instead, run R same-run A/B benches (`bench --against REF`, "
                               "REF's code identical to this code, e.g. HEAD on a clean tree) of the device's "
                               "default scale and report the A/B gate's false alarms and detection")
    selftest.add_argument("--matrix", default=SELF_TEST_DEFAULTS["matrix"],
                          help="matrix of the A/B self-test (default table4)")
    selftest.add_argument("--rows", default=None, metavar="ROW,ROW", help="rows of the A/B self-test (default all)")
    selftest.add_argument("--repo", type=Path, default=None, help="git repository REF is resolved in")
    selftest.add_argument("--save-samples", type=Path, default=None, metavar="JSON",
                          help="also write the A/B runs' per-step times there (a recording to test the gate on)")
    parser.set_defaults(func=run)


def _samples_from_results(spec: str) -> tuple[list[float], str]:
    path, _, row_name = spec.partition(":")
    results = load_results(path)
    rows = [r for r in results["rows"] if r["status"] == "ok" and r["timing"] and (not row_name or r["name"] == row_name)]
    if not rows:
        raise ResultsError(f"{path} has no ok row{' named ' + repr(row_name) if row_name else ''} with step times")
    timing = rows[0]["timing"]
    # The clock the gate compares for this device: CPU time on a CPU, wall time (CUDA events) on a GPU.
    samples, clock = (timing["cpu_times_s"], "CPU time") if timing.get("cpu_times_s") else (timing["step_times_s"], "wall time")
    return samples, f"{path} row {rows[0]['name']!r} ({results['device']['name']}, {clock})"


def _ab_self_test(args: argparse.Namespace, thresholds: Thresholds) -> int:
    if args.between_runs < 1:
        raise ValueError("--against in the self-test needs --between-runs R (R >= 1 A/B runs)")
    reference = resolve_reference(args.against, args.repo)
    rows = [name.strip() for name in args.rows.split(",")] if args.rows else None
    try:
        runs, hardware = time_ab_runs(args.between_runs, reference, args.matrix, rows, progress=sys.stderr)
    except RuntimeError as exc:  # a worker failed: no measurement, not a regression
        print(f"dit-repro gate: error: {exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    estimates = ab_rates(runs, thresholds, seed=args.seed)
    source = f"matrix {args.matrix}{', rows ' + args.rows if args.rows else ''}, against {reference.how}"
    print(ab_report(runs, estimates, thresholds, source), end="")
    if args.save_samples is not None:
        print(f"samples: {save_ab_runs(args.save_samples, runs, source, hardware)}")
    met = requirements_met(estimates)
    print(f"\nrequirement (x1.10 caught >= 95%, x1.00 flagged <= 1%): {'met' if met else 'NOT met'}")
    return EXIT_PASS if met else EXIT_REGRESSION


def _self_test(args: argparse.Namespace, thresholds: Thresholds) -> int:
    if args.against is not None:
        return _ab_self_test(args, thresholds)
    if args.between_runs and args.between_runs < 2:
        raise ValueError(f"--between-runs needs at least 2 runs to compare, got {args.between_runs}")
    if args.samples:
        samples, source = _samples_from_results(args.samples)
    else:
        print("timing 400 steps of a 512x512 matmul training step (batch 512, one thread) on this CPU ...",
              file=sys.stderr)
        samples, source = measure_matmul_samples(), "a 512x512 matmul training step (batch 512, 1 thread) on this CPU"
    estimates = run_self_test(samples, thresholds, n=args.steps_per_run, draws=args.draws, seed=args.seed)
    print(self_test_report(samples, estimates, args.steps_per_run, thresholds, source), end="")
    met = requirements_met(estimates)
    if args.between_runs:
        try:
            runs = time_identical_rows(args.between_runs, progress=sys.stderr)
        except RuntimeError as exc:  # a worker failed: no measurement, not a regression
            print(f"dit-repro gate: error: {exc}", file=sys.stderr)
            return EXIT_DATA_ERROR
        across = between_run_rates(runs, thresholds, seed=args.seed)
        print()
        print(between_runs_report(runs, across, thresholds), end="")
        print(f"\nrequirement across runs: {'met' if requirements_met(across) else 'NOT met'}")
        met = met and requirements_met(across)
    return EXIT_PASS if met else EXIT_REGRESSION


def _given(args: argparse.Namespace, defaults: dict[str, object]) -> list[str]:
    """The flags among ``defaults`` whose value differs from the default, as written on the command line."""
    names = [name for name, default in defaults.items() if getattr(args, name) != default]
    return ["RESULTS" if name == "results" else "--" + name.replace("_", "-") for name in names]


def check_before_work(args: argparse.Namespace) -> None:
    """Flags the chosen mode would ignore, and outputs that cannot be written: refused before any work."""
    if args.self_test:
        ignored = _given(args, GATE_ONLY_DEFAULTS)
        if ignored:
            raise ValueError(f"{', '.join(ignored)}: for gating a results file, ignored by --self-test; drop "
                             f"{'it' if len(ignored) == 1 else 'them'} or drop --self-test")
        if args.save_samples is not None:
            writable_target(args.save_samples, "--save-samples")
        return
    ignored = _given(args, SELF_TEST_DEFAULTS)
    if ignored:
        raise ValueError(f"{', '.join(ignored)}: for --self-test only, ignored when gating a results file; add "
                         f"--self-test or drop {'it' if len(ignored) == 1 else 'them'}")
    if args.results is None:
        raise ValueError("RESULTS is required (a results JSON of `dit-repro bench`), or use --self-test")
    if not args.results.exists():
        raise ResultsError(f"results file {args.results} does not exist")
    if not args.results.is_file():
        raise ResultsError(f"RESULTS {args.results} is a folder; name the results JSON written by `dit-repro bench`")
    flag = "--report-dir" if args.report_dir else "--report-dir (default: the folder of RESULTS)"
    writable_target(args.report_dir or args.results.parent, flag, folder=True)


def run(args: argparse.Namespace) -> int:
    """Run the gate (or its self-test); returns the exit code."""
    try:
        check_before_work(args)
        thresholds = Thresholds(time=args.time_threshold, memory=args.memory_threshold, alpha=args.alpha)
        if args.self_test:
            return _self_test(args, thresholds)
        outcome = run_gate(args.results, args.baselines, GateInputs(thresholds, seed=args.seed),
                           allow_missing=args.allow_missing, report_dir=args.report_dir or args.results.parent,
                           portable=args.portable)
    except (ResultsError, ValueError, OSError) as exc:  # ConfigError is a ValueError
        print(f"dit-repro gate: error: {exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    print(outcome.markdown, end="")
    if outcome.plot_path is not None:
        print(f"plot: {outcome.plot_path}")
    return outcome.exit_code if outcome.exit_code in (EXIT_PASS, EXIT_REGRESSION) else EXIT_DATA_ERROR

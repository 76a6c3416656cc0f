"""``dit-repro bench``: time and size an ablation matrix, each row in a fresh process."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dit_repro.atomic import write_text_atomic
from dit_repro.bench.baselines import record_baseline
from dit_repro.bench.matrices import BUILTIN_MATRICES, build_matrix, select_rows
from dit_repro.bench.plan import (
    BenchRequest,
    BenchRun,
    EnvironmentProbeError,
    default_environment,
    default_scale,
    paired_path,
    resolve_device_type,
    run_bench,
    with_overrides,
    write_run,
)
from dit_repro.bench.reference import resolve_reference
from dit_repro.bench.report import plot_results, results_markdown
from dit_repro.bench.runner import SCHEDULES
from dit_repro.bench.schema import ResultsError
from dit_repro.bench.stats import WarmupPolicy
from dit_repro.commands.arguments import at_least, positive_number, writable_target
from dit_repro.config import ConfigError

EPILOG = """\
matrices:
  table4     the paper's Table 4: original, gcp-no-tf32, gcp, gcp+amp, gcp+features, gcp+amp+features
             (tf32 everywhere but gcp-no-tf32; AMP = fp16 autocast on CUDA, bf16 on CPU;
              features = cached latents instead of live VAE encoding)
  attention  every attention backend (auto, math, sdpa, flash, efficient, cudnn, xformers)
  compile    eager and every torch.compile mode x scope (model, blocks)
  NAME=ROW;ROW;...   a custom matrix; ROW = [LABEL@]KEY:VALUE[+KEY:VALUE...] or [LABEL@]default
             keys: attention (attn), precision, checkpointing (ckpt), checkpointing_k (every), compile,
             compile_scope (scope), features, protocol. Unnamed switches: features=cached, else defaults.
             example: --matrix 'mine=fast@ckpt:full+precision:bf16;plain@ckpt:none'

same-run A/B (--against REF): every row runs twice in one run, once with this code and once with
REF's (any git ref, checked out into a temporary git worktree and run in fresh worker processes of
this same environment), interleaved on a CPU, back to back on a GPU. The gate then compares the two
sides: on the same machine at the same time, so no stored number from other hardware is involved.
It costs twice the rows of a plain bench, and at the CPU smoke scale twice the steps per row too
(120 per side: 60 paired rounds), about 3.5x a plain bench; --rows picks a subset. REF's side is written to
results-reference.json beside the results; `dit-repro gate RESULTS` finds it.
  --against auto   the merge-base of HEAD with origin/main (or main); HEAD's parent when HEAD is it
  --against HEAD   with uncommitted changes: measures them against the last commit

scales: a GPU runs the paper's DiT-XL/2, batch 128, 256 px; a CPU shrinks to a smoke scale
(DiT-S/2, batch 8, 32 px, tiny VAE, rows interleaved) that finishes in a few minutes.
An out-of-memory row is a result (status oom); the matrix goes on. The command exits 0 once
the results are written, whatever the rows' statuses (`dit-repro gate` judges them), 2 on bad input.
"""


def _injection(text: str) -> tuple[str, float]:
    row, sep, factor = text.rpartition("=")
    try:
        value = float(factor)
    except ValueError:
        value = 0.0
    if not sep or not row or value < 1.0:
        raise argparse.ArgumentTypeError(f"expected ROW=FACTOR with FACTOR >= 1 (e.g. gcp=1.10), got {text!r}")
    return row, value


def capped_warmup(policy: WarmupPolicy, max_steps: int) -> WarmupPolicy:
    """``policy`` with at most ``max_steps`` warm-up steps; the windows shrink to fit two of them."""
    if max_steps < 2:
        raise ValueError(f"--warmup-max must be >= 2 (two windows of one step), got {max_steps}")
    window = min(policy.window, max_steps // 2)
    return WarmupPolicy(window, policy.rel_tol, min(policy.min_steps, max_steps), max_steps)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bench`` (shared with ``bench-gate``)."""
    parser.add_argument("--matrix", default="table4", help=f"{', '.join(BUILTIN_MATRICES)} or NAME=ROW;... (default table4)")
    parser.add_argument("--rows", default=None, metavar="ROW,ROW",
                        help="run only these rows of the matrix (comma-separated), e.g. to A/B a subset in CI")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--model", default=None, help="model preset (default: DiT-XL/2 on GPU, DiT-S/2 on CPU)")
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="global batch size (default: 128 GPU, 8 CPU)")
    parser.add_argument("--image-size", type=at_least(1), default=None, help="image side in pixels (default: 256 GPU, 32 CPU)")
    parser.add_argument("--steps", type=at_least(1), default=None, help="timed steps per row (default: 50 GPU, 60 CPU)")
    parser.add_argument("--block-steps", type=at_least(1), default=None, help="steps per block when interleaved")
    parser.add_argument("--schedule", choices=SCHEDULES, default=None,
                        help="sequential (GPU default) or interleaved (CPU default: drift cancels in ratios)")
    parser.add_argument("--warmup-max", type=at_least(2), default=None,
                        help="most warm-up steps per row (>= 2: two windows of one step)")
    parser.add_argument("--data", default=None, help="dataset spec (default synthetic)")
    parser.add_argument("--vae", default=None,
                        help="VAE of live rows and of the temporary cache (default: full-size-random GPU, tiny-random CPU)")
    parser.add_argument("--cache-dir", default=None, help="latent cache for cached rows (default: a temporary one)")
    parser.add_argument("--num-classes", type=at_least(1), default=None, help="label classes (default: 1000 GPU, the data's on CPU)")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch threads per worker on CPU (default 1)")
    parser.add_argument("--seed", type=at_least(0), default=0, help="training seed of every row")
    parser.add_argument("--peak-flops", type=positive_number, default=None,
                        help="peak FLOP/s that every row's MFU is divided by, whatever the row's precision "
                             "(default: the GPU's dense datasheet peak at each row's own precision: fp32, tf32, "
                             "fp16 or bf16)")
    parser.add_argument("--row-timeout", type=positive_number, default=3600.0, help="seconds to wait for any one worker reply")
    parser.add_argument("--repo", type=Path, default=None,
                        help="git repository REF is resolved in (default: the one holding this dit_repro package, "
                             "else the working directory's)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/results.json"),
                        help="results JSON (default bench-out/results.json), rewritten after every finished row with "
                             "the rows still to come as not_run, so a killed sequential run (the GPU default) keeps "
                             "what it measured; results.md/.png and logs/ go beside it, and in an A/B REF's side as "
                             "results-reference.json")
    parser.add_argument("--inject-slowdown", type=_injection, action="append", default=[], metavar="ROW=FACTOR",
                        help="TEST ONLY: stretch ROW's timed steps by FACTOR (busy-waits inside the timed region) to show "
                             "that the gate catches a slower configuration; in an A/B only this code's side is slowed")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="time and size an ablation matrix (Table 4, attention, compile, custom), optionally A/B against a git ref",
        description="Warm each configuration up until its step time is steady, time many steps (CUDA events on a "
        "GPU), read peak memory and saved activations, and write a results JSON (schema: "
        "dit_repro/bench/results.schema.json) plus results.md and results.png beside it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bench_arguments(parser)
    parser.add_argument("--against", default=None, metavar="REF",
                        help="same-run A/B: also run every row with REF's code (a git ref, or auto)")
    parser.add_argument("--record", nargs="?", const=Path("baselines"), type=Path, default=None, metavar="BASELINES",
                        help="also write the results as this hardware's baseline under BASELINES (default baselines/); "
                             "review and commit it")
    parser.set_defaults(func=run)


def bench_request(args: argparse.Namespace, against: str | None) -> BenchRequest:
    """The request the options describe; REF is resolved (and refused when unusable) before anything runs."""
    device_type = resolve_device_type(args.device)
    matrix = build_matrix(args.matrix, device_type)
    if args.rows is not None:
        matrix = select_rows(matrix, [name.strip() for name in args.rows.split(",") if name.strip()])
    base = default_scale(device_type)
    warmup = base.warmup if args.warmup_max is None else capped_warmup(base.warmup, args.warmup_max)
    scale = with_overrides(
        base, model=args.model, global_batch_size=args.batch_size, image_size=args.image_size,
        timed_steps=args.steps, block_steps=args.block_steps, schedule=args.schedule, data=args.data,
        vae=args.vae, num_classes=args.num_classes, threads=args.threads, warmup=warmup,
    )
    reference = None if against is None else resolve_reference(against, args.repo)
    return BenchRequest(matrix, scale, device_type, cache_dir=args.cache_dir, seed=args.seed,
                        inject_slowdown=dict(args.inject_slowdown), peak_flops=args.peak_flops,
                        timeout_s=args.row_timeout, command=["dit-repro", *sys.argv[1:]], against=reference)


def run_and_report(request: BenchRequest, out: Path,
                   environment: Callable[[str], dict[str, Any]] = default_environment) -> BenchRun:
    """Run the bench, write the results (and REF's side) with results.md/.png, and print the table."""
    if request.scale.smoke:
        print(f"[bench] {request.scale.notes[0]}", file=sys.stderr)
    # Partial results after every finished row: a run killed by a time limit keeps what it measured.
    # An earlier run's files go first, so that a killed run leaves nothing that contradicts it.
    for stale in (out, paired_path(out), out.with_suffix(".md"), out.with_suffix(".png")):
        stale.unlink(missing_ok=True)
    run = run_bench(request, out.parent / "logs", environment=environment, partial_out=out)
    written = write_run(out, run)
    markdown = results_markdown(run.results)
    if run.reference is not None:
        markdown += "\n" + results_markdown(run.reference)
    write_text_atomic(out.with_suffix(".md"), markdown)
    plot = plot_results(run.results, out.with_suffix(".png"))
    print(markdown, end="")
    print(f"results: {', '.join(map(str, written))}\nplot: {plot}")
    return run


def run(args: argparse.Namespace) -> int:
    """Run the matrix, write and print the results; 0 once results are written, 2 on bad input."""
    try:
        if args.record is not None and args.against is not None:
            raise ValueError("--record and --against do not go together: a baseline is one code's results on this "
                             "hardware; run `dit-repro bench --record` on the commit to store")
        request = bench_request(args, args.against)
        writable_target(args.out, "--out")
        if args.record is not None:
            writable_target(args.record, "--record", folder=True)
        run = run_and_report(request, args.out)
        if args.record is not None:
            print(f"baseline written: {record_baseline(run.results, args.record)} (review it, then commit it)")
    except (ConfigError, ResultsError, ValueError, EnvironmentProbeError) as exc:
        print(f"dit-repro bench: error: {exc}", file=sys.stderr)
        return 2
    return 0

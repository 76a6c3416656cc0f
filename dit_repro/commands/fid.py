"""``dit-repro fid``: FID of sample sets against reference statistics, and the FID regression gate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dit_repro.atomic import write_json_atomic
from dit_repro.commands.arguments import at_least, number_between, writable_target
from dit_repro.fid.evaluate import fid_of_samples
from dit_repro.fid.extractors import EXTRACTORS, INCEPTION_WEIGHTS_URL, extractor_spec, inception_cache_path
from dit_repro.fid.stats import MIN_IMAGES, reference_stats, save_stats
from dit_repro.fid_gate import (
    DEFAULT_FALSE_FAILURE_RATE,
    MIN_SEEDS,
    check_against_baseline,
    load_baseline,
    record_baseline,
)
from dit_repro.switches import resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fid``."""
    parser = subparsers.add_parser(
        "fid",
        help="FID of samples against reference statistics; record or check an FID baseline",
        description=(
            "Compute FID with torch-fidelity's InceptionV3 (inception-v3-compat, the TensorFlow FID network) "
            "or, for CPU tests and CI, a proxy feature extractor whose numbers are labelled proxy-FID and "
            "are not comparable with published FID. Samples: folders written by `dit-repro sample` (read "
            "by index, with their samples.json) or .npz files with arr_0. Reference: an image folder, an "
            "ADM reference batch (.npz with mu/sigma), or an .npz with arr_0 images. Each result reports "
            "the value, the sample count N and the seed. FIDs are only compared at equal N, extractor and "
            "reference (FID's bias depends on N). The Inception weights are never downloaded unless "
            f"--download-weights is given: put {INCEPTION_WEIGHTS_URL} at {inception_cache_path()} or pass "
            "--inception-weights. Exit status: 0 ok, 1 gate failed, 2 usage or data error."
        ),
    )
    parser.add_argument("samples", nargs="+", help="sample folder(s) or .npz file(s), one per seed")
    parser.add_argument(
        "--ref", required=True, help="reference: image folder, ADM .npz (mu, sigma) or .npz with arr_0"
    )
    parser.add_argument(
        "--extractor",
        default="inception",
        choices=list(EXTRACTORS),
        help="inception (real FID; default) or proxy (proxy-FID for CPU tests and CI)",
    )
    parser.add_argument("--num", type=at_least(MIN_IMAGES), default=None,
                        help=f"use the first N images of each sample set (N >= {MIN_IMAGES}: a covariance needs two)")
    parser.add_argument("--seed", type=at_least(0), default=None, help="seed to report (default: from samples.json)")
    parser.add_argument("--inception-weights", default=None,
                        help="path of the InceptionV3 FID weights file (refused unless its SHA-256 is the published "
                             "file's; then read weights-only)")
    parser.add_argument(
        "--download-weights",
        action="store_true",
        help="allow downloading the Inception weights into the torch hub cache (checked like any other copy)",
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="feature extraction device"
    )
    parser.add_argument("--batch-size", type=at_least(1), default=64, help="images per feature batch; default 64")
    parser.add_argument("--save-ref-stats", default=None, help="write the reference statistics to this .npz")
    parser.add_argument("--json", default=None, help="write the results (and verdict) to this JSON file")
    gate = parser.add_mutually_exclusive_group()
    gate.add_argument(
        "--record",
        default=None,
        metavar="BASELINE",
        help=f"record a baseline from the sample sets (at least {MIN_SEEDS}, seeds at least N apart)",
    )
    gate.add_argument(
        "--baseline", default=None, help="check the sample sets against this baseline (exit 1 when worse)"
    )
    parser.add_argument(
        "--false-failure-rate",
        type=number_between(0.0, 0.5),
        default=DEFAULT_FALSE_FAILURE_RATE,
        help=f"with --record: probability that an unchanged model fails the gate; default {DEFAULT_FALSE_FAILURE_RATE}",
    )
    parser.set_defaults(func=run)


def check_before_work(args: argparse.Namespace) -> dict | None:
    """Every check that needs no features: flag combinations, inputs that exist, outputs that can be written.

    Runs before the first image is read, so that a bad flag costs a second rather than the
    feature extraction, and writes nothing. Returns the ``--baseline`` document, if one is given.
    """
    if args.seed is not None and len(args.samples) > 1:
        raise ValueError("--seed applies to a single sample set; each of several sets reports its own seed")
    if args.inception_weights is not None and args.extractor != "inception":
        raise ValueError("--inception-weights applies to --extractor inception only; drop it or use inception")
    if args.save_ref_stats is not None and not args.save_ref_stats.endswith(".npz"):
        raise ValueError(f"--save-ref-stats {args.save_ref_stats}: statistics are written as .npz; name a .npz file")
    for flag, path in (("--ref", args.ref), *(("SAMPLES", sample) for sample in args.samples)):
        if not Path(path).exists():
            raise ValueError(f"{flag} {path} does not exist: give a folder of images or an .npz file")
    baseline = load_baseline(args.baseline) if args.baseline else None
    for flag, path in (("--json", args.json), ("--save-ref-stats", args.save_ref_stats), ("--record", args.record)):
        if path is not None:
            writable_target(path, flag)
    return baseline


def run(args: argparse.Namespace) -> int:
    """Compute the FIDs, then record or check a baseline; 0 ok, 1 gate failed, 2 usage or data error."""
    try:
        baseline = check_before_work(args)
        spec = extractor_spec(args.extractor)
        device = str(resolve_device(args.device))
        options = {
            "device": device,
            "batch_size": args.batch_size,
            "inception_weights": args.inception_weights,
            "allow_download": args.download_weights,
        }
        reference = reference_stats(args.ref, spec, **options)
        results = [
            fid_of_samples(path, reference, spec, num=args.num, seed=args.seed, **options)
            for path in args.samples
        ]
        # Outputs only once every FID is known: a failure above leaves no statistics file behind.
        if args.save_ref_stats:
            save_stats(args.save_ref_stats, reference)
        for result in results:
            print(f"{result.describe()}  [{result.samples}]")
        output: dict = {"results": [r.to_dict() for r in results]}
        status = 0
        if args.record:
            recorded = record_baseline(results, args.record, false_failure_rate=args.false_failure_rate)
            summary = recorded["summary"]
            print(
                f"{spec.metric_label} baseline recorded in {args.record}: mean {summary['mean']:.4f}, "
                f"std {summary['std']:.4f} over {len(results)} seeds; one new run fails above "
                f"{summary['threshold_one_run']:.4f} (false-failure rate {args.false_failure_rate:g})"
            )
        elif baseline is not None:
            verdict = check_against_baseline(results, baseline)
            print(verdict.summary())
            output["verdict"] = verdict.to_dict()
            status = 0 if verdict.passed else 1
        if args.json:
            write_json_atomic(args.json, output)
    except (ValueError, OSError) as exc:  # ConfigError and the FID errors are ValueErrors
        print(f"dit-repro fid: error: {exc}", file=sys.stderr)
        return 2
    return status

"""``dit-repro fid-protocol NAME``: a published FID-50K protocol end to end: sample, pack, FID, record."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dit_repro.atomic import write_json_atomic
from dit_repro.checkpoint import CheckpointError
from dit_repro.commands.arguments import add_sampling_process_arguments, at_least
from dit_repro.commands.sample import launch_position
from dit_repro.config import ConfigError, Precision
from dit_repro.fid.evaluate import fid_of_samples
from dit_repro.fid.extractors import EXTRACTORS, extractor_spec
from dit_repro.fid.protocols import PROTOCOLS
from dit_repro.fid.stats import MIN_IMAGES, load_stats, reference_stats
from dit_repro.models import PRESETS
from dit_repro.models.attention import AttentionBackendUnavailable
from dit_repro.sampling import SamplingRequest, run_sampling
from dit_repro.switches import resolve_device

RECORD_NAME = "fid_protocol.json"
"""The record written beside the images: protocol, settings, checkpoint hash, FID, elapsed times."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fid-protocol``."""
    lines = "; ".join(f"{p.name}: {p.published}" for p in PROTOCOLS.values())
    parser = subparsers.add_parser(
        "fid-protocol",
        help="a published FID-50K protocol in one command (sample, ADM .npz, FID, JSON record)",
        description=(
            "Sample N images from a checkpoint with a paper's FID settings, pack them into the ADM .npz, "
            "compute FID against the reference batch given by --ref, and write fid_protocol.json beside "
            "the images (settings, checkpoint SHA-256, FID, elapsed time). dit: 250 DDPM steps, guidance "
            "1.5 on the first 3 latent channels, the sd-vae-ft-ema VAE, 50,000 images, per-image seeds. "
            "uvit: DPM-Solver++ with 50 model evaluations (order 3, time-uniform), guidance 0.4 in U-ViT's "
            "convention (1.4 here) on all channels, the VAE file of U-ViT's release given by --vae, 50,000 images. "
            "Resumable and splittable like `dit-repro sample` (torchrun --nproc_per_node=N, or --rank/"
            f"--world-size); the process that completes the set computes FID. Published figures: {lines}."
        ),
    )
    parser.add_argument("protocol", choices=sorted(PROTOCOLS), help="the protocol: dit or uvit")
    parser.add_argument("--checkpoint", required=True,
                        help="dit-repro, DiT/fast-DiT training, or DiT's released checkpoint (with --model)")
    parser.add_argument("--model", default=None, choices=sorted(PRESETS), metavar="PRESET",
                        help="preset of a bare state dict, e.g. DiT-XL/2 for DiT-XL-2-256x256.pt")
    parser.add_argument("--ref", required=True,
                        help="reference batch: ADM's VIRTUAL_imagenet256_labeled.npz (mu, sigma) or any --ref of `dit-repro fid`")
    parser.add_argument("--out", required=True, help="folder for the images, the .npz and fid_protocol.json")
    parser.add_argument("--num-fid-samples", "--num", dest="num", type=at_least(MIN_IMAGES), default=None,
                        help="images N; default the protocol's (50,000); fewer gives an FID not comparable with the paper's")
    parser.add_argument("--vae", default=None,
                        help="VAE weights (local folder or file); dit: default sd-vae-ft-ema from the local Hugging Face "
                        "cache; uvit: required, U-ViT's assets/stable-diffusion/autoencoder_kl_ema.pth")
    parser.add_argument("--per-proc-batch-size", "--batch-size", dest="batch_size", type=at_least(1), default=32,
                        help="images per forward in each process; default 32")
    parser.add_argument("--global-seed", "--seed", dest="seed", type=at_least(0), default=0,
                        help="base seed: image i uses seed + i; default 0")
    parser.add_argument("--precision", default=None, choices=[p.value for p in Precision],
                        help="precision of the model's forwards; default the protocol's (dit: tf32, as sample_ddp.py; "
                        "uvit: fp16, as U-ViT's accelerate launch)")
    parser.add_argument("--extractor", default="inception", choices=list(EXTRACTORS),
                        help="inception (real FID; default) or proxy (CPU tests only, not comparable)")
    parser.add_argument("--inception-weights", default=None, help="path of the InceptionV3 FID weights file")
    parser.add_argument("--fid-batch-size", type=at_least(1), default=64, help="images per Inception batch; default 64")
    add_sampling_process_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sample this process's share; the process that completes the set computes FID. 2 on a usage or data error."""
    protocol = PROTOCOLS[args.protocol]
    try:
        vae = args.vae or protocol.vae
        if vae is None:
            raise ConfigError(
                f"protocol {protocol.name} decodes with {protocol.vae_published}: pass that file with --vae PATH"
            )
        if not Path(args.ref).exists():
            raise ConfigError(f"--ref {args.ref} does not exist; expected {protocol.reference}")
        precision = args.precision or protocol.precision
        out = Path(args.out)
        rank, world_size = launch_position(args.rank, args.world_size)
        num = args.num or protocol.num_samples
        # Statistics in --ref (ADM's batch) are read before sampling, so that a wrong or junk file
        # fails in seconds, not after 50,000 images; a reference of images is featurised at the end.
        spec = extractor_spec(args.extractor)
        options = {"device": str(resolve_device(args.device)), "batch_size": args.fid_batch_size,
                   "inception_weights": args.inception_weights, "allow_download": False}
        reference = load_stats(args.ref, spec) if Path(args.ref).suffix == ".npz" else None
        started = time.perf_counter()
        report = run_sampling(SamplingRequest(
            checkpoint=args.checkpoint, out_dir=str(out), num=num, seed=args.seed, sampler=protocol.sampler,
            steps=protocol.steps, cfg_scale=protocol.cfg_scale, cfg_channels=protocol.cfg_channels,
            weights="ema", precision=Precision(precision), batch_size=args.batch_size, image_format="npz",
            device=args.device, vae=vae, model=args.model, rank=rank, world_size=world_size,
            progress=not args.no_progress,
        ))
        sampling_s = time.perf_counter() - started
        if report.npz is None:
            print(f"rank {rank}/{world_size}: sampled {len(report.generated)} image(s); the process that completes "
                  "the set computes FID")
            return 0
        started = time.perf_counter()
        if reference is None:
            reference = reference_stats(args.ref, spec, **options)
        result = fid_of_samples(report.npz, reference, spec, **options)
        fid_s = time.perf_counter() - started
    except (ConfigError, CheckpointError, AttentionBackendUnavailable, ValueError, OSError) as exc:
        print(f"dit-repro fid-protocol: error: {exc}", file=sys.stderr)
        return 2
    comparable = result.metric == "FID" and num == protocol.num_samples
    record = {
        "protocol": protocol.name,
        "settings": {key: getattr(protocol, key) for key in ("sampler", "steps", "cfg_scale", "cfg_channels")}
        | {"precision": precision},
        "num_samples": num,
        "seed": args.seed,
        "checkpoint": report.record["checkpoint"],
        "decoder": report.record["settings"]["decoder"],
        "reference": {"path": str(args.ref), "sha256": result.reference},
        "fid": result.to_dict() | {"sampling": None},
        "comparable_with_published": comparable,
        "published": protocol.published,
        "source": protocol.source,
        "elapsed_s": {"sampling_this_process": round(sampling_s, 3), "fid": round(fid_s, 3)},
        "npz": report.npz,
    }
    write_json_atomic(out / RECORD_NAME, record)
    note = "" if comparable else " (not comparable with the published figure: " + (
        "proxy features)" if result.metric != "FID" else f"N={num}, the paper's is {protocol.num_samples})")
    print(f"{result.describe()}{note}; published: {protocol.published}; record {out / RECORD_NAME}")
    return 0

"""``dit-repro extract``: encode a dataset once into a VAE latent cache for features=cached."""

from __future__ import annotations

import argparse
import os
import sys

from dit_repro.config import ConfigError
from dit_repro.data.extraction import extract_latent_cache
from dit_repro.data.images import build_image_source
from dit_repro.data.manifest import MANIFEST_NAME
from dit_repro.data.vae import load_vae
from dit_repro.distributed import launched_process
from dit_repro.switches import resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``extract``."""
    parser = subparsers.add_parser(
        "extract",
        help="encode a dataset once into a VAE latent cache (for --features cached)",
        description="Store the VAE posterior moments (mean, log-variance) of every image and of its "
        "mirror image, with labels, in safetensors shards plus a manifest.json (VAE and dataset "
        "fingerprints, per-shard sha256). Training on the cache draws a fresh flip and posterior sample "
        "per step, as live encoding does. Shards are named by index range and written atomically: split "
        "the work with --rank/--world-size (or torchrun), and re-run the same command to resume.",
    )
    parser.add_argument(
        "--data", required=True, help="digits, synthetic[:count=N,classes=K,seed=S], or an image folder"
    )
    parser.add_argument(
        "--out", required=True, help="cache folder (new, empty, or a partial cache of the same configuration)"
    )
    parser.add_argument(
        "--vae",
        required=True,
        help="VAE weights: a diffusers folder, a .safetensors/.ckpt file, a cached HF repo id "
        "(stabilityai/sd-vae-ft-ema), or tiny-random (tests only)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels; default 256")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per VAE call (each encoded twice); default 32"
    )
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard file; default 1024")
    parser.add_argument("--rank", type=int, default=None, help="this process's rank; default $RANK or 0")
    parser.add_argument(
        "--world-size", type=int, default=None, help="number of processes; default $WORLD_SIZE or 1"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:$LOCAL_RANK if CUDA is available, else cpu), cpu or cuda[:N]",
    )
    parser.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers for decoding; default 0"
    )
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        help="latent scale factor; default the VAE's (0.18215 for SD)",
    )
    parser.add_argument(
        "--max-shards",
        type=int,
        default=None,
        help="stop after this many new shards (for time-limited jobs); re-run to go on",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Extract this rank's shards; print throughput and whether the cache is complete."""
    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", "0"))
    world_size = args.world_size if args.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    try:
        device = resolve_device(args.device, local_rank=launched_process().local_rank)
        images = build_image_source(args.data, args.image_size, channels=3)
        vae = load_vae(args.vae, device, scale_factor=args.scale_factor)
        report = extract_latent_cache(
            images,
            vae,
            args.out,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            rank=rank,
            world_size=world_size,
            num_workers=args.num_workers,
            max_shards=args.max_shards,
            progress=not args.no_progress,
        )
    except (ConfigError, ValueError) as exc:
        print(f"dit-repro extract: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"rank {rank}/{world_size}: wrote {report.shards_written} shard(s) "
        f"({report.shards_already_done} already done), encoded {report.images_encoded} image(s), "
        f"skipped {report.images_skipped} unreadable, {report.images_per_second:.2f} images/s"
    )
    if report.complete:
        print(f"cache complete: {args.out}/{MANIFEST_NAME}")
    else:
        print(
            f"cache not complete yet: other ranks' shards are missing (or --max-shards stopped early); {args.out}"
        )
    return 0

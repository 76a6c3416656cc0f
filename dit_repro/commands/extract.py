"""``dit-repro extract``: encode a dataset once into a VAE latent cache for features=cached."""

from __future__ import annotations

import argparse
import os
import sys

from dit_repro.commands.arguments import at_least
from dit_repro.config import ConfigError
from dit_repro.data.extraction import check_cache_folder, extract_latent_cache
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
        "the work with --rank/--world-size (or torchrun), and re-run the same command to resume. Before any work "
        "--out is checked (writable; new, empty, or a cache of the same configuration) and every image is decoded "
        "once: unreadable ones are left out with a warning and listed in the manifest (skipped), or refused with "
        "--strict.",
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
    parser.add_argument("--image-size", type=at_least(1), default=256, help="image side in pixels; default 256")
    parser.add_argument(
        "--batch-size", type=at_least(1), default=32, help="images per VAE call (each encoded twice); default 32"
    )
    parser.add_argument("--shard-size", type=at_least(1), default=1024, help="images per shard file; default 1024")
    parser.add_argument("--rank", type=at_least(0), default=None, help="this process's rank; default $RANK or 0")
    parser.add_argument(
        "--world-size", type=at_least(1), default=None, help="number of processes; default $WORLD_SIZE or 1"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:$LOCAL_RANK if CUDA is available, else cpu), cpu or cuda[:N]",
    )
    parser.add_argument(
        "--num-workers", type=at_least(0), default=0, help="DataLoader workers for decoding (and threads of the scan for unreadable images); default 0"
    )
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        help="latent scale factor; default the VAE's (0.18215 for SD)",
    )
    parser.add_argument(
        "--max-shards",
        type=at_least(1),
        default=None,
        help="stop after this many new shards (for time-limited jobs); re-run to go on",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse to extract when the image folder holds unreadable images (default: leave them out with a "
        "warning and list them in the manifest)",
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
        # Before the VAE is loaded and the images are scanned: a wrong --out fails in the first second.
        check_cache_folder(
            args.out, {"image_size": args.image_size, "crop": images.crop, "shard_size": args.shard_size}
        )
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
            strict=args.strict,
        )
    except (ConfigError, ValueError) as exc:
        print(f"dit-repro extract: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"rank {rank}/{world_size}: wrote {report.shards_written} shard(s) "
        f"({report.shards_already_done} already done), encoded {report.images_encoded} image(s), "
        f"{report.images_skipped} unreadable left out, {report.images_per_second:.2f} images/s"
    )
    if report.complete:
        print(f"cache complete: {args.out}/{MANIFEST_NAME}")
    else:
        print(
            f"cache not complete yet: other ranks' shards are missing (or --max-shards stopped early); {args.out}"
        )
    return 0

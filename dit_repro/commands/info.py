"""``dit-repro info``: parameter counts, token counts and multiply-adds of a preset."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..flops import forward_macs, train_flops_per_image
from ..models import PRESETS, build_model

VAE_DOWNSAMPLE = 8
LATENT_CHANNELS = 4


def model_info(name: str, image_size: int = 256, num_classes: int = 1000, pixel_space: bool = False,
               in_channels: int = 3) -> dict:
    """Facts of a preset at an image size: params, tokens, forward multiply-adds, training FLOPs.

    Latent models see ``image_size // 8`` cells of 4 channels (the SD VAE); ``pixel_space`` models see
    the image itself with ``in_channels``. The model is built on the meta device: nothing is allocated.
    """
    if not pixel_space and image_size % VAE_DOWNSAMPLE:
        raise ValueError(f"image size {image_size} is not a multiple of the VAE's downsampling {VAE_DOWNSAMPLE}")
    latent = image_size if pixel_space else image_size // VAE_DOWNSAMPLE
    channels = in_channels if pixel_space else LATENT_CHANNELS
    with torch.device("meta"):
        model = build_model(name, input_size=latent, in_channels=channels, num_classes=num_classes)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    macs = forward_macs(name, latent, channels)
    return {
        "model": name,
        "params": params,
        "trainable_params": trainable,
        "image_size": image_size,
        "latent_size": latent,
        "in_channels": channels,
        "tokens": (latent // PRESETS[name].patch_size) ** 2,
        "gmacs_forward": macs.total / 1e9,
        "gmacs_forward_attention": macs.attention / 1e9,
        "train_flops_per_image": train_flops_per_image(name, latent, channels),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info``."""
    parser = subparsers.add_parser(
        "info",
        help="parameters, tokens and multiply-adds of a model preset",
        description="Print a preset's parameter count, token count, analytic forward multiply-adds "
        "(gmacs_forward: the unit the DiT papers call 'Gflops') and model FLOPs per training image.",
    )
    parser.add_argument("--model", default="DiT-XL/2", help="preset name (see --list); default DiT-XL/2")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels; default 256")
    parser.add_argument("--num-classes", type=int, default=1000, help="class labels; default 1000 (ImageNet)")
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

"""``dit-repro sample``: images from a trained checkpoint, for FID, split over processes, resumable."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dit_repro.checkpoint import CheckpointError
from dit_repro.commands.arguments import add_sampling_process_arguments, at_least, non_negative_number
from dit_repro.config import ATTENTION_CHOICES, ConfigError, Precision
from dit_repro.diffusion import CFG_CHANNELS, DEFAULT_SAMPLING_STEPS, SAMPLERS
from dit_repro.models import PRESETS
from dit_repro.models.attention import AttentionBackendUnavailable
from dit_repro.sampling import (
    FORMATS,
    SEED_RULE,
    WEIGHTS,
    SamplingRequest,
    missing_indices,
    run_sampling,
    save_grid,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sample``."""
    parser = subparsers.add_parser(
        "sample",
        help="generate images from a checkpoint (PNGs or the ADM .npz) for FID",
        description=(
            "Generate N images from a training checkpoint into --out: one PNG per index, a samples.json "
            "(checkpoint SHA-256, training config, seed, sampler settings) and, with --format npz, "
            "samples_NxHxWx3.npz in the ADM evaluator's layout (arr_0, uint8 NHWC). "
            f"Per-image seeds: {SEED_RULE}; the label is the generator's first draw, uniform over the classes. "
            "So runs are reproducible image by image, can be split over processes (torchrun sets RANK/WORLD_SIZE, "
            "or pass --rank/--world-size; process r makes indices r, r+W, ...) and extended from N to M by "
            "re-running with a larger --num: existing images are kept. Latent models decode with the VAE of "
            "the checkpoint's config; pixel models map [-1, 1] to 0..255. DiT's sample_ddp.py spellings are "
            "accepted too (--num-fid-samples, --per-proc-batch-size, --num-sampling-steps, --global-seed, "
            "--cfg-scale); `dit-repro fid-protocol dit` (or uvit) runs DiT's (U-ViT's) whole FID-50K protocol."
        ),
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file: written by `dit-repro train`, by DiT's or fast-DiT's train.py ({model, ema, opt, "
        "args}), or DiT's released bare state dict (DiT-XL-2-256x256.pt; name its preset with --model)",
    )
    parser.add_argument(
        "--model",
        default=None,
        choices=sorted(PRESETS),
        metavar="PRESET",
        help="model preset of a bare state dict, e.g. DiT-XL/2 for DiT's release (its input size, channels "
        "and classes are read from the tensors); other checkpoints name their own",
    )
    parser.add_argument(
        "--num",
        "--num-samples",
        "--num-fid-samples",
        dest="num",
        type=at_least(1),
        required=True,
        help="number of images N (indices 0..N-1); under torchrun write --num-samples, since torchrun's "
        "parser takes --num for an abbreviation of its own --numa-binding",
    )
    parser.add_argument("--out", required=True, help="output folder (new, or one made by the same settings)")
    parser.add_argument("--seed", "--global-seed", dest="seed", type=at_least(0), default=0,
                        help="base seed: image i uses seed + i; default 0")
    parser.add_argument(
        "--sampler", default="ddpm", choices=SAMPLERS,
        help="ddpm (ancestral), ddim, or dpm-solver (DPM-Solver++ as U-ViT samples: order 3, time-uniform, "
        "deterministic after x_T); default ddpm"
    )
    parser.add_argument(
        "--steps",
        "--num-sampling-steps",
        dest="steps",
        type=at_least(1),
        default=DEFAULT_SAMPLING_STEPS,
        help="sampling steps: for ddpm/ddim respaced from the 1000 training steps, for dpm-solver model "
        f"evaluations (U-ViT uses 50); default {DEFAULT_SAMPLING_STEPS} (DiT's FID protocol)",
    )
    parser.add_argument(
        "--eta", type=non_negative_number, default=0.0, help="DDIM eta (0 = deterministic); ddim only; default 0"
    )
    parser.add_argument(
        "--cfg-scale",
        type=non_negative_number,
        default=1.5,
        help="classifier-free guidance scale, 1.0 = none; default 1.5 (DiT)",
    )
    parser.add_argument(
        "--cfg-channels",
        default="all",
        choices=CFG_CHANNELS,
        help="guide all noise channels (default) or the first 3 only, as DiT's reference code does",
    )
    parser.add_argument(
        "--grid", type=Path, default=None, metavar="PNG",
        help="also tile images 0..N-1 into this PNG (written by the process that completes the set)",
    )
    parser.add_argument(
        "--clip-denoised",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="clamp each predicted x0 to [-1, 1]; default: on for pixel models, off for latent models",
    )
    parser.add_argument(
        "--weights", default="ema", choices=WEIGHTS, help="EMA (default) or raw trained weights"
    )
    parser.add_argument(
        "--attention", default="auto", choices=ATTENTION_CHOICES, help="attention backend; default auto"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=[p.value for p in Precision],
        help="fp32, tf32, fp16 or bf16 (autocast) for the model; the VAE decodes in fp32; default fp32",
    )
    parser.add_argument("--batch-size", "--per-proc-batch-size", dest="batch_size", type=at_least(1), default=32,
                        help="images per forward in each process; default 32")
    parser.add_argument(
        "--format", default="png", choices=FORMATS, help="png, or npz (PNGs plus the ADM .npz)"
    )
    parser.add_argument("--vae", default=None, help="VAE to decode latents with; default the checkpoint's")
    add_sampling_process_arguments(parser)
    parser.set_defaults(func=run)


def launch_position(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) from the flags, else from torchrun's RANK/WORLD_SIZE, else (0, 1); flags must agree with them."""
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and env_rank is not None and rank != int(env_rank):
        raise ConfigError(f"--rank {rank} contradicts RANK={env_rank} set by the launcher; drop --rank")
    if world_size is not None and env_world is not None and world_size != int(env_world):
        raise ConfigError(f"--world-size {world_size} contradicts WORLD_SIZE={env_world} set by the launcher")
    resolved_rank = rank if rank is not None else int(env_rank or 0)
    resolved_world = world_size if world_size is not None else int(env_world or 1)
    return resolved_rank, resolved_world


def run(args: argparse.Namespace) -> int:
    """Generate this process's missing images; 2 on a usage or data error."""
    try:
        if args.eta and args.sampler != "ddim":
            raise ConfigError(f"--eta {args.eta} applies only to --sampler ddim (DDPM's noise is fixed by the schedule)")
        rank, world_size = launch_position(args.rank, args.world_size)
        report = run_sampling(
            SamplingRequest(
                checkpoint=args.checkpoint,
                out_dir=args.out,
                num=args.num,
                seed=args.seed,
                sampler=args.sampler,
                steps=args.steps,
                eta=args.eta,
                cfg_scale=args.cfg_scale,
                cfg_channels=args.cfg_channels,
                clip_denoised=args.clip_denoised,
                weights=args.weights,
                precision=Precision(args.precision),
                attention=args.attention,
                batch_size=args.batch_size,
                image_format=args.format,
                device=args.device,
                vae=args.vae,
                model=args.model,
                rank=rank,
                world_size=world_size,
                progress=not args.no_progress,
            )
        )
    except (ConfigError, CheckpointError, AttentionBackendUnavailable, ValueError, OSError) as exc:
        print(f"dit-repro sample: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"rank {rank}/{world_size}: generated {len(report.generated)} image(s), kept {report.kept} existing; "
        f"{args.out} (seed {args.seed}, {args.sampler} {args.steps} steps, cfg {args.cfg_scale})"
    )
    if args.grid is not None and not missing_indices(Path(args.out), range(args.num)):
        print(f"grid {save_grid(Path(args.out), args.num, args.grid)}")
    if report.npz:
        print(f"packed {report.npz}")
    elif args.format == "npz":
        print("npz not packed yet: other processes' images are still missing (the last to finish packs it)")
    return 0

"""``dit-repro train``: a training run with every optimization switch as a flag."""

from __future__ import annotations

import argparse
import sys

from ..checkpoint import CheckpointError
from ..config import (
    ATTENTION_CHOICES,
    Checkpointing,
    CompileMode,
    CompileScope,
    ConfigError,
    Distributed,
    Features,
    Precision,
    Protocol,
    Switches,
    TrainConfig,
)
from ..data.imagesource import UnreadableImageError
from ..distributed import accelerate_settings, launched_process, shutdown
from ..model_weights import DEFAULT_VAE
from ..models import PRESETS, is_latent_preset
from ..models.attention import AttentionBackendUnavailable
from .arguments import RefusedFlag, at_least, fraction_below_one, positive_number


def _values(kind) -> list[str]:
    return [member.value for member in kind]


def add_switch_arguments(parser: argparse.ArgumentParser) -> None:
    """The optimization switches as flags (shared with commands that build a training step)."""
    group = parser.add_argument_group(
        "optimization switches (applied in order: precision, attention, checkpointing, compile, DDP)")
    group.add_argument("--attention", default="auto", choices=ATTENTION_CHOICES,
                       help="attention backend; auto = check-then-select (default)")
    group.add_argument("--precision", default=None, choices=_values(Precision),
                       help="fp32 (TF32 off), tf32, fp16 (autocast + grad scaler) or bf16 (autocast); default fp32, or "
                            "what accelerate launch --mixed_precision fp16/bf16 says (a different --precision is refused)")
    group.add_argument("--checkpointing", default="none", choices=_values(Checkpointing),
                       help="activation checkpointing: none, full (every block) or every-k; default none")
    group.add_argument("--checkpointing-k", type=at_least(1), default=None,
                       help="k for --checkpointing every-k (blocks 0, k, 2k, ... recompute their activations); "
                            "default 2; only with every-k. Saving the run is --save-every")
    group.add_argument("--checkpoint-every", dest="refused_checkpoint_every", action=RefusedFlag,
                       new_spelling="--checkpointing-k K (activation checkpointing stride) or --save-every N "
                                    "(steps between saved checkpoints, DiT's --ckpt-every)",
                       help=argparse.SUPPRESS)
    group.add_argument("--compile", default="off", choices=_values(CompileMode), help="torch.compile mode; default off")
    group.add_argument("--compile-scope", default=None, choices=_values(CompileScope),
                       help="compile the whole model or each block; default model; only with --compile")
    group.add_argument("--features", default=None, choices=_values(Features),
                       help="pixels (no VAE), live (VAE every step) or cached (latent cache). Default: cached with "
                            "--cache; live with --vae; live with the SD ft-EMA VAE for a latent preset (every DiT, "
                            f"U-ViT /2) on images of {LATENT_DEFAULT_MIN_SIZE} px or more, as DiT trains; else pixels. "
                            "Pixel space for a large image must be asked for")
    group.add_argument("--distributed", default="none", choices=_values(Distributed),
                       help="ddp when launched by torchrun / accelerate launch; default none")
    group.add_argument("--protocol", default="dit", choices=_values(Protocol),
                       help="training recipe: dit (AdamW 1e-4) or uvit (AdamW 2e-4, wd 0.03, betas .99/.99, warm-up 5000)")


def switches_from_args(args: argparse.Namespace) -> Switches:
    """Switches from the parsed flags of :func:`add_switch_arguments`; a flag the chosen mode ignores is an error."""
    if args.checkpointing_k is not None and args.checkpointing != Checkpointing.EVERY_K.value:
        raise ConfigError(f"--checkpointing-k {args.checkpointing_k} applies only to --checkpointing every-k, not "
                          f"{args.checkpointing} (the interval between saved checkpoints is --save-every)")
    if args.compile_scope is not None and args.compile == CompileMode.OFF.value:
        raise ConfigError(f"--compile-scope {args.compile_scope} applies only with --compile (default, "
                          "reduce-overhead or max-autotune)")
    defaults = Switches()
    return Switches(
        attention=args.attention,
        precision=args.precision,
        checkpointing=args.checkpointing,
        checkpointing_k=defaults.checkpointing_k if args.checkpointing_k is None else args.checkpointing_k,
        compile=args.compile,
        compile_scope=defaults.compile_scope if args.compile_scope is None else args.compile_scope,
        features=args.features,
        distributed=args.distributed,
        protocol=args.protocol,
    )


LATENT_DEFAULT_MIN_SIZE = 64
"""Image side from which a latent preset defaults to latent features: at 64 px a /2 model already sees
1024 pixel tokens where DiT's 256 px latents give it 256."""


def default_features(args: argparse.Namespace) -> tuple[str, str | None]:
    """(features, vae) for ``--features`` not given: the rule in ``--help``, so that an ImageNet-style
    command (``--model DiT-XL/2 --image-size 256``) trains on latents as DiT does, not on 65,536 pixels."""
    if args.features is not None:
        return args.features, args.vae
    if args.cache_dir:
        return Features.CACHED.value, args.vae
    if args.vae:
        return Features.LIVE.value, args.vae
    if args.image_size >= LATENT_DEFAULT_MIN_SIZE and is_latent_preset(args.model):
        return Features.LIVE.value, DEFAULT_VAE
    return Features.PIXELS.value, args.vae


def check_ignored_data_flags(args: argparse.Namespace) -> None:
    """Refuse --cache, --vae and --strict-fp32-encode where --features ignores them."""
    if args.features == Features.PIXELS.value and (args.cache_dir or args.vae):
        given = " and ".join(flag for flag, value in (("--cache", args.cache_dir), ("--vae", args.vae)) if value)
        raise ConfigError(f"{given} given with --features pixels, which trains on the images themselves; add "
                          "--features cached (with --cache) or --features live (with --vae)")
    if args.features == Features.LIVE.value and args.cache_dir:
        raise ConfigError("--cache given with --features live, which encodes every step; use --features cached")
    if args.strict_fp32_encode and args.features != Features.LIVE.value:
        raise ConfigError(f"--strict-fp32-encode applies only to --features live (nothing is encoded with {args.features})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a DiT/U-ViT with the chosen switches",
        description="Train a model. The run directory (--out) receives config.json, env.json, metrics.jsonl "
        "(step, loss, lr, step time, grad-scaler skips) and checkpoints/. For several processes launch with "
        "`torchrun --standalone --nproc_per_node=N -m dit_repro.cli train --distributed ddp ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="DiT-S/2", choices=sorted(PRESETS), metavar="PRESET",
                        help="model preset, e.g. DiT-XL/2 or U-ViT-H/2 (dit-repro info --list)")
    parser.add_argument("--data", default="digits", help="digits, synthetic, or an ImageFolder directory")
    parser.add_argument("--image-size", type=at_least(1), default=16, help="image side in pixels")
    parser.add_argument("--num-classes", type=at_least(1), default=None, help="class count (default: the dataset's)")
    parser.add_argument("--cache", dest="cache_dir", default=None, help="latent cache from `dit-repro extract`")
    parser.add_argument("--vae", default=None, help="VAE weights folder/file, or tiny-random (tests only)")
    parser.add_argument("--batch-size", dest="global_batch_size", type=at_least(1), default=32, help="global batch size")
    parser.add_argument("--steps", type=at_least(0), default=200, help="total optimizer steps")
    parser.add_argument("--lr", type=positive_number, default=None, help="learning rate (default: the protocol's)")
    parser.add_argument("--warmup-steps", type=at_least(0), default=None, help="warm-up steps (default: the protocol's)")
    parser.add_argument("--ema-decay", type=fraction_below_one, default=0.9999, help="EMA decay")
    parser.add_argument("--seed", type=int, default=0, help="global seed (each process adds its rank)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num-workers", type=at_least(0), default=0, help="DataLoader workers")
    parser.add_argument("--out", dest="out_dir", default=None, help="run directory")
    parser.add_argument("--log-every", type=at_least(1), default=10, help="steps between metrics.jsonl lines")
    parser.add_argument("--save-every", type=at_least(0), default=0,
                        help="steps between saved checkpoints (0: only the last), DiT's --ckpt-every")
    parser.add_argument("--checkpoint-every-steps", dest="refused_checkpoint_every_steps", action=RefusedFlag,
                        new_spelling="--save-every N", help=argparse.SUPPRESS)
    parser.add_argument("--resume", default=None,
                        help="checkpoint to resume from (only steps, logging, checkpointing, --out, workers, --strict and "
                             "device may differ from its settings)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="start from these weights (a dit-repro, DiT or fast-DiT checkpoint, or DiT's released "
                             "state dict; EMA weights where present) with a fresh optimizer; not with --resume")
    parser.add_argument("--strict-fp32-encode", action="store_true",
                        help="--features live: encode with TF32 forbidden (default: the encode follows --precision's "
                             "TF32 flags, as DiT's train.py; the latent cache is always extracted in strict fp32)")
    parser.add_argument("--strict", dest="strict_images", action="store_true",
                        help="refuse to train when the image folder holds unreadable images (or the --cache was "
                             "extracted without some); default: leave them out with a warning and list them in env.json")
    add_switch_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the config, train, and report; configuration errors exit 2 before any step runs."""
    from ..train import NonFiniteLossError, Trainer  # heavy imports only when training

    try:
        args.precision, args.device = accelerate_settings(args.precision, args.device)
        asked = args.features
        args.features, args.vae = default_features(args)
        if asked is None and args.features != Features.PIXELS.value and launched_process().rank == 0:
            print(f"dit-repro train: --features {args.features} (the default for {args.model} at {args.image_size} px"
                  f"{' with --cache' if args.cache_dir else ''}; --features pixels trains on the pixels)", file=sys.stderr)
        check_ignored_data_flags(args)
        cfg = TrainConfig(
            model=args.model, data=args.data, image_size=args.image_size, num_classes=args.num_classes,
            cache_dir=args.cache_dir, vae=args.vae, global_batch_size=args.global_batch_size, steps=args.steps,
            lr=args.lr, warmup_steps=args.warmup_steps, ema_decay=args.ema_decay, seed=args.seed,
            device=args.device, num_workers=args.num_workers, out_dir=args.out_dir, log_every=args.log_every,
            save_every=args.save_every, resume=args.resume, init_from=args.init_from, overwrite=args.overwrite,
            strict_fp32_encode=args.strict_fp32_encode, strict_images=args.strict_images,
            switches=switches_from_args(args),
        )
        trainer = Trainer(cfg)
    except (ConfigError, ValueError, AttentionBackendUnavailable, CheckpointError, FileNotFoundError) as exc:
        print(f"dit-repro train: {exc}", file=sys.stderr)
        return 2
    try:
        history = trainer.fit()
    except NonFiniteLossError as exc:
        print(f"dit-repro train: {exc}", file=sys.stderr)
        return 1
    except UnreadableImageError as exc:  # a file that the scan read changed during the run
        print(f"dit-repro train: {exc} (the scan before training read it: it changed since)", file=sys.stderr)
        return 1
    finally:
        shutdown()
    if history and trainer.process.rank == 0:
        first, last = history[0], history[-1]
        print(f"trained {cfg.model} to step {trainer.step}: loss {first.loss:.4f} -> {last.loss:.4f}"
              + (f"; run directory {cfg.out_dir}" if cfg.out_dir else ""))
    return 0

"""Model weights from the checkpoint files users have: this project's, DiT's and fast-DiT's, and DiT's release.

Three layouts are recognised from the keys of the file:

``dit-repro``
    Written by ``dit-repro train``: ``model``, ``ema``, ``step``, ``config``, ``model_args`` (and the
    optimizer state). The configuration says everything.
``dit-training``
    Written by DiT's and fast-DiT's ``train.py``: ``{"model", "ema", "opt", "args"}``, where ``args``
    is the ``argparse.Namespace`` of the run (``model``, ``image_size``, ``num_classes``, ``vae``).
``bare-state-dict``
    DiT's released ``DiT-XL-2-256x256.pt`` / ``DiT-XL-2-512x512.pt``, or U-ViT's released
    ``nnet_ema.pth`` (e.g. ``imagenet256_uvit_huge.pth``): a plain ``{name: tensor}`` of EMA weights.
    The preset must be named (``--model``); the input size, channels, classes and learned variance
    are read from the tensors' shapes (``pos_embed`` gives the token grid). DiT's names
    (``x_embedder``) and U-ViT's (``patch_embed``) tell the two apart. A U-ViT file is read as one of
    U-ViT's discrete-time releases: trained on Stable Diffusion's scaled-linear schedule with timesteps
    numbered 1..N, so it is rebuilt with ``timestep_offset=1`` and samples on that schedule; its VAE
    must be named (U-ViT's own file). U-ViT's continuous-time releases (with the final convolution)
    are refused.

Every file is read with ``torch.load(weights_only=True)``: tensors and plain containers only.
The one object admitted beyond them is ``argparse.Namespace``, which DiT's checkpoints carry and
which holds plain values; anything else is refused, naming the object.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dit_repro.checkpoint import CheckpointError, check_checkpoint_keys, weights_only_refusal
from dit_repro.config import ConfigError, Features, Switches, TrainConfig
from dit_repro.data.vae import LATENT_CHANNELS, PRETRAINED_REPOS, VAE_DOWNSAMPLE
from dit_repro.hashing import sha256_file
from dit_repro.models import PRESETS, parse_preset

LAYOUTS = ("dit-repro", "dit-training", "bare-state-dict")
"""Checkpoint layouts :func:`read_model_weights` recognises (see the module docstring)."""
DIT_VAE_SPECS = {"ema": PRETRAINED_REPOS[0], "mse": PRETRAINED_REPOS[1]}
"""DiT's ``--vae`` choices and the VAE each names (the local Hugging Face cache entry)."""
DEFAULT_VAE = PRETRAINED_REPOS[0]
"""VAE of files that do not name one: sd-vae-ft-ema, the VAE of DiT's FID-50K figures."""
UVIT_EXTRA_TOKENS = 2
"""Tokens before the patches in U-ViT's sequence: the class token and the time token."""
UVIT_RELEASE_VAE = "autoencoder_kl_ema.pth"
"""The VAE file U-ViT's ImageNet configs decode with (in U-ViT's assets/stable-diffusion/)."""
UVIT_RELEASE_TIMESTEP_OFFSET = 1
"""U-ViT's release numbers its training steps 1..N; this project's models see 0..N-1."""


@dataclass(frozen=True)
class ModelWeights:
    """One set of model weights read from a checkpoint file, with what is needed to rebuild the model."""

    state_dict: dict[str, torch.Tensor]
    """The chosen weights, with this project's (= DiT's) parameter names."""
    config: TrainConfig
    """The training configuration: the file's own, or one reconstructed from its tensors and args."""
    model_args: dict[str, Any]
    """``build_model`` arguments: input_size, in_channels, num_classes, learn_sigma."""
    layout: str
    """Which of :data:`LAYOUTS` the file has."""
    weights: str
    """``ema`` or ``raw``: which of the file's weights were taken (a bare state dict holds one set,
    EMA in DiT's release)."""
    step: int | None
    """Training step of the weights, where the file records it."""
    noise_schedule: str = "linear"
    """The training noise schedule the sampler must integrate: DiT's ``linear`` (this project's and
    DiT's files), ``scaled-linear`` for U-ViT's release."""


def read_model_weights(
    path: str | os.PathLike[str],
    *,
    weights: str = "ema",
    model: str | None = None,
    vae: str | None = None,
    for_training: bool = False,
) -> ModelWeights:
    """Read ``path`` in any of :data:`LAYOUTS` and take its ``weights`` (EMA by default, where present).

    ``model`` names the preset of a bare state dict (required there; checked against the file's args
    otherwise). ``vae`` is the VAE the reconstructed configuration of a foreign latent model decodes
    with; by default DiT's args' choice, else :data:`DEFAULT_VAE`. ``for_training``: the weights are
    to be trained on (``--init-from``), so a file of another training process (U-ViT's release) is
    refused.
    """
    path = Path(path)
    state = _load(path)
    layout = checkpoint_layout(state, path)
    if layout == "dit-repro":
        check_checkpoint_keys(state, path)
        config = TrainConfig.from_dict(state["config"])
        if model is not None and model != config.model:
            raise ConfigError(f"checkpoint {path} holds a {config.model}, but --model is {model}; pass --model {config.model}")
        if "model_args" not in state:
            raise CheckpointError(
                f"checkpoint {path} has no model_args (input size, channels, classes); it was not written by this version"
            )
        return ModelWeights(
            state_dict=state["ema" if weights == "ema" else "model"],
            config=config,
            model_args=dict(state["model_args"]),
            layout=layout,
            weights=weights,
            step=int(state["step"]),
        )
    if layout == "dit-training":
        args = vars(state["args"]) if isinstance(state["args"], argparse.Namespace) else dict(state["args"])
        named = args.get("model")
        if model is not None and named is not None and model != named:
            raise ConfigError(f"checkpoint {path} holds a {named} (its args.model), but --model is {model}; pass --model {named}")
        model = model or named
        chosen = state["ema" if weights == "ema" else "model"]
        read = _foreign(chosen, path, layout, weights, model, vae, step=_step_from_name(path),
                        dit_vae=DIT_VAE_SPECS.get(str(args.get("vae")), DEFAULT_VAE), for_training=for_training)
        for name, from_tensors in (("image_size", read.config.image_size), ("num_classes", read.config.num_classes)):
            if args.get(name) is not None and int(args[name]) != from_tensors:
                raise CheckpointError(
                    f"checkpoint {path}: args.{name} = {args[name]}, but its tensors give {from_tensors}; the file is inconsistent"
                )
        return read
    if weights != "ema":
        raise ConfigError(
            f"checkpoint {path} is a bare state dict: it holds one set of weights (EMA in DiT's release), "
            "so --weights raw cannot be honoured; drop --weights"
        )
    return _foreign(state, path, layout, weights, model, vae, step=None, for_training=for_training)


def checkpoint_layout(state: Any, path: Path) -> str:
    """Which of :data:`LAYOUTS` ``state`` (a loaded file) has, or an error saying what was found."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of weights")
    if {"model", "ema", "config", "step"} <= state.keys():
        return "dit-repro"
    if {"model", "ema", "args"} <= state.keys():
        return "dit-training"
    if all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        return "bare-state-dict"
    raise CheckpointError(
        f"checkpoint {path} has keys {sorted(map(str, state))[:8]}, which match no known layout: "
        "this project's (model, ema, step, config), DiT/fast-DiT training (model, ema, opt, args), "
        "or a bare state dict of tensors (DiT's release)"
    )


def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # DiT's training checkpoints pickle their argparse.Namespace; it holds plain values only.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(weights_only_refusal(path, exc)) from None


def _foreign(
    tensors: dict[str, torch.Tensor],
    path: Path,
    layout: str,
    weights: str,
    model: str | None,
    vae_given: str | None,
    step: int | None,
    dit_vae: str = DEFAULT_VAE,
    for_training: bool = False,
) -> ModelWeights:
    """Weights of a file without this project's configuration: DiT's or U-ViT's, rebuilt from the tensors.

    ``vae_given`` is the VAE the user named; a DiT file falls back to ``dit_vae`` (its args' choice
    or :data:`DEFAULT_VAE`), a U-ViT release to none (its VAE must be named).
    """
    if model is None:
        raise ConfigError(
            f"checkpoint {path} ({layout}) does not name its model: pass --model, e.g. --model DiT-XL/2 "
            f"for DiT's release (presets: {', '.join(PRESETS)})"
        )
    preset = parse_preset(model)
    family = family_of_tensors(tensors, path)
    if family != preset.family:
        example = {"dit": "DiT-XL/2", "uvit": "U-ViT-H/2"}[family]
        raise ConfigError(
            f"checkpoint {path} holds a {FAMILY_NAMES[family]} ({FAMILY_KEYS[family]} tensors), but --model is "
            f"{preset.name}; pass a {FAMILY_NAMES[family]} preset, e.g. --model {example}"
        )
    if layout != "bare-state-dict" and family == "uvit":
        raise CheckpointError(f"checkpoint {path} ({layout}) holds U-ViT weights; DiT's training layout holds DiT's")
    if family == "uvit" and for_training:
        raise ConfigError(
            f"--init-from {path} is U-ViT's release, trained on the scaled-linear noise schedule with timesteps "
            "1..N; dit-repro trains on DiT's linear schedule, so training from it would train another process"
        )
    if family == "uvit":
        model_args = uvit_model_args_from_tensors(tensors, preset.patch_size, path)
        # No default VAE: U-ViT's release decodes with its own file.
        if vae_given is None and model_args["in_channels"] == LATENT_CHANNELS:
            raise ConfigError(
                f"checkpoint {path} is U-ViT's release, a latent model: name the VAE it decodes with, --vae "
                f"{UVIT_RELEASE_VAE} (U-ViT's assets/stable-diffusion folder)"
            )
        vae = vae_given
    else:
        model_args = model_args_from_tensors(tensors, preset.patch_size, path)
        vae = vae_given or dit_vae
    check_preset_size(tensors, preset, path)
    latent = model_args["in_channels"] == LATENT_CHANNELS
    input_size = model_args["input_size"]
    config = TrainConfig(
        model=model,
        data="released-checkpoint",
        image_size=input_size * VAE_DOWNSAMPLE if latent else input_size,
        num_classes=model_args["num_classes"],
        vae=vae if latent else None,
        switches=Switches(features=Features.LIVE if latent else Features.PIXELS),
    )
    return ModelWeights(
        state_dict=tensors, config=config, model_args=model_args, layout=layout, weights=weights, step=step,
        noise_schedule="scaled-linear" if family == "uvit" else "linear",
    )


FAMILY_KEYS = {"dit": "x_embedder.proj.weight", "uvit": "patch_embed.proj.weight"}
"""A tensor name that only the family's files have: DiT's patch embedding, U-ViT's."""
FAMILY_NAMES = {"dit": "DiT", "uvit": "U-ViT"}
"""How errors name the families."""


def family_of_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """``dit`` or ``uvit`` from the tensors' names, or an error naming what was expected."""
    for family, key in FAMILY_KEYS.items():
        if key in tensors:
            return family
    raise CheckpointError(
        f"checkpoint {path} has neither DiT's {FAMILY_KEYS['dit']} nor U-ViT's {FAMILY_KEYS['uvit']}: "
        f"it is not a DiT or U-ViT state dict (first keys: {sorted(tensors)[:5]})"
    )


def check_preset_size(tensors: dict[str, torch.Tensor], preset: Any, path: Path) -> None:
    """Refuse tensors of another width or depth than ``preset`` (a DiT-XL/2 file read as DiT-L/2), naming both,
    before ``load_state_dict`` would fail on the first mismatched shape."""
    width = int(tensors[FAMILY_KEYS[preset.family]].shape[0])
    if preset.family == "dit":
        depth = len({key.split(".")[1] for key in tensors if key.startswith("blocks.")})
    else:  # U-ViT's depth counts in- and out-blocks; the mid-block comes on top
        depth = 2 * len({key.split(".")[1] for key in tensors if key.startswith("in_blocks.")})
    if (width, depth) != (preset.hidden_size, preset.depth):
        fitting = [name for name, p in PRESETS.items()
                   if (p.family, p.hidden_size, p.depth, p.patch_size) == (preset.family, width, depth, preset.patch_size)]
        raise ConfigError(
            f"checkpoint {path} holds a model of width {width} and depth {depth}, but --model {preset.name} has "
            f"{preset.hidden_size} and {preset.depth}; pass --model {fitting[0] if fitting else 'the preset it was trained as'}"
        )


def model_args_from_tensors(tensors: dict[str, torch.Tensor], patch_size: int, path: Path) -> dict[str, Any]:
    """``build_model`` arguments read off DiT-named tensors.

    ``pos_embed`` (1, T, D) gives the token grid sqrt(T), times the patch for the input size;
    ``x_embedder.proj.weight`` (D, C, p, p) the channels; the label table has one row per class
    plus DiT's null class for guidance; the final layer's width is p*p*C, doubled when the model
    learns its variance.
    """
    needed = ("pos_embed", "x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight")
    missing = [name for name in needed if name not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the DiT tensors {missing}; is it a DiT state dict?")
    return _common_model_args(tensors, path, patch_size, extra_tokens=0, patch_key="x_embedder.proj.weight",
                              head_key="final_layer.linear.weight", label_key="y_embedder.embedding_table.weight")


def uvit_model_args_from_tensors(tensors: dict[str, torch.Tensor], patch_size: int, path: Path) -> dict[str, Any]:
    """``build_model`` arguments read off a file of U-ViT's release (U-ViT's own tensor names).

    Only the discrete-time releases (``train_ldm_discrete.py``: ImageNet 256 H/2, ImageNet 512 H/4,
    both ``conv=False``) are accepted; a file with ``final_layer`` (``conv=True``) is one of the
    continuous-time ones and is refused. ``pos_embed`` (1, 2 + T, D) holds the class and time tokens
    before the T patches; the label table has a row per class plus the null class; ``decoder_pred``
    is p*p*C wide (doubled for a learned variance); ``time_embed.0`` exists when
    ``mlp_time_embed=True``. Timesteps are offset by 1 (U-ViT numbers them 1..N).
    """
    if "final_layer.weight" in tensors:
        raise CheckpointError(
            f"checkpoint {path} is a U-ViT with the final 3x3 convolution (conv=True): in U-ViT's release those are "
            "the continuous-time models (train_ldm.py, train.py: a VP-SDE with beta 0.1..20, sampled by eval_ldm.py), "
            "whose process dit-repro does not sample. The discrete-time releases (imagenet256_uvit_huge.pth, "
            "imagenet512_uvit_huge.pth; conv=False) are read. (For a U-ViT trained here, pass the checkpoint "
            "`dit-repro train` wrote, not a bare state dict: bare U-ViT weights are read as U-ViT's release)"
        )
    needed = ("pos_embed", "patch_embed.proj.weight", "label_emb.weight", "decoder_pred.weight")
    missing = [name for name in needed if name not in tensors]
    if missing:
        hint = " (U-ViT's unconditional models have no label_emb; dit-repro's U-ViT is class-conditional)" if (
            "label_emb.weight" in missing) else ""
        raise CheckpointError(f"checkpoint {path} lacks the U-ViT tensors {missing}{hint}")
    common = _common_model_args(tensors, path, patch_size, extra_tokens=UVIT_EXTRA_TOKENS,
                                patch_key="patch_embed.proj.weight", head_key="decoder_pred.weight",
                                label_key="label_emb.weight")
    return common | {
        "conv": False,
        "mlp_time_embed": "time_embed.0.weight" in tensors,
        "timestep_offset": UVIT_RELEASE_TIMESTEP_OFFSET,
    }


def _common_model_args(
    tensors: dict[str, torch.Tensor], path: Path, patch_size: int, *, extra_tokens: int, patch_key: str,
    head_key: str, label_key: str,
) -> dict[str, Any]:
    """Input size, channels, classes and learned variance from the tensors both families have under their names.

    ``pos_embed`` (1, extra + T, D): T patch tokens on a square grid; the patch embedding (D, C, p, p):
    the channels and the patch; the output head p*p*C wide, doubled for a learned variance; the
    label table one row per class plus the null class.
    """
    tokens = tensors["pos_embed"].shape[1] - extra_tokens
    grid = math.isqrt(max(tokens, 0))
    if tokens < 1 or grid * grid != tokens:
        after = f" after the {extra_tokens} class and time tokens" if extra_tokens else ""
        raise CheckpointError(f"checkpoint {path}: pos_embed has {tokens} patch tokens{after}, not a square grid")
    proj = tensors[patch_key]
    if proj.shape[-1] != patch_size:
        raise ConfigError(
            f"checkpoint {path} has {proj.shape[-1]}x{proj.shape[-1]} patches, but the chosen preset uses "
            f"{patch_size}x{patch_size}; pass the preset with /{proj.shape[-1]}"
        )
    in_channels = int(proj.shape[1])
    out = int(tensors[head_key].shape[0])
    per_patch = patch_size * patch_size * in_channels
    if out not in (per_patch, 2 * per_patch):
        raise CheckpointError(f"checkpoint {path}: {head_key} width {out} fits neither {per_patch} nor {2 * per_patch}")
    return {
        "input_size": grid * patch_size,
        "in_channels": in_channels,
        "num_classes": int(tensors[label_key].shape[0]) - 1,
        "learn_sigma": out == 2 * per_patch,
    }


def _step_from_name(path: Path) -> int | None:
    # DiT names its checkpoints by step: 0050000.pt.
    return int(path.stem) if path.stem.isdigit() else None


def load_initial_weights(
    model: torch.nn.Module, path: str | os.PathLike[str], model_name: str, model_args: dict[str, Any]
) -> dict[str, Any]:
    """Load ``path``'s weights (EMA where present) into a freshly built ``model`` for ``train --init-from``.

    The file must hold the same preset with the same input size, channels, classes and variance
    head as the run builds; a difference is refused naming both, since a partial load would train
    a model that is neither. Returns what the run record keeps: path, SHA-256, layout, weights.
    """
    read = read_model_weights(path, model=model_name, for_training=True)
    if read.config.model != model_name or read.model_args != model_args:
        raise ConfigError(
            f"--init-from {path} holds a {read.config.model} with {read.model_args}, but this run builds a "
            f"{model_name} with {model_args}; match --model, --image-size and the data's channels and classes"
        )
    model.load_state_dict(read.state_dict)
    return {"path": str(path), "sha256": sha256_file(Path(path)), "layout": read.layout, "weights": read.weights}

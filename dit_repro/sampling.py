"""Sampling a trained checkpoint to images for FID: per-image seeds, rank sharding, resumable output.

Per-image determinism. Image ``i`` of a run with seed ``s`` draws everything from one CPU
``torch.Generator`` seeded with ``s + i``: first its class label (uniform,
``torch.randint(num_classes)``), then x_T, then every step's noise (:func:`dit_repro.diffusion.sample`
with one generator per image). Image ``i`` therefore does not depend on the batch it is in, on
the process that made it, or on how many images are made, so a run can be split over processes
and extended from N to M images. (GPU kernels may still vary in the last bits with batch size.)

Sharding. Process ``r`` of ``W`` makes indices ``r, r + W, r + 2W, ... < N`` and skips those whose
PNG already exists, so processes never share an index and need no coordination. Every file is
written atomically; an interrupted run is completed by running the same command again.

Layout (see :mod:`dit_repro.fid.layout`): one PNG per index, ``samples.json`` with the checkpoint
hash, configuration, seed and sampler settings, and with ``--format npz`` an ``.npz`` in the ADM
evaluator's layout (``arr_0``: uint8 NHWC RGB), packed by whichever process finds all N images
present once it has finished its share.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.io import ImageReadMode, read_image
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from dit_repro.atomic import atomic_write, write_bytes_atomic, write_json_atomic
from dit_repro.config import ConfigError, Features, Precision, TrainConfig
from dit_repro.data.manifest import read_manifest
from dit_repro.data.vae import VAEHandle, load_vae
from dit_repro.diffusion import GaussianDiffusion, create_diffusion, sample
from dit_repro.distributed import launched_process
from dit_repro.fid.layout import MAX_SAMPLES, SAMPLES_RECORD, image_name, npz_name
from dit_repro.hashing import sha256_file
from dit_repro.model_weights import read_model_weights
from dit_repro.models import build_model
from dit_repro.precision import autocast_dtype, matmul_precision, strict_fp32
from dit_repro.switches import apply_attention, autocast_context, resolve_device

RECORD_FORMAT = "dit-repro-samples"
"""Value of ``format`` in ``samples.json``."""
RECORD_VERSION = 1
"""Layout version of ``samples.json``."""
SEED_RULE = (
    "image i draws its label, x_T and every step's noise from torch.Generator('cpu').manual_seed(seed + i)"
)
"""How per-image randomness is derived (recorded in ``samples.json``)."""
LABEL_RULE = (
    "label of image i = torch.randint(num_classes, (1,), generator=its generator), drawn before its noise"
)
"""How each image's class is chosen (recorded in ``samples.json``)."""
WEIGHTS = ("ema", "raw")
"""Which weights of a checkpoint sample: the EMA (as papers report) or the raw trained ones."""
FORMATS = ("png", "npz")
"""Output formats: PNGs only, or PNGs plus the packed ADM ``.npz``."""


class SamplesMismatchError(ConfigError):
    """An output folder holds samples made with other settings; extending it would mix two sets."""


# ----------------------------------------------------------------------------------------------
# Per-image randomness and sharding
# ----------------------------------------------------------------------------------------------


def image_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of image ``index``: seeded with ``seed + index``."""
    return torch.Generator(device="cpu").manual_seed(seed + index)


def image_label(generator: torch.Generator, num_classes: int) -> int:
    """The class of an image: uniform over ``num_classes``, the first draw of its generator."""
    return int(torch.randint(num_classes, (1,), generator=generator).item())


def rank_indices(num: int, rank: int, world_size: int) -> range:
    """The sample indices process ``rank`` of ``world_size`` makes: ``rank, rank + W, ... < num``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"--rank must be in [0, --world-size) and --world-size >= 1; got --rank {rank}, --world-size {world_size}")
    if not 0 < num <= MAX_SAMPLES:
        raise ConfigError(f"the number of samples must be in [1, {MAX_SAMPLES}], got {num}")
    return range(rank, num, world_size)


def missing_indices(out_dir: Path, indices: Sequence[int]) -> list[int]:
    """The indices among ``indices`` whose PNG is not in ``out_dir`` yet."""
    return [index for index in indices if not (out_dir / image_name(index)).is_file()]


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (B, C, H, W) -> uint8 (B, H, W, C), rounding as DiT's sampler does."""
    # 127.5 * (x + 1) rounded half up: the +0.5 is folded into 128, the cast to uint8 truncates.
    pixels = torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def generate(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    *,
    seed: int,
    sample_shape: Sequence[int],
    sampler: str = "ddpm",
    steps: int = 250,
    eta: float = 0.0,
    cfg_scale: float = 1.0,
    cfg_channels: str = "all",
    clip_denoised: bool = False,
    batch_size: int = 32,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield ``(indices, uint8 NHWC images)`` batch by batch for the given sample indices.

    ``model`` (eval mode, with ``num_classes``) predicts on ``sample_shape`` (C, H, W) inputs;
    ``decode`` maps its samples to images in [-1, 1] (the VAE for latent models; None for pixel
    models). ``clip_denoised`` clamps each predicted x0 to [-1, 1] (for pixel models, as ADM does).
    ``autocast_dtype`` runs the model's forwards under autocast (fp16/bf16). Every image
    follows :data:`SEED_RULE` and :data:`LABEL_RULE`, whatever ``batch_size`` is.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    indices = list(indices)
    batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    for chunk in tqdm(batches, disable=not progress, unit="batch", desc="sampling"):
        generators = [image_generator(seed, index) for index in chunk]
        labels = torch.tensor([image_label(g, model.num_classes) for g in generators], dtype=torch.long)
        with autocast_context(device.type, autocast_dtype):
            samples, _ = sample(
                diffusion,
                model,
                (len(chunk), *sample_shape),
                labels,
                sampler=sampler,
                steps=steps,
                eta=eta,
                cfg_scale=cfg_scale,
                cfg_channels=cfg_channels,
                clip_denoised=clip_denoised,
                generator=generators,
            )
        images = decode(samples) if decode is not None else samples
        yield chunk, to_uint8(images)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def write_image(out_dir: Path, index: int, image: np.ndarray) -> Path:
    """Write one uint8 (H, W, C) image as ``out_dir/<index>.png`` atomically (grey for C == 1)."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return write_bytes_atomic(out_dir / image_name(index), buffer.getvalue())


def save_grid(out_dir: Path, num: int, path: Path, columns: int = 10, upscale: int = 4) -> Path:
    """Tile images 0..num-1 of ``out_dir`` into one PNG (nearest-neighbour upscaled for small images)."""
    missing = [i for i in range(num) if not (out_dir / image_name(i)).is_file()]
    if missing:
        raise ConfigError(f"cannot tile a grid: {len(missing)} image(s) missing in {out_dir}, first {missing[0]}")
    images = torch.stack([read_image(str(out_dir / image_name(i)), ImageReadMode.RGB) for i in range(num)])
    grid = make_grid(images, nrow=columns, padding=1)
    grid = grid.repeat_interleave(upscale, dim=1).repeat_interleave(upscale, dim=2)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())


def pack_npz(out_dir: Path, num: int) -> Path | None:
    """Pack images 0..num-1 into the ADM ``.npz`` (uint8 NHWC RGB) atomically; None if any is missing."""
    files = [out_dir / image_name(index) for index in range(num)]
    if not all(file.is_file() for file in files):
        return None
    images = np.stack([np.asarray(Image.open(file).convert("RGB")) for file in files])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz" to a bare name
            np.savez(handle, arr_0=images)

    # Streamed to the file: a 50K set at 256 px is 9.8 GB, and a buffer would hold it twice.
    return atomic_write(out_dir / npz_name(num, *images.shape[1:]), write)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


@dataclass
class SamplingModel:
    """A checkpoint made ready to sample: model, diffusion, decoder and what identifies them."""

    model: nn.Module
    """The network with the chosen weights, in eval mode, on the sampling device."""
    diffusion: GaussianDiffusion
    """The training diffusion (respaced by the sampler)."""
    noise_schedule: str
    """Its noise schedule: DiT's ``linear``, or ``scaled-linear`` for U-ViT's release."""
    config: TrainConfig
    """The configuration the checkpoint was trained with."""
    sample_shape: tuple[int, int, int]
    """(C, H, W) of what the model denoises: pixels, or latents."""
    decode: Callable[[torch.Tensor], torch.Tensor] | None
    """Latents -> images in [-1, 1] (the VAE), or None for a pixel model."""
    decoder: dict[str, Any]
    """What decodes: ``{"kind": "pixels"}`` or the VAE's spec, weight hash and scale factor."""
    checkpoint: dict[str, Any]
    """Path, SHA-256 and training step of the checkpoint."""
    weights: str
    """``ema`` or ``raw``."""
    attention: dict[str, Any]
    """The attention backend selection (requested, chosen, refused with reasons)."""


def load_sampling_model(
    path: str | os.PathLike[str],
    *,
    weights: str = "ema",
    attention: str = "auto",
    precision: Precision = Precision.FP32,
    device: torch.device | str = "cpu",
    vae: str | None = None,
    model_name: str | None = None,
) -> SamplingModel:
    """Rebuild the checkpoint's model with the chosen weights (any layout of :mod:`dit_repro.model_weights`).

    Latent models decode with the VAE of the checkpoint's configuration, of its latent cache's
    manifest, or ``vae`` when given. ``model_name`` names the preset of a bare state dict (DiT's
    release). No activation checkpointing is applied: it only costs time when nothing is trained.
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    device = torch.device(device)
    read = read_model_weights(path, weights=weights, model=model_name, vae=vae)
    config = read.config
    model = build_model(config.model, **read.model_args)
    model.load_state_dict(read.state_dict)
    model.eval().requires_grad_(False).to(device)
    selection = apply_attention(model, attention, device, autocast_dtype(precision))
    sample_shape = (model.in_channels, model.input_size, model.input_size)
    decode, decoder = _decoder(config, vae, device)
    return SamplingModel(
        model=model,
        diffusion=create_diffusion(learn_sigma=model.learn_sigma, noise_schedule=read.noise_schedule),
        noise_schedule=read.noise_schedule,
        config=config,
        sample_shape=sample_shape,
        decode=decode,
        decoder=decoder,
        checkpoint={
            "path": str(path),
            "sha256": sha256_file(Path(path)),
            "step": read.step,
            "layout": read.layout,
        },
        weights=weights,
        attention=selection.to_dict(),
    )


def _decoder(
    config: TrainConfig, vae_spec: str | None, device: torch.device
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, dict[str, Any]]:
    if config.switches.features is Features.PIXELS:
        return None, {"kind": "pixels"}
    scale_factor = None
    if config.switches.features is Features.CACHED:
        manifest = read_manifest(Path(config.cache_dir))
        scale_factor = float(manifest["scale_factor"])
        vae_spec = vae_spec or config.vae or manifest["vae"]["spec"]
    vae_spec = vae_spec or config.vae
    if vae_spec is None:
        raise ConfigError(
            "this latent model needs a VAE to decode its samples: pass --vae (a local weights path)"
        )
    handle = load_vae(vae_spec, device, scale_factor=scale_factor)
    record = {
        "kind": "vae",
        "spec": vae_spec,
        "weights_sha256": handle.fingerprint["weights_sha256"],
        "scale_factor": handle.scale_factor,
    }
    return _vae_decode(handle), record


def _vae_decode(handle: VAEHandle) -> Callable[[torch.Tensor], torch.Tensor]:
    def decode(latents: torch.Tensor) -> torch.Tensor:
        # Strict fp32 whatever the sampling precision: the decoder is not what is being measured.
        with torch.no_grad(), torch.autocast(latents.device.type, enabled=False), strict_fp32():
            return handle.model.decode(latents.float() / handle.scale_factor).sample

    return decode


# ----------------------------------------------------------------------------------------------
# A sampling run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingRequest:
    """What ``dit-repro sample`` was asked to do."""

    checkpoint: str
    """Checkpoint file written by training."""
    out_dir: str
    """Folder for the PNGs, ``samples.json`` and the ``.npz``."""
    num: int
    """Total number of samples N (indices 0..N-1); existing ones are kept."""
    seed: int = 0
    """Base seed: image i uses seed + i."""
    sampler: str = "ddpm"
    """``ddpm`` (ancestral) or ``ddim``."""
    steps: int = 250
    """Sampling steps (DiT's FID protocol: 250 DDPM steps)."""
    eta: float = 0.0
    """DDIM's eta (0 = deterministic); must be 0 for DDPM."""
    cfg_scale: float = 1.5
    """Classifier-free guidance scale; 1.0 = none (DiT reports FID-50K at 1.5 and at 1.0)."""
    cfg_channels: str = "all"
    """Guided noise channels: ``all`` or ``first3`` (DiT's reference code)."""
    clip_denoised: bool | None = None
    """Clamp each predicted x0 to [-1, 1]; None: on for pixel models (images live in [-1, 1]),
    off for latent models (latents are unbounded)."""
    weights: str = "ema"
    """``ema`` or ``raw`` weights of the checkpoint."""
    precision: Precision = Precision.FP32
    """fp32, tf32, fp16 or bf16 (autocast) for the model's forwards."""
    attention: str = "auto"
    """Attention backend."""
    batch_size: int = 32
    """Images per forward (the guided batch is twice this)."""
    image_format: str = "png"
    """``png``, or ``npz`` for PNGs plus the packed ADM ``.npz``."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    vae: str | None = None
    """VAE override for decoding latent models."""
    model: str | None = None
    """Model preset of a bare state dict (DiT's release); other layouts name their own."""
    rank: int = 0
    """This process's rank."""
    world_size: int = 1
    """Number of sampling processes."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""


@dataclass(frozen=True)
class SamplingReport:
    """What a sampling run did."""

    generated: list[int]
    """Indices this process generated."""
    kept: int
    """Indices of this process's share that already existed and were kept."""
    npz: str | None
    """Path of the packed ``.npz`` if this process packed it."""
    record: dict[str, Any]
    """The ``samples.json`` content."""


def run_sampling(request: SamplingRequest) -> SamplingReport:
    """Generate this process's missing share of samples 0..N-1 into ``out_dir`` (see module docstring)."""
    if request.image_format not in FORMATS:
        raise ConfigError(f"unknown format {request.image_format!r}; choose one of {', '.join(FORMATS)}")
    # Checked before anything is written: a refused request must leave no samples.json behind that
    # would then refuse the corrected one as "other settings".
    for name, flag in (("num", "--num"), ("steps", "--steps"), ("batch_size", "--batch-size")):
        if getattr(request, name) < 1:
            raise ConfigError(f"{flag} must be >= 1, got {getattr(request, name)}")
    share = rank_indices(request.num, request.rank, request.world_size)
    device = resolve_device(request.device, local_rank=launched_process().local_rank)
    loaded = load_sampling_model(
        request.checkpoint,
        weights=request.weights,
        attention=request.attention,
        precision=request.precision,
        device=device,
        vae=request.vae,
        model_name=request.model,
    )
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = _merge_record(out_dir, _new_record(request, loaded))
    write_json_atomic(out_dir / SAMPLES_RECORD, record)

    todo = missing_indices(out_dir, share)
    with matmul_precision(request.precision):
        for chunk, images in generate(
            loaded.model,
            loaded.diffusion,
            todo,
            seed=request.seed,
            sample_shape=loaded.sample_shape,
            sampler=request.sampler,
            steps=request.steps,
            eta=request.eta,
            cfg_scale=request.cfg_scale,
            cfg_channels=request.cfg_channels,
            clip_denoised=_clip_denoised(request, loaded),
            batch_size=request.batch_size,
            decode=loaded.decode,
            autocast_dtype=autocast_dtype(request.precision),
            progress=request.progress and request.rank == 0,
        ):
            for index, image in zip(chunk, images, strict=True):
                write_image(out_dir, index, image)
    npz = pack_npz(out_dir, request.num) if request.image_format == "npz" else None
    return SamplingReport(
        generated=todo, kept=len(share) - len(todo), npz=str(npz) if npz else None, record=record
    )


def _clip_denoised(request: SamplingRequest, loaded: SamplingModel) -> bool:
    if request.clip_denoised is not None:
        return request.clip_denoised
    return loaded.decoder["kind"] == "pixels"


def _new_record(request: SamplingRequest, loaded: SamplingModel) -> dict[str, Any]:
    channels, height, width = loaded.sample_shape
    if loaded.decode is not None:  # the VAE decodes latents to RGB images of the training size
        channels, height, width = 3, loaded.config.image_size, loaded.config.image_size
    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "num": request.num,
        "seed": request.seed,
        "seed_rule": SEED_RULE,
        "label_rule": LABEL_RULE,
        "num_classes": loaded.model.num_classes,
        "checkpoint": loaded.checkpoint,
        "config": loaded.config.to_dict(),
        "settings": {
            "sampler": request.sampler,
            "steps": request.steps,
            "eta": request.eta if request.sampler == "ddim" else None,
            "cfg_scale": request.cfg_scale,
            "cfg_channels": request.cfg_channels,
            "clip_denoised": _clip_denoised(request, loaded),
            "weights": request.weights,
            "decoder": loaded.decoder,
            "noise_schedule": loaded.noise_schedule,
            "precision": Precision(request.precision).value,
            "attention": request.attention,
        },
        "image": {"height": height, "width": width, "channels": channels},
        "attention_resolved": loaded.attention,
    }


IDENTITY_KEYS = ("seed", "seed_rule", "label_rule", "num_classes", "settings", "image")
"""Fields of ``samples.json`` that must match for two runs to write into one folder."""


def _read_existing_record(path: Path) -> dict[str, Any]:
    """An existing ``samples.json``, checked where :func:`_merge_record` relies on it."""
    unusable = f"{path} is not a samples record this version can extend"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SamplesMismatchError(f"{unusable}: not valid JSON ({exc}); use a new --out folder") from None
    if not isinstance(old, dict):
        raise SamplesMismatchError(f"{unusable}: it holds a {type(old).__name__}, not an object; use a new --out folder")
    num = old.get("num")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise SamplesMismatchError(f"{unusable}: its num is {num!r}, not a positive integer; use a new --out folder")
    if not isinstance(old.get("checkpoint"), dict):
        raise SamplesMismatchError(f"{unusable}: it names no checkpoint; use a new --out folder")
    return old


def _merge_record(out_dir: Path, new: dict[str, Any]) -> dict[str, Any]:
    """The record for ``out_dir``: ``new``, checked against and extending an existing record."""
    path = out_dir / SAMPLES_RECORD
    if not path.is_file():
        return new
    old = _read_existing_record(path)
    differing = {key: (old.get(key), new[key]) for key in IDENTITY_KEYS if old.get(key) != new[key]}
    if old["checkpoint"].get("sha256") != new["checkpoint"]["sha256"]:
        differing["checkpoint.sha256"] = (
            old["checkpoint"].get("sha256"),
            new["checkpoint"]["sha256"],
        )
    if differing:
        raise SamplesMismatchError(
            f"{out_dir} holds samples made with other settings {differing}; use a new --out folder "
            "(images of two settings must not be mixed in one set)"
        )
    return {**new, "num": max(old["num"], new["num"])}

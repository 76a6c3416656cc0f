"""The frozen VAE that maps images to latents: loading it offline, fingerprinting it, encoding.

Specs accepted by :func:`load_vae`:

* a folder holding a diffusers ``AutoencoderKL`` (``config.json`` + weights), or a pipeline
  folder with a ``vae/`` sub-folder;
* a single ``.safetensors`` / ``.ckpt`` / ``.pt`` / ``.bin`` file of the Stable Diffusion VAE
  (diffusers or original LDM key names), read with the SD-VAE configuration shipped here;
* a Hugging Face repo id already in the local cache (``stabilityai/sd-vae-ft-ema``,
  ``stabilityai/sd-vae-ft-mse``); nothing is ever downloaded;
* ``tiny-random``: a small seeded random VAE for tests;
* ``full-size-random``: the full SD-VAE architecture with seeded random weights, for timing.

The two random ones say so in their fingerprint and must never produce a reported number.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import SingleFileComponentError

from dit_repro.config import ConfigError
from dit_repro.precision import strict_fp32

SD_VAE_CONFIG_DIR = Path(__file__).with_name("sd_vae")
"""Folder with the diffusers configuration of the SD ft-EMA / ft-MSE VAE."""
SD_SCALE_FACTOR = 0.18215
"""Latent scale factor of the Stable Diffusion VAE (unit variance of scaled latents on its data)."""
VAE_DOWNSAMPLE = 8
"""Pixels per latent cell along each side: the SD VAE maps an image of side s to latents of side s // 8."""
LATENT_CHANNELS = 4
"""Channels of the SD VAE's latents: the input channels of every latent-space model."""
PRETRAINED_REPOS = ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse")
"""Hugging Face repos of the VAE the DiT paper uses."""
TINY_RANDOM = "tiny-random"
"""Spec of the small seeded test VAE."""
FULL_SIZE_RANDOM = "full-size-random"
"""Spec of the full SD-VAE architecture with seeded random weights (timing only)."""
RANDOM_WEIGHTS_SEED = 0
"""Seed of the random VAEs' initialisation."""
RANDOM_WEIGHTS_NOTE = "random weights: for tests and timing only, never for a reported number"
"""Label carried by the fingerprint of every random-weight VAE."""

TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    # Four levels keep the SD VAE's 8x downsampling and 4 latent channels at a fraction of the cost.
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": SD_SCALE_FACTOR,
    "mid_block_add_attention": False,
}
"""Configuration of :data:`TINY_RANDOM`."""

_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class VAEUnavailableError(ConfigError):
    """The VAE weights named by a spec are not on this machine."""


def _where_to_put_weights(spec: str) -> str:
    return (
        f"VAE weights {spec!r} are not available offline. On a machine with internet run "
        "`huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir sd-vae-ft-ema` "
        "(or sd-vae-ft-mse), copy the folder here and pass its path (--vae PATH / TrainConfig.vae): "
        "a folder with config.json and diffusion_pytorch_model.safetensors. A single .safetensors/.ckpt "
        "file of the SD VAE, or a repo id already in the Hugging Face cache, also works. "
        f"'{TINY_RANDOM}' is a random test VAE."
    )


def scaled_posterior_sample(
    mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, scale_factor: float
) -> torch.Tensor:
    """``(mean + exp(logvar / 2) * eps) * scale_factor``: the one formula both live and cached paths use."""
    return (mean + torch.exp(0.5 * logvar) * eps) * scale_factor


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict in sorted key order: name, dtype, shape and raw bytes of each tensor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class VAEHandle:
    """A frozen ``AutoencoderKL`` in eval mode with its fingerprint and latent scale factor."""

    def __init__(self, model: AutoencoderKL, spec: str, kind: str, scale_factor: float | None = None) -> None:
        model.eval().requires_grad_(False)
        self.model = model
        """The diffusers autoencoder (eval mode, no gradients)."""
        self.spec = spec
        """The spec it was loaded from."""
        self.kind = kind
        """``pretrained``, ``tiny-random`` or ``full-size-random``."""
        self.scale_factor = float(scale_factor if scale_factor is not None else model.config.scaling_factor)
        """Multiplier that brings latents to roughly unit variance."""
        config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
        fingerprint: dict[str, Any] = {
            "kind": kind,
            "spec": spec,
            "class": type(model).__name__,
            # A JSON round trip turns tuples into lists, so a fingerprint read back from a manifest compares equal.
            "config": json.loads(json.dumps(config)),
            "weights_sha256": weights_sha256(model),
            "random_weights": kind != "pretrained",
        }
        if kind != "pretrained":
            fingerprint["note"] = RANDOM_WEIGHTS_NOTE
        self.fingerprint = fingerprint
        """Configuration plus weight hash; ``config`` and ``weights_sha256`` identify the VAE."""

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side (8 for the SD VAE)."""
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (4 for the SD VAE)."""
        return int(self.model.config.latent_channels)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.model.parameters()).device

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(channels, side, side) of the latent of an ``image_size`` image."""
        if image_size % self.downsample_factor:
            raise ConfigError(
                f"image_size {image_size} is not a multiple of the VAE's downsampling factor "
                f"{self.downsample_factor}; choose e.g. {max(1, image_size // self.downsample_factor) * self.downsample_factor}"
            )
        side = image_size // self.downsample_factor
        return (self.latent_channels, side, side)

    def to(self, device: str | torch.device) -> VAEHandle:
        """Move the weights to ``device`` (in place) and return self."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor, strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, log-variance) of images in [-1, 1], in fp32 whatever autocast says.

        ``strict`` forbids TF32 inside the encode (what the latent cache and the cached-vs-live
        equivalence use); ``strict=False`` runs under the process's TF32 flags, as DiT's and
        fast-DiT's training scripts encode (they allow TF32 for cuBLAS and cuDNN globally). The
        log-variance is the one diffusers' ``DiagonalGaussianDistribution`` uses, clamped to [-30, 20].
        """
        images = images.to(self.device, torch.float32)
        with torch.autocast(device_type=images.device.type, enabled=False), strict_fp32() if strict else nullcontext():
            posterior = self.model.encode(images).latent_dist
        return posterior.mean, posterior.logvar


def load_vae(spec: str, device: str | torch.device = "cpu", scale_factor: float | None = None) -> VAEHandle:
    """Load the VAE named by ``spec`` (see the module docstring) offline, frozen, on ``device``.

    ``scale_factor=None`` takes the model configuration's ``scaling_factor`` (0.18215 for SD).
    """
    if spec == TINY_RANDOM:
        return VAEHandle(_random_model(TINY_VAE_CONFIG), spec, TINY_RANDOM, scale_factor).to(device)
    if spec == FULL_SIZE_RANDOM:
        config = AutoencoderKL.load_config(str(SD_VAE_CONFIG_DIR))
        return VAEHandle(_random_model(config), spec, FULL_SIZE_RANDOM, scale_factor).to(device)
    path = Path(spec).expanduser()
    if path.is_dir():
        model = _from_folder(path, spec)
    elif path.is_file():
        model = _from_single_file(path, spec)
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        model = _from_hub_cache(spec)
    else:
        raise VAEUnavailableError(f"no file or folder {path}. " + _where_to_put_weights(spec))
    return VAEHandle(model, spec, "pretrained", scale_factor).to(device)


def _random_model(config: dict[str, Any]) -> AutoencoderKL:
    # Fork the CPU generator so that building a test VAE does not shift anyone else's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return AutoencoderKL.from_config(config)


def _from_folder(path: Path, spec: str) -> AutoencoderKL:
    if (path / "config.json").is_file():
        subfolder = None
    elif (path / "vae" / "config.json").is_file():
        subfolder = "vae"
    else:
        raise VAEUnavailableError(
            f"folder {path} has no config.json (nor vae/config.json). " + _where_to_put_weights(spec)
        )
    try:
        return AutoencoderKL.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise VAEUnavailableError(
            f"cannot load the VAE in {path}: {exc}. " + _where_to_put_weights(spec)
        ) from exc


def _from_single_file(path: Path, spec: str) -> AutoencoderKL:
    if path.suffix.lower() not in _SINGLE_FILE_SUFFIXES:
        raise VAEUnavailableError(
            f"{path} is not a VAE weights file (expected one of {', '.join(_SINGLE_FILE_SUFFIXES)}). "
            + _where_to_put_weights(spec)
        )
    try:
        # The shipped SD-VAE config stands in for the hub config that from_single_file would fetch.
        return AutoencoderKL.from_single_file(str(path), config=str(SD_VAE_CONFIG_DIR), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, SingleFileComponentError) as exc:
        raise VAEUnavailableError(
            f"cannot read {path} as a Stable Diffusion VAE ({type(exc).__name__}: {exc}). "
            + _where_to_put_weights(spec)
        ) from exc


def _from_hub_cache(repo_id: str) -> AutoencoderKL:
    try:
        return AutoencoderKL.from_pretrained(repo_id, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise VAEUnavailableError(
            f"{repo_id!r} is neither a local path nor in the Hugging Face cache. "
            + _where_to_put_weights(repo_id)
        ) from exc

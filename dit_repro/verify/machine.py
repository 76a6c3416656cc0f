"""Machine-independent facts of the models as defined: parameters, multiply-adds, FLOPs, shapes.

Nothing here allocates a model's weights: parameter counts build on the meta device, FLOPs are
counted by ``FlopCounterMode`` over fake tensors (shapes only), so DiT-XL/2 costs seconds.
"""

from __future__ import annotations

import functools
import json

import torch
from diffusers import AutoencoderKL
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from dit_repro.config import Checkpointing
from dit_repro.data.vae import LATENT_CHANNELS, SD_VAE_CONFIG_DIR
from dit_repro.data.vae import VAE_DOWNSAMPLE as LATENT_DOWNSAMPLE
from dit_repro.diffusion import create_diffusion
from dit_repro.flops import encoder_flops_per_image, forward_macs
from dit_repro.models import PRESETS, build_model
from dit_repro.models.attention import Backend
from dit_repro.models.facts import model_info
from dit_repro.switches import apply_checkpointing, diffusion_loss, force_attention

PAPER_IMAGE_SIZE = 256
"""Both papers train at 256x256 pixels (32x32 latents)."""


@functools.cache
def param_count(model: str, image_size: int = PAPER_IMAGE_SIZE, num_classes: int = 1000) -> int:
    """Parameters of a preset as defined (ImageNet's 1000 classes, latents of a 256 px image)."""
    return int(model_info(model, image_size, num_classes)["params"])


def forward_gmacs(model: str, image_size: int = PAPER_IMAGE_SIZE) -> float:
    """Analytic multiply-adds of one forward pass per image, in units of 1e9."""
    return forward_macs(model, image_size // LATENT_DOWNSAMPLE, LATENT_CHANNELS).total / 1e9


@functools.cache
def training_step_flops(model: str, checkpointing: bool, image_size: int = PAPER_IMAGE_SIZE) -> int:
    """FLOPs of one forward+backward of the training loss for one image, counted by FlopCounterMode.

    With ``checkpointing`` every block is recomputed in the backward pass, so the count includes
    that recompute (which model FLOPs for MFU leave out).
    """
    latent = image_size // LATENT_DOWNSAMPLE
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = build_model(model, input_size=latent, in_channels=LATENT_CHANNELS, num_classes=1000)
        force_attention(net, Backend.MATH)  # its two products are what the counter sees
        apply_checkpointing(net, Checkpointing.FULL if checkpointing else Checkpointing.NONE)
        diffusion = create_diffusion(learn_sigma=net.learn_sigma)
        x0 = torch.randn(1, LATENT_CHANNELS, latent, latent)
        t, y = torch.randint(0, diffusion.num_timesteps, (1,)), torch.randint(0, 1000, (1,))
        with FlopCounterMode(display=False) as counter:
            diffusion_loss(net, diffusion, x0, t, {"y": y}, torch.randn_like(x0), None).backward()
    return int(counter.get_total_flops())


def latent_shape(image_size: int = PAPER_IMAGE_SIZE) -> tuple[int, ...]:
    """Shape of the SD VAE's latent of one RGB image, from running its encoder on fake tensors."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD_VAE_CONFIG_DIR)))
        with torch.no_grad():
            latent = vae.encode(torch.randn(1, 3, image_size, image_size)).latent_dist.mean
    return tuple(latent.shape[1:])


@functools.cache
def vae_encode_macs(image_size: int = PAPER_IMAGE_SIZE) -> int:
    """Multiply-adds of the SD VAE's encode of one RGB image, counted on fake tensors (weights on the meta device)."""
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD_VAE_CONFIG_DIR)))
    return encoder_flops_per_image(vae, image_size) // 2  # the counter gives FLOPs, two per multiply-add


def training_step_macs(model: str, checkpointing: str, features: str, image_size: int = PAPER_IMAGE_SIZE) -> int:
    """Multiply-adds of one training step for one image, as the step does them.

    Forward and backward are three forwards; with every block checkpointed (``full``) the backward
    recomputes the blocks, counted as one more forward (the blocks are all but a sliver of it, as
    :func:`training_step_flops` counts); live features add the VAE's encode of the image.
    """
    forward = forward_macs(model, image_size // LATENT_DOWNSAMPLE, LATENT_CHANNELS).total
    passes = 3 + (1 if checkpointing == "full" else 0)
    return passes * forward + (vae_encode_macs(image_size) if features == "live" else 0)


ARCHITECTURE_QUANTITIES = ("image_shape", "latent_shape", "patch_size", "hidden_size", "depth", "tokens")
"""The sizes :func:`architecture_size` knows: shapes of the paper's setting, or a preset's."""


def architecture_size(quantity: str, model: str | None = None, image_size: int = PAPER_IMAGE_SIZE) -> tuple[int, ...]:
    """A size of the architecture at the paper's image size, as a tuple (a shape, or one number).

    ``image_shape`` is what the SD VAE encodes (its configured input channels, the image side);
    ``latent_shape`` what it gives (:data:`LATENT_CHANNELS` cells of side ``image_size //
    VAE_DOWNSAMPLE``); ``patch_size``, ``hidden_size``, ``depth`` and ``tokens`` (patch tokens) are
    the preset ``model``'s, on those latents.
    """
    if quantity == "image_shape":
        config = json.loads((SD_VAE_CONFIG_DIR / "config.json").read_text(encoding="utf-8"))
        return (int(config["in_channels"]), image_size, image_size)
    latent = image_size // LATENT_DOWNSAMPLE
    if quantity == "latent_shape":
        return (LATENT_CHANNELS, latent, latent)
    if quantity not in ARCHITECTURE_QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; known: {', '.join(ARCHITECTURE_QUANTITIES)}")
    if model not in PRESETS:
        raise ValueError(f"{quantity} needs a model preset, got {model!r}")
    preset = PRESETS[model]
    if quantity == "tokens":
        return ((latent // preset.patch_size) ** 2,)
    return (int(getattr(preset, quantity)),)

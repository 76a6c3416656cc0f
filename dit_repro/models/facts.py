"""Facts of a model preset at an image size: parameters, tokens, forward multiply-adds, training FLOPs."""

from __future__ import annotations

import torch

from dit_repro.data.vae import LATENT_CHANNELS, VAE_DOWNSAMPLE
from dit_repro.flops import forward_macs, train_flops_per_image
from dit_repro.models import PRESETS, build_model


def model_info(name: str, image_size: int = 256, num_classes: int = 1000, pixel_space: bool = False,
               in_channels: int = 3) -> dict:
    """Facts of a preset at an image size: params, tokens, forward multiply-adds, training FLOPs.

    Latent models see ``image_size // VAE_DOWNSAMPLE`` cells of ``LATENT_CHANNELS`` channels (the SD
    VAE); ``pixel_space`` models see the image itself with ``in_channels``. The model is built on the
    meta device: nothing is allocated.
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

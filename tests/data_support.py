"""Shared pieces of the data tests: the tiny random VAE, small image folders, small caches."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image

from dit_repro.config import TrainConfig
from dit_repro.data.extraction import ExtractionReport, extract_latent_cache
from dit_repro.data.images import build_image_source
from dit_repro.data.synthetic import SyntheticImages
from dit_repro.data.vae import VAEHandle, load_vae

IMAGE_SIZE = 32
"""Image side of the data tests: 4x4 latents with the tiny VAE, fast on a CPU."""
SYNTHETIC = "synthetic:count=12,classes=3"
"""The default small dataset of the cache tests."""


@functools.lru_cache(maxsize=1)
def tiny_vae() -> VAEHandle:
    """The seeded tiny random VAE (built once per session; tests only read it)."""
    return load_vae("tiny-random", "cpu")


def write_image_folder(root: Path, per_class: dict[str, int], side: tuple[int, int] = (48, 40)) -> Path:
    """Write ``per_class[name]`` synthetic PNGs of ``side`` (width, height) into ``root/<name>/``."""
    source = SyntheticImages(max(side), channels=3, count=sum(per_class.values()), classes=len(per_class))
    index = 0
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            pixels = ((source.load(index) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
            image.crop((0, 0, *side)).save(root / name / f"img_{k:03d}.png")
            index += 1
    return root


def build_cache(
    out: Path,
    data: str = SYNTHETIC,
    image_size: int = IMAGE_SIZE,
    shard_size: int = 4,
    batch_size: int = 4,
    vae: VAEHandle | None = None,
    **kwargs,
) -> ExtractionReport:
    """Extract ``data`` with the tiny VAE (or ``vae``) into ``out`` without a progress bar."""
    images = build_image_source(data, image_size, channels=3)
    return extract_latent_cache(
        images, vae or tiny_vae(), out, batch_size=batch_size, shard_size=shard_size, progress=False, **kwargs
    )


def train_config(**overrides) -> TrainConfig:
    """A small TrainConfig for the data tests."""
    values = {"data": SYNTHETIC, "image_size": IMAGE_SIZE, "seed": 0, "vae": "tiny-random"}
    values.update(overrides)
    return TrainConfig(**values)

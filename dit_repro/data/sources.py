"""What the trainer trains on: pixels, latents encoded live by the VAE, or latents from the cache.

:func:`build_feature_source` turns a :class:`~dit_repro.config.TrainConfig` into a
:class:`FeatureSource`. Its ``dataset`` yields dict items (``x``, ``y``, ``flip``, ``index``
and, for live encoding, ``eps``) whose random draws depend only on ``(cfg.seed, epoch,
index)``; ``prepare`` turns a collated batch into the diffusion input on the device. With the
same seed, the live and cached sources give the same latents step for step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch.utils.data import Dataset

from dit_repro.config import ConfigError, Features, TrainConfig
from dit_repro.data.images import AugmentedImageDataset, build_image_source
from dit_repro.data.imagesource import ImageSource
from dit_repro.data.latents import LatentCache, LatentDataset
from dit_repro.data.manifest import read_manifest
from dit_repro.data.scan import SHOWN_IN_ERROR, UnreadableImagesError, check_images, describe_unreadable
from dit_repro.data.vae import SD_SCALE_FACTOR, VAEHandle, load_vae, scaled_posterior_sample


class FeatureSource(ABC):
    """A dataset plus the step that turns its batches into the model's input."""

    def __init__(self, dataset: Dataset, num_classes: int, in_channels: int, input_size: int) -> None:
        self.dataset = dataset
        """Map-style dataset with ``set_epoch(epoch)``; use it with a DistributedSampler keyed on the global seed."""
        self.num_classes = num_classes
        """Number of class labels the model must embed (the null class comes on top)."""
        self.in_channels = in_channels
        """Channels of the model input: 1 or 3 for pixels, the VAE's latent channels (4) for latents."""
        self.input_size = input_size
        """Side of the model input: image_size for pixels, image_size // 8 for latents."""

    def prepare(self, batch: dict[str, torch.Tensor], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, y) on ``device`` from a collated batch; by default the batch's ``x`` is x0 already.

        Every random draw of the data is made in the dataset from ``(seed, epoch, index)``, so it
        depends neither on the device nor on the number of processes.
        """
        return batch["x"].to(device, non_blocking=True), batch["y"].to(device, non_blocking=True)

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the source is (dataset, VAE fingerprint, cache folder) for the run record."""

    def _shape_record(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
        }


class PixelSource(FeatureSource):
    """Pixel-space training: the flipped image itself is x0."""

    def __init__(self, images: ImageSource, seed: int, num_classes: int) -> None:
        super().__init__(AugmentedImageDataset(images, seed), num_classes, images.channels, images.image_size)
        self.images = images
        """The image source."""

    def describe(self) -> dict[str, Any]:
        """Features, dataset summary and shapes."""
        return {"features": Features.PIXELS.value, "dataset": self.images.summary(), **self._shape_record()}


class LiveLatentSource(FeatureSource):
    """The VAE encodes the flipped image on the device every step; x0 is a fresh posterior sample."""

    def __init__(self, images: ImageSource, vae: VAEHandle, seed: int, num_classes: int,
                 strict_fp32_encode: bool = False) -> None:
        latent_shape = vae.latent_shape(images.image_size)
        dataset = AugmentedImageDataset(images, seed, latent_shape)
        super().__init__(dataset, num_classes, latent_shape[0], latent_shape[1])
        self.images = images
        """The image source."""
        self.vae = vae
        """The frozen VAE, moved to the training device on first use."""
        self.strict_fp32_encode = strict_fp32_encode
        """Encode with TF32 forbidden (else under the process's TF32 flags, as DiT's train.py)."""

    def prepare(self, batch: dict[str, torch.Tensor], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean + exp(logvar / 2) * eps) * scale_factor`` of the batch's images, with the batch's ``eps``."""
        device = torch.device(device)  # resolved (cuda with its index) by dit_repro.switches.resolve_device
        if self.vae.device != device:
            self.vae.to(device)
        mean, logvar = self.vae.encode_moments(
            batch["x"].to(device, non_blocking=True), strict=self.strict_fp32_encode
        )
        eps = batch["eps"].to(device, non_blocking=True)
        latents = scaled_posterior_sample(mean, logvar, eps, self.vae.scale_factor)
        return latents, batch["y"].to(device, non_blocking=True)

    def describe(self) -> dict[str, Any]:
        """Features, dataset summary, VAE fingerprint, scale factor and shapes."""
        return {
            "features": Features.LIVE.value,
            "dataset": self.images.summary(),
            "vae": self.vae.fingerprint,
            "scale_factor": self.vae.scale_factor,
            "encode_precision": "strict fp32" if self.strict_fp32_encode else "fp32 under the precision switch's TF32 flags",
            **self._shape_record(),
        }


class CachedLatentSource(FeatureSource):
    """Latents drawn in the dataset from the cached moments; ``prepare`` only moves them."""

    def __init__(self, cache: LatentCache, seed: int, num_classes: int) -> None:
        channels, side, _ = cache.latent_shape
        super().__init__(LatentDataset(cache, seed), num_classes, channels, side)
        self.cache = cache
        """The verified cache."""

    def describe(self) -> dict[str, Any]:
        """Features, cache folder, the cache's VAE and dataset, skipped images and shapes."""
        manifest = self.cache.manifest
        dataset = {key: value for key, value in manifest["dataset"].items() if key != "files"}
        return {
            "features": Features.CACHED.value,
            "cache_dir": str(self.cache.cache_dir),
            "dataset": {**dataset, "crop": manifest["crop"], "image_size": manifest["image_size"]},
            "vae": manifest["vae"],
            "scale_factor": manifest["scale_factor"],
            "num_latents": manifest["num_latents"],
            "skipped_images": len(manifest["skipped"]),
            **self._shape_record(),
        }


def build_feature_source(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> FeatureSource:
    """The source ``cfg.switches.features`` asks for, checked against ``cfg`` before any training.

    Every process builds the same source (the data draws use the global ``cfg.seed``, not a
    per-rank seed); ``rank`` only decides which process shows the progress bars and warnings.
    An image folder is scanned for unreadable images first (:func:`dit_repro.data.scan.check_images`;
    under DDP each process scans its share), which are left out, or refused with
    ``cfg.strict_images``; with features=cached the cache's record of them is used instead.
    features=cached checks the cache's manifest against ``cfg`` (image size, crop, dataset
    and, when ``cfg.vae`` is set, the VAE; the scale factor against that VAE's or the SD
    VAE's 0.18215) and every shard's sha256, and raises before training starts on any mismatch.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    features = cfg.switches.features
    main = rank == 0
    if features is Features.PIXELS:
        images = build_image_source(cfg.data, cfg.image_size)
        _check(images, cfg, main)
        return PixelSource(images, cfg.seed, _num_classes(cfg, images.num_classes))
    images = build_image_source(cfg.data, cfg.image_size, channels=3)
    if features is Features.LIVE:
        _check(images, cfg, main)
        vae = load_vae(cfg.vae, "cpu")
        return LiveLatentSource(images, vae, cfg.seed, _num_classes(cfg, images.num_classes), cfg.strict_fp32_encode)
    _apply_cache_record(images, cfg, main)
    expected: dict[str, Any] = {
        "image_size": cfg.image_size,
        "crop": images.crop,
        "dataset": images.fingerprint(),
    }
    if cfg.vae:
        vae = load_vae(cfg.vae, "cpu")
        expected.update(vae=vae.fingerprint, scale_factor=vae.scale_factor)
    else:
        expected["scale_factor"] = SD_SCALE_FACTOR
    cache = LatentCache.open(cfg.cache_dir, expected=expected, verify=True, progress=rank == 0)
    return CachedLatentSource(cache, cfg.seed, _num_classes(cfg, cache.num_classes))


def _check(images: ImageSource, cfg: TrainConfig, main: bool) -> None:
    """The scan for unreadable images, with the run's strictness and its decoding workers as threads."""
    check_images(images, strict=cfg.strict_images, workers=max(1, cfg.num_workers), progress=main, announce=main)


def _apply_cache_record(images: ImageSource, cfg: TrainConfig, main: bool) -> None:
    """Leave out what the cache's extraction left out (no scan: the cache holds the decoded images).

    The dataset's hash covers the files served, so the cache is compared with the same files it
    was built from. ``cfg.strict_images`` refuses a cache that was built without some images.
    """
    skipped = [{"file": entry["file"], "reason": entry["reason"]} for entry in read_manifest(cfg.cache_dir)["skipped"]]
    if skipped and cfg.strict_images:
        raise UnreadableImagesError(
            f"--strict: the latent cache {cfg.cache_dir} was extracted without {len(skipped)} unreadable image(s): "
            f"{describe_unreadable(skipped, SHOWN_IN_ERROR)}. Repair them and extract a new cache, or leave out --strict",
            skipped,
        )
    check_images(images, known=skipped, announce=main)


def _num_classes(cfg: TrainConfig, dataset_classes: int) -> int:
    if cfg.num_classes is None:
        return dataset_classes
    if cfg.num_classes < dataset_classes:
        raise ConfigError(
            f"num_classes={cfg.num_classes} is fewer than the dataset's {dataset_classes} classes; "
            f"leave it unset or use >= {dataset_classes}"
        )
    return cfg.num_classes

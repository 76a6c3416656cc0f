"""Choosing an image dataset from its spec, and serving it with the per-item draws."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from dit_repro.data.digits import DigitsImages
from dit_repro.data.draws import draw_item
from dit_repro.data.imagefolder import ImageFolderImages
from dit_repro.data.imagesource import DatasetError, ImageSource
from dit_repro.data.synthetic import SyntheticImages


def build_image_source(spec: str, image_size: int, channels: int | None = None) -> ImageSource:
    """The dataset named by ``spec``: ``digits``, ``synthetic[:count=N,classes=K,seed=S]`` or a folder path.

    ``channels=None`` takes the dataset's own count (1 for digits, 3 otherwise); the VAE paths
    pass 3.
    """
    name, _, options = spec.partition(":")
    if name == "digits" and not options:
        return DigitsImages(image_size, channels or 1)
    if name == "synthetic":
        return SyntheticImages.from_options(options, image_size, channels or 3)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(
            f"unknown dataset {spec!r}: not 'digits', not 'synthetic[:count=N,classes=K,seed=S]', "
            f"and no folder {path} exists"
        )
    return ImageFolderImages(path, image_size, channels or 3)


class AugmentedImageDataset(Dataset):
    """Images with the per-item flip applied and, for live encoding, the posterior noise attached.

    Item ``index`` in epoch ``e`` uses :func:`dit_repro.data.draws.draw_item` with
    ``(seed, e, index)``. Call :meth:`set_epoch` before each epoch (as with a
    DistributedSampler); DataLoader workers copy the dataset when an epoch's iterator is
    created, so persistent workers would keep a stale epoch.

    Items are dicts: ``x`` (C, S, S) image in [-1, 1], ``y`` label, ``flip``, ``index`` and,
    with ``latent_shape``, ``eps`` (the posterior noise for that latent).
    """

    def __init__(
        self, images: ImageSource, seed: int, latent_shape: tuple[int, int, int] | None = None
    ) -> None:
        self.images = images
        """The underlying image source."""
        self.seed = seed
        """The run's global seed (never offset by rank)."""
        self.latent_shape = latent_shape
        """Shape of the posterior noise to draw per item, or None for pixel-space training."""
        self.epoch = 0
        """Epoch whose draws are served."""

    def set_epoch(self, epoch: int) -> None:
        """Serve the draws of ``epoch`` from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of images."""
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Image ``index`` with this epoch's flip (and noise)."""
        draws = draw_item(self.seed, self.epoch, index, self.latent_shape)
        image = self.images.load(index)
        if draws.flip:
            image = image.flip(-1)
        item = {
            "x": image,
            "y": torch.tensor(self.images.label(index), dtype=torch.long),
            "flip": torch.tensor(draws.flip),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if draws.eps is not None:
            item["eps"] = draws.eps
        return item

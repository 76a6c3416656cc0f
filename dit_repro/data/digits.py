"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped inside the package."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from dit_repro.data.imagesource import ImageSource

CROP_METHOD = "digits-bilinear-upsample"
"""Name recorded in cache manifests for the 8x8 -> image_size bilinear upsampling."""

_MAX_VALUE = 16.0
"""The digits' pixel values are integer counts in [0, 16]."""


class DigitsImages(ImageSource):
    """The digits upsampled to ``image_size`` with bilinear interpolation, scaled to [-1, 1].

    Bilinear, not nearest: nearest turns each source pixel into a flat block whose edges fall on
    the model's patch grid (at 32 px a 2x2-patch model would see patches that are exactly
    constant), and gives blocks of unequal width when the size is not a multiple of 8. Bilinear
    strokes are smooth, closer to the natural images a VAE is trained on. Interpolation is a
    convex combination, so values stay inside [-1, 1]. With ``channels=3`` the grey image is
    replicated (for the VAE paths); ``channels=1`` is for pixel-space training.
    """

    kind = "digits"

    def __init__(self, image_size: int, channels: int = 1) -> None:
        super().__init__(image_size, channels)
        bunch = load_digits()
        raw = np.asarray(bunch.images, dtype=np.float64)
        self._targets = np.asarray(bunch.target, dtype=np.int64)
        self._sha256 = hashlib.sha256(raw.tobytes() + self._targets.tobytes()).hexdigest()
        self._small = torch.from_numpy(raw / _MAX_VALUE * 2.0 - 1.0).float().unsqueeze(1)  # (N, 1, 8, 8)

    def __len__(self) -> int:
        """1,797."""
        return len(self._targets)

    @property
    def num_classes(self) -> int:
        """10."""
        return 10

    @property
    def crop(self) -> str:
        """Bilinear upsampling of the whole 8x8 image (nothing is cropped)."""
        return CROP_METHOD

    def label(self, index: int) -> int:
        """The digit shown by image ``index``."""
        return int(self._targets[index])

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` upsampled to (channels, image_size, image_size)."""
        size = (self.image_size, self.image_size)
        image = F.interpolate(
            self._small[index : index + 1], size=size, mode="bilinear", align_corners=False
        )[0]
        return image.expand(self.channels, -1, -1).contiguous()

    def fingerprint(self) -> dict[str, Any]:
        """The SHA-256 of the shipped pixel values and targets."""
        return {
            "kind": self.kind,
            "source": "sklearn.datasets.load_digits",
            "num_items": len(self),
            "num_classes": self.num_classes,
            "sha256": self._sha256,
        }

"""A seeded synthetic image set whose classes differ in what the images show."""

from __future__ import annotations

import math
from typing import Any

import torch

from dit_repro.data.draws import stable_seed
from dit_repro.data.imagesource import DatasetError, ImageSource, canonical_sha256

CROP_METHOD = "synthetic-render"
"""Images are rendered at the requested size; nothing is cropped."""

_TAG = "dit-repro/synthetic/v1"
"""Domain tag of the per-image seeds (bump it if the rendering changes)."""

DEFAULTS = {"count": 1024, "classes": 10, "seed": 0}
"""Options of ``synthetic:count=N,classes=K,seed=S`` when left out."""

RENDER_CACHE_BYTES = 2 << 30
"""Rendered images are kept up to this many bytes per process (1024 images of 256 px take 0.8 GiB):
rendering one 256 px image costs milliseconds on the host, which a training step would otherwise
wait for once per image, every epoch."""


class SyntheticImages(ImageSource):
    """Oriented sine gratings plus a colour tint plus a little noise.

    Class ``k`` fixes the grating's orientation and frequency and the tint; the phase and the
    noise are drawn from a generator seeded by ``(seed, index)``, so image ``index`` is the same
    in every process and on every run. Labels cycle through the classes (``index % classes``).
    """

    kind = "synthetic"

    def __init__(
        self, image_size: int, channels: int = 3, count: int = 1024, classes: int = 10, seed: int = 0
    ) -> None:
        super().__init__(image_size, channels)
        if count < 1 or classes < 1:
            raise DatasetError(
                f"synthetic data needs count >= 1 and classes >= 1, got count={count}, classes={classes}"
            )
        self.count = count
        """Number of images."""
        self.classes = classes
        """Number of classes."""
        self.seed = seed
        """Data seed (independent of the training seed)."""
        self._rendered: dict[int, torch.Tensor] = {}
        self._rendered_bytes = 0

    @classmethod
    def from_options(cls, options: str, image_size: int, channels: int) -> SyntheticImages:
        """Build from the text after ``synthetic:``, e.g. ``count=64,classes=4,seed=1`` (empty: defaults)."""
        values = dict(DEFAULTS)
        for item in filter(None, (part.strip() for part in options.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or key not in DEFAULTS:
                raise DatasetError(
                    f"bad synthetic option {item!r}; write synthetic:count=N,classes=K,seed=S "
                    f"(known keys {sorted(DEFAULTS)})"
                )
            try:
                values[key] = int(raw)
            except ValueError:
                raise DatasetError(f"synthetic option {key} must be an integer, got {raw!r}") from None
        return cls(image_size, channels, **values)

    def __len__(self) -> int:
        """``count``."""
        return self.count

    @property
    def num_classes(self) -> int:
        """``classes``."""
        return self.classes

    @property
    def crop(self) -> str:
        """Rendered at size."""
        return CROP_METHOD

    def label(self, index: int) -> int:
        """``index % classes``."""
        return index % self.classes

    def load(self, index: int) -> torch.Tensor:
        """Image ``index``, rendered on first use and then kept (see :data:`RENDER_CACHE_BYTES`)."""
        if not 0 <= index < self.count:
            raise IndexError(f"synthetic image index {index} out of range [0, {self.count})")
        image = self._rendered.get(index)
        if image is None:
            image = self._render(index)
            size = image.numel() * image.element_size()
            if self._rendered_bytes + size <= RENDER_CACHE_BYTES:
                self._rendered[index] = image
                self._rendered_bytes += size
        return image.clone()  # callers may flip or modify it in place

    def _render(self, index: int) -> torch.Tensor:
        label = self.label(index)
        generator = torch.Generator().manual_seed(stable_seed(_TAG, self.seed, index))
        size = self.image_size
        coords = torch.linspace(-1.0, 1.0, size)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        angle = math.pi * label / self.classes
        cycles = 1.5 + label % 4
        phase = 2.0 * math.pi * torch.rand((), generator=generator).item()
        grating = torch.sin(math.pi * cycles * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        channel = torch.arange(self.channels, dtype=torch.float32).view(-1, 1, 1)
        tint = torch.cos(2.0 * math.pi * (channel / 3.0 + label / self.classes))
        noise = torch.randn((self.channels, size, size), generator=generator)
        return (0.6 * grating + 0.3 * tint + 0.1 * noise).clamp(-1.0, 1.0)

    def fingerprint(self) -> dict[str, Any]:
        """The generator's parameters and their hash."""
        params = {
            "kind": self.kind,
            "version": _TAG,
            "count": self.count,
            "classes": self.classes,
            "seed": self.seed,
        }
        return {
            **params,
            "num_items": self.count,
            "num_classes": self.classes,
            "sha256": canonical_sha256(params),
        }

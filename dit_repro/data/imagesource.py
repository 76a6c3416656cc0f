"""What every image dataset provides: fixed-size images in [-1, 1] with labels and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from dit_repro.config import ConfigError


class DatasetError(ConfigError):
    """A dataset that cannot be used: a missing folder, no images, or a malformed spec."""


class UnreadableImageError(ValueError):
    """One image file that cannot be decoded, or whose mode has no defined conversion (see :mod:`dit_repro.data.decode`)."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        # One-argument form: a DataLoader worker re-raises exceptions in the main process by building
        # them from their message alone.
        super().__init__(f"cannot read image {path}: {reason}" if reason is not None else str(path))
        self.path = str(path)
        """The file that failed."""
        self.reason = reason
        """Why it failed (exception type and message)."""


def canonical_sha256(value: Any) -> str:
    """SHA-256 of the canonical JSON form of ``value`` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class ImageSource(ABC):
    """Images already brought to ``image_size`` (crop or resize), as float32 (C, S, S) in [-1, 1].

    Labels are integers in ``[0, num_classes)``. Random augmentation (the flip) is not applied
    here: it belongs to the per-item draws of :mod:`dit_repro.data.draws`.
    """

    kind: str
    """Short name of the dataset family (``imagefolder``, ``digits``, ``synthetic``)."""

    def __init__(self, image_size: int, channels: int) -> None:
        if image_size < 1:
            raise DatasetError(f"image_size must be >= 1, got {image_size}")
        if channels not in (1, 3):
            raise DatasetError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.image_size = image_size
        """Side length of every image in pixels."""
        self.channels = channels
        """Channels of every image: 1 or 3."""
        self.unreadable: list[dict[str, str]] | None = None
        """Files left out as unreadable (``{"file", "reason"}``) once checked by
        :func:`dit_repro.data.scan.check_images`; None before."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of distinct labels."""

    @property
    @abstractmethod
    def crop(self) -> str:
        """How images are brought to ``image_size`` (recorded in cache manifests)."""

    @abstractmethod
    def label(self, index: int) -> int:
        """Label of image ``index`` without decoding the image."""

    @abstractmethod
    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as float32 (channels, image_size, image_size) in [-1, 1].

        Raises :class:`UnreadableImageError` when the file cannot be decoded.
        """

    def scan(self, workers: int = 1, progress: bool = False, part: tuple[int, int] = (0, 1)) -> list[dict[str, str]]:
        """Decode share ``part = (k, n)`` (every n-th image from the k-th) once; the unreadable ones.

        Generated images (digits, synthetic) have no files and nothing to scan.
        """
        return []

    def leave_out(self, unreadable: list[dict[str, str]]) -> None:
        """Serve only the images not in ``unreadable`` (from :meth:`scan`), and record them."""
        if unreadable:
            raise DatasetError(f"{self.kind} images are generated, not read from files: there is nothing to leave out")
        self.unreadable = []

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the dataset's content; ``sha256`` is the field that is compared."""

    def summary(self) -> dict[str, Any]:
        """The fingerprint without per-file lists, small enough for a run record."""
        fingerprint = self.fingerprint()
        fingerprint.pop("files", None)
        fingerprint["crop"] = self.crop
        fingerprint["image_size"] = self.image_size
        fingerprint["channels"] = self.channels
        return fingerprint

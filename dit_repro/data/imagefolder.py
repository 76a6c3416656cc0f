"""Class-per-folder image datasets, brought to size the way ADM and DiT do it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.functional import to_tensor

from dit_repro.data.decode import decode_image
from dit_repro.data.imagesource import DatasetError, ImageSource, canonical_sha256
from dit_repro.data.scan import scan_files

CROP_METHOD = "adm-center-crop"
"""Name recorded in cache manifests for :func:`center_crop_arr`."""


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's centre crop (guided-diffusion ``image_datasets.py``, used by DiT).

    Halve with a BOX filter while the short side is at least twice ``image_size`` (cheap,
    alias-free downsampling), then BICUBIC-resize so that the short side equals ``image_size``,
    then cut the centre square.
    """
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.Resampling.BICUBIC
    )
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size])


class ImageFolderImages(ImageSource):
    """``root/<class>/**/<image>``: labels from the sorted class folder names, files sorted per class.

    Files and labels come from one sorted list of (label, relative path) pairs, so the two can
    never be ordered differently. :meth:`leave_out` removes unreadable files from both lists at
    once, so every served file keeps its label.
    """

    kind = "imagefolder"

    def __init__(self, root: str | Path, image_size: int, channels: int = 3) -> None:
        super().__init__(image_size, channels)
        self.root = Path(root).expanduser()
        """The dataset folder."""
        self.classes, self.files, self.labels = _list_images(self.root)

    def __len__(self) -> int:
        """Number of image files found."""
        return len(self.files)

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.classes)

    @property
    def crop(self) -> str:
        """ADM centre crop."""
        return CROP_METHOD

    def label(self, index: int) -> int:
        """Class index of file ``index``."""
        return self.labels[index]

    def load(self, index: int) -> torch.Tensor:
        """Decode (8-bit, every mode with its real range), centre-crop and scale file ``index`` to [-1, 1]."""
        # The file decides nothing: grey files become RGB and colour ones L as ``channels`` asks.
        image = decode_image(self.root / self.files[index], self.channels)
        tensor = to_tensor(center_crop_arr(image, self.image_size))
        # The Normalize(0.5, 0.5) of DiT's transform, written out.
        return (tensor - 0.5) / 0.5

    def scan(self, workers: int = 1, progress: bool = False, part: tuple[int, int] = (0, 1)) -> list[dict[str, str]]:
        """Decode every ``part[1]``-th file from the ``part[0]``-th once; ``{"file", "reason"}`` for the unreadable."""
        rank, world_size = part
        return scan_files(self.root, self.files[rank::world_size], self.channels, workers=workers, progress=progress)

    def leave_out(self, unreadable: list[dict[str, str]]) -> None:
        """Drop the files of ``unreadable`` with their labels; the dropped ones (of this folder) are recorded."""
        names, listed = {entry["file"] for entry in unreadable}, set(self.files)
        kept = [(path, label) for path, label in zip(self.files, self.labels, strict=True) if path not in names]
        self.unreadable = [entry for entry in unreadable if entry["file"] in listed]
        self.files = [path for path, _ in kept]
        self.labels = [label for _, label in kept]

    def fingerprint(self) -> dict[str, Any]:
        """Class names, the sorted relative list of the files served and their hash (contents are not read).

        Once checked, the unreadable files left out are listed beside it (``unreadable``); the hash
        covers what is served, so a cache built without a file never passes for one built with it.
        """
        listing = {"classes": self.classes, "files": self.files}
        fingerprint = {
            "kind": self.kind,
            "root": str(self.root),
            "num_items": len(self.files),
            "num_classes": len(self.classes),
            "classes": self.classes,
            "files": self.files,
            "sha256": canonical_sha256(listing),
        }
        if self.unreadable is not None:
            fingerprint["unreadable"] = self.unreadable
        return fingerprint


def _list_images(root: Path) -> tuple[list[str], list[str], list[int]]:
    accepted = ", ".join(IMG_EXTENSIONS)
    layout = f"a folder with one sub-folder per class holding images ({accepted})"
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a folder; expected {layout}")
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise DatasetError(f"image folder {root} has no class sub-folders; expected {layout}") from None
    pairs = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not pairs:
        raise DatasetError(f"image folder {root} holds no images with an accepted extension ({accepted})")
    entries = sorted((label, Path(path).relative_to(root).as_posix()) for path, label in pairs)
    return classes, [path for _, path in entries], [label for label, _ in entries]

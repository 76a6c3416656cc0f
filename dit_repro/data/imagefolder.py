"""Class-per-folder image datasets, brought to size the way ADM and DiT do it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.functional import to_tensor

from dit_repro.data.imagesource import DatasetError, ImageSource, UnreadableImageError, canonical_sha256

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
    never be ordered differently.
    """

    kind = "imagefolder"

    def __init__(self, root: str | Path, image_size: int, channels: int = 3) -> None:
        super().__init__(image_size, channels)
        self.root = Path(root).expanduser()
        """The dataset folder."""
        self.classes, self.files, self.labels = _list_images(self.root)
        # Grey images are decoded as L, colour ones as RGB; either way the file decides nothing.
        self._mode = "RGB" if channels == 3 else "L"

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
        """Decode, centre-crop and scale file ``index`` to [-1, 1]."""
        path = self.root / self.files[index]
        try:
            with Image.open(path) as image:
                # convert() forces the full decode, so truncated files fail here and not later.
                image = image.convert(self._mode)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from exc
        tensor = to_tensor(center_crop_arr(image, self.image_size))
        # The Normalize(0.5, 0.5) of DiT's transform, written out.
        return (tensor - 0.5) / 0.5

    def fingerprint(self) -> dict[str, Any]:
        """Class names, the sorted relative file list and their hash (file contents are not read)."""
        listing = {"classes": self.classes, "files": self.files}
        return {
            "kind": self.kind,
            "root": str(self.root),
            "num_items": len(self.files),
            "num_classes": len(self.classes),
            "classes": self.classes,
            "files": self.files,
            "sha256": canonical_sha256(listing),
        }


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

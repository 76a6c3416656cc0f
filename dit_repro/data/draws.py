"""The per-item random draws that line up live encoding and the latent cache.

Every random choice the data side makes for one training item comes from one
``torch.Generator`` seeded from ``(seed, epoch, index)``, in a fixed order:

1. the horizontal flip (a bool, probability 0.5),
2. the posterior noise ``eps`` of the latent shape (live encoding and the cache only).

The live path (encode the flipped image, then ``mean + std * eps``) and the cached path
(pick the stored moments of that orientation, then ``mean + std * eps``) call the same
:func:`draw_item`, so with the same ``(seed, epoch, index)`` they see the same flip and the same
noise, draw for draw. The index is the image's global index in the dataset and the seed is the
run's global seed, never offset by the rank: a DistributedSampler shard therefore draws exactly
what one process would draw for the same items. Draws are made on the CPU so that the device
does not change them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import torch

_DRAW_TAG = "dit-repro/item-draws/v1"
"""Domain tag of the training draws, so that other users of :func:`stable_seed` never collide with them."""


def stable_seed(tag: str, *values: int) -> int:
    """A 63-bit seed from a tag and integers, the same on every platform and Python run.

    Python's ``hash()`` is salted per process for strings and so is not used; BLAKE2b of the
    tag and the little-endian 64-bit integers is.
    """
    digest = hashlib.blake2b(tag.encode("utf-8"), digest_size=8)
    for value in values:
        digest.update(struct.pack("<q", int(value)))
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator of one item in one epoch under the run's global seed."""
    return torch.Generator(device="cpu").manual_seed(stable_seed(_DRAW_TAG, seed, epoch, index))


@dataclass(frozen=True)
class ItemDraws:
    """The random choices for one item in one epoch."""

    flip: bool
    """Whether the image is mirrored left-right (drawn first)."""
    eps: torch.Tensor | None
    """Standard normal posterior noise of the latent shape (drawn second), or None in pixel space."""


def draw_item(seed: int, epoch: int, index: int, latent_shape: tuple[int, ...] | None = None) -> ItemDraws:
    """Draw the flip and, when ``latent_shape`` is given, the posterior noise of one item.

    The order (flip, then noise) is part of the contract: changing it would break the
    draw-for-draw agreement of existing caches and live runs.
    """
    generator = item_generator(seed, epoch, index)
    flip = bool(torch.rand((), generator=generator).item() < 0.5)
    eps = None
    if latent_shape is not None:
        eps = torch.randn(tuple(latent_shape), generator=generator, dtype=torch.float32)
    return ItemDraws(flip=flip, eps=eps)

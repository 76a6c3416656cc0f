"""Reading a latent cache: verify it against its manifest, then draw a fresh latent per access.

:class:`LatentDataset` stores nothing frozen: every access draws the flip and the posterior
noise from :func:`dit_repro.data.draws.draw_item` with the same ``(seed, epoch, index)`` the
live path uses, picks the stored moments of that orientation and returns
``(mean + exp(logvar / 2) * eps) * scale_factor``. Training on the cache therefore sees the same
distribution as encoding every step, and with the same seed the same latents.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset
from tqdm import tqdm

from dit_repro.data.draws import draw_item
from dit_repro.data.manifest import CacheCorruptError, CacheError, CacheSpec, check_compatible, read_manifest
from dit_repro.data.vae import scaled_posterior_sample
from dit_repro.hashing import sha256_file


class LatentCache:
    """A complete cache whose shards match the manifest (size, sha256, row counts)."""

    def __init__(
        self, cache_dir: Path, manifest: dict[str, Any], shard_paths: list[Path], offsets: list[int]
    ) -> None:
        self.cache_dir = cache_dir
        """The cache folder."""
        self.manifest = manifest
        """The parsed manifest."""
        self.spec = CacheSpec.from_manifest(manifest)
        """What the cache was built from."""
        self._paths = shard_paths
        self._offsets = offsets  # offsets[k] = first row of shard k; offsets[-1] = number of rows
        self._handles: dict[int, Any] = {}

    @classmethod
    def open(
        cls,
        cache_dir: str | Path,
        expected: dict[str, Any] | None = None,
        verify: bool = True,
        progress: bool = False,
    ) -> LatentCache:
        """Open ``cache_dir`` after checking it against ``expected`` and, with ``verify``, every shard's sha256.

        ``expected`` maps :class:`CacheSpec` field names to the values this run needs; the cheap
        spec check runs before any shard is hashed. Raises :class:`CacheError` for an unfinished
        cache, :class:`CacheMismatchError` naming each differing field, and
        :class:`CacheCorruptError` naming the shard for a missing, truncated, modified or
        unreadable one.
        """
        cache_dir = Path(cache_dir)
        manifest = read_manifest(cache_dir)
        if not manifest.get("complete"):
            raise CacheError(
                f"latent cache {cache_dir} is unfinished (its manifest is not complete): run the same "
                "`dit-repro extract` command again to finish it"
            )
        if expected:
            check_compatible(
                cache_dir,
                CacheSpec.from_manifest(manifest),
                expected,
                remedy="Train with the configuration the cache was built with, or build a matching cache "
                "with `dit-repro extract`.",
            )
        paths, offsets = [], [0]
        for record in tqdm(manifest["shards"], desc="verify cache", unit="shard", disable=not progress):
            path = shard_file(cache_dir, record)
            _check_shard_file(path, record, verify)
            offsets.append(offsets[-1] + record["count"])
            paths.append(path)
        if offsets[-1] != manifest["num_latents"]:
            raise CacheCorruptError(
                f"{cache_dir / 'manifest.json'} lists {manifest['num_latents']} latents but its shards hold {offsets[-1]}"
            )
        return cls(cache_dir, manifest, paths, offsets)

    @property
    def scale_factor(self) -> float:
        """Scale factor applied to every drawn latent."""
        return self.spec.scale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, side, side) of a latent."""
        return self.spec.latent_shape

    @property
    def num_classes(self) -> int:
        """Classes of the dataset the cache was built from."""
        return int(self.manifest["num_classes"])

    def __len__(self) -> int:
        """Number of cached images (unreadable ones are not counted)."""
        return self._offsets[-1]

    def row(self, row: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(mean, logvar) of shape (2, C, h, w), label and global dataset index of cached row ``row``."""
        if not 0 <= row < len(self):
            raise IndexError(f"latent cache row {row} out of range [0, {len(self)})")
        shard = bisect.bisect_right(self._offsets, row) - 1
        local = row - self._offsets[shard]
        handle = self._handle(shard)
        mean = handle.get_slice("mean")[local : local + 1][0]
        logvar = handle.get_slice("logvar")[local : local + 1][0]
        label = int(handle.get_slice("label")[local : local + 1][0])
        index = int(handle.get_slice("index")[local : local + 1][0])
        return mean, logvar, label, index

    def _handle(self, shard: int) -> Any:
        # Opened lazily so that each DataLoader worker opens its own memory map.
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self._paths[shard]), framework="pt")
        return self._handles[shard]

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open file handles (DataLoader workers reopen them)."""
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


SHARD_FILE = re.compile(r"shard-\d{9}-\d{9}\.safetensors")
"""The only file names a manifest may list: what extraction writes (``shard_stem`` + ``.safetensors``)."""


def shard_file(cache_dir: Path, record: Any) -> Path:
    """The shard file of a manifest entry, inside ``cache_dir``; a name that is not a shard's (``../x``,
    an absolute path, a NUL byte) is refused, never followed: the manifest is data, not a path to trust."""
    name = record.get("file") if isinstance(record, dict) else None
    if not isinstance(name, str) or not SHARD_FILE.fullmatch(name):
        raise CacheCorruptError(
            f"{cache_dir / 'manifest.json'} lists a shard file {name!r}; shard files are named like "
            "shard-000000000-000001024.safetensors, inside the cache folder"
        )
    return cache_dir / name


def _check_shard_file(path: Path, record: dict[str, Any], verify: bool) -> None:
    if not path.is_file():
        raise CacheCorruptError(
            f"shard {path} listed in the manifest is missing; re-run `dit-repro extract` to rebuild it"
        )
    size = path.stat().st_size
    if size < record["bytes"]:
        raise CacheCorruptError(
            f"shard {path} is truncated: {size} bytes, the manifest records {record['bytes']}; delete it and its "
            ".json record, then re-run `dit-repro extract`"
        )
    if size != record["bytes"]:
        raise CacheCorruptError(f"shard {path} has {size} bytes, the manifest records {record['bytes']}")
    if verify:
        digest = sha256_file(path)
        if digest != record["sha256"]:
            raise CacheCorruptError(
                f"shard {path} fails its sha256 check (file {digest[:16]}..., manifest {record['sha256'][:16]}...): "
                "it was modified or corrupted; delete it and its .json record, then re-run `dit-repro extract`"
            )
    try:
        with safe_open(str(path), framework="pt") as handle:
            rows = handle.get_slice("index").get_shape()[0]
    except (SafetensorError, OSError, KeyError) as exc:
        raise CacheCorruptError(f"shard {path} cannot be read as a cache shard: {exc}") from exc
    if rows != record["count"]:
        raise CacheCorruptError(f"shard {path} holds {rows} rows, the manifest records {record['count']}")


class LatentDataset(Dataset):
    """Fresh latents drawn from a cache: a random orientation and a new posterior sample per access.

    Items are dicts: ``x`` the scaled latent (C, h, w), ``y`` label, ``flip``, ``index`` (the
    image's global dataset index, which keys the draws). Call :meth:`set_epoch` before each
    epoch.
    """

    def __init__(self, cache: LatentCache, seed: int) -> None:
        self.cache = cache
        """The verified cache."""
        self.seed = seed
        """The run's global seed (never offset by rank)."""
        self.epoch = 0
        """Epoch whose draws are served."""

    def set_epoch(self, epoch: int) -> None:
        """Serve the draws of ``epoch`` from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of cached images."""
        return len(self.cache)

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        """A latent of cached image ``row`` with this epoch's flip and noise."""
        mean, logvar, label, index = self.cache.row(row)
        # Keyed by the dataset index, not the row, so that skipped images do not shift the draws.
        draws = draw_item(self.seed, self.epoch, index, self.cache.latent_shape)
        orientation = int(draws.flip)
        latent = scaled_posterior_sample(
            mean[orientation], logvar[orientation], draws.eps, self.cache.scale_factor
        )
        return {
            "x": latent,
            "y": torch.tensor(label, dtype=torch.long),
            "flip": torch.tensor(draws.flip),
            "index": torch.tensor(index, dtype=torch.long),
        }

"""The latent cache's on-disk layout, its manifest, and the checks that refuse a mismatched cache.

Layout of a cache folder::

    manifest.json                           what the cache was built from, every shard's sha256
    shard-000000000-000001024.safetensors   moments of images [0, 1024)
    shard-000000000-000001024.json          that shard's record (size, sha256)

Shards are named by the global index range they cover, so any number of processes can write
into one folder without collisions, and a resumed run (with any world size) finds the same
names. A shard tensor file holds ``mean`` and ``logvar`` of shape (n, 2, C, h, w) (orientation
0 = as loaded, 1 = flipped left-right), ``label`` (n,) and ``index`` (n,), the global dataset
index of each row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dit_repro.config import ConfigError

MANIFEST_NAME = "manifest.json"
"""File name of the manifest inside a cache folder."""
FORMAT_NAME = "dit-repro-latent-cache"
"""``format`` field of every manifest."""
FORMAT_VERSION = 1
"""Bumped whenever the layout changes; a cache of another version is refused."""


class CacheError(ConfigError):
    """A folder that is not a usable latent cache (missing, unfinished, not empty)."""


class CacheMismatchError(CacheError):
    """A cache built from another configuration than the one asked for."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields
        """Names of the fields that differ."""


class CacheCorruptError(CacheError):
    """A cache whose files do not match its manifest (hash, size, or unreadable content)."""


@dataclass(frozen=True)
class CacheSpec:
    """Everything a cache's content depends on; equal specs give identical shards."""

    vae: dict[str, Any]
    """VAE fingerprint (``config`` and ``weights_sha256`` identify it)."""
    scale_factor: float
    """Latent scale factor applied when a sample is drawn."""
    image_size: int
    """Side of the images fed to the VAE."""
    crop: str
    """How images were brought to ``image_size`` (e.g. ``adm-center-crop``)."""
    latent_shape: tuple[int, int, int]
    """(channels, side, side) of one latent."""
    dataset: dict[str, Any]
    """Dataset fingerprint (``sha256`` identifies it; for folders it also lists the sorted files served and,
    beside them, the ``unreadable`` ones the scan left out)."""
    shard_size: int
    """Images per shard (fixes the shard names, so a resume must use the same value)."""
    dtype: str = "float32"
    """Storage dtype of the moments."""

    def to_json(self) -> dict[str, Any]:
        """The spec as manifest fields."""
        value = asdict(self)
        value["latent_shape"] = list(self.latent_shape)
        return value

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> CacheSpec:
        """The spec recorded in a manifest; a missing or mistyped field is a :class:`CacheCorruptError` naming it
        (values are taken as written, never coerced: 0.5 is not an image size)."""
        problems = [
            f"{name} {manifest.get(name, '(missing)')!r} is not {wanted}"
            for name, wanted, valid in _SPEC_FIELDS
            if name not in manifest or not valid(manifest[name])
        ]
        if problems:
            raise CacheCorruptError(f"the cache manifest's spec is unusable: {'; '.join(problems)}; re-run `dit-repro extract`")
        return cls(
            vae=manifest["vae"],
            scale_factor=manifest["scale_factor"],
            image_size=manifest["image_size"],
            crop=manifest["crop"],
            latent_shape=tuple(manifest["latent_shape"]),
            dataset=manifest["dataset"],
            shard_size=manifest["shard_size"],
            dtype=manifest["dtype"],
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


_SPEC_FIELDS: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("vae", "an object", lambda v: isinstance(v, dict)),
    ("scale_factor", "a positive finite number", _positive_finite),
    ("image_size", "a positive integer", _positive_int),
    ("crop", "a string", lambda v: isinstance(v, str)),
    ("latent_shape", "a list of 3 positive integers", lambda v: isinstance(v, list) and len(v) == 3 and all(map(_positive_int, v))),
    ("dataset", "an object", lambda v: isinstance(v, dict)),
    ("shard_size", "a positive integer", _positive_int),
    ("dtype", "a string", lambda v: isinstance(v, str)),
)
"""The spec fields of a manifest, what each must be, and the check."""


def shard_stem(start: int, end: int) -> str:
    """File name stem of the shard covering global indices [start, end)."""
    return f"shard-{start:09d}-{end:09d}"


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges that tile ``num_items`` images in shards of ``shard_size``."""
    return [(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """Parse ``cache_dir/manifest.json`` and check its format and version."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CacheError(
            f"{cache_dir} holds no {MANIFEST_NAME}: it is not a latent cache made by `dit-repro extract`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheCorruptError(f"{path} is not valid JSON ({exc}); re-run `dit-repro extract`") from exc
    if not isinstance(manifest, dict):
        raise CacheCorruptError(f"{path} holds a {type(manifest).__name__}, not a manifest object; re-run `dit-repro extract`")
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise CacheCorruptError(
            f"{path} has format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"this version reads {FORMAT_NAME!r} version {FORMAT_VERSION}: rebuild the cache with `dit-repro extract`"
        )
    dataset = manifest.get("dataset")
    for name, entries in (("skipped", manifest.get("skipped", [])),
                          ("dataset.unreadable", dataset.get("unreadable", []) if isinstance(dataset, dict) else [])):
        if not _is_unreadable_list(entries):
            raise CacheCorruptError(
                f"{path}: {name} is not a list of {{file, reason}} strings; re-run `dit-repro extract` into a new folder"
            )
    return manifest


def _is_unreadable_list(entries: Any) -> bool:
    """Whether ``entries`` is a list of ``{"file": str, "reason": str}``, as the scan records unreadable images."""
    return isinstance(entries, list) and all(
        isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("reason"), str)
        for entry in entries
    )


def manifest_header(spec: CacheSpec) -> dict[str, Any]:
    """The manifest of a cache that has a spec and no shards yet."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "complete": False,
        **spec.to_json(),
        "num_items": spec.dataset["num_items"],
        "num_classes": spec.dataset["num_classes"],
        "shards": [],
        # The images the scan left out, known before any shard is written.
        "skipped": list(spec.dataset.get("unreadable", [])),
        "num_latents": 0,
    }


def _describe_vae(fingerprint: dict[str, Any]) -> str:
    return f"{fingerprint.get('kind')} {fingerprint.get('spec')!r} (weights sha256 {str(fingerprint.get('weights_sha256'))[:12]})"


def _describe_dataset(fingerprint: dict[str, Any]) -> str:
    return (
        f"{fingerprint.get('kind')} with {fingerprint.get('num_items')} images "
        f"(sha256 {str(fingerprint.get('sha256'))[:12]})"
    )


def spec_differences(recorded: CacheSpec, expected: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, explanation) for every field of ``expected`` (a subset of the spec's fields) that differs.

    The VAE is compared by configuration and weight hash, the dataset by its hash; paths do
    not matter, so a cache or weights folder can move.
    """
    differences: list[tuple[str, str]] = []
    for name, want in expected.items():
        have = getattr(recorded, name)
        if name == "vae":
            for part in ("config", "weights_sha256"):
                if have.get(part) != want.get(part):
                    differences.append(
                        (
                            f"vae.{part}",
                            f"cache has {_describe_vae(have)}, this run has {_describe_vae(want)}",
                        )
                    )
        elif name == "dataset":
            if have.get("sha256") != want.get("sha256"):
                differences.append(
                    (
                        "dataset",
                        f"cache has {_describe_dataset(have)}, this run has {_describe_dataset(want)}",
                    )
                )
        elif name == "latent_shape":
            if tuple(have) != tuple(want):
                differences.append((name, f"cache has {list(have)}, this run has {list(want)}"))
        elif have != want:
            differences.append((name, f"cache has {have!r}, this run has {want!r}"))
    return differences


def check_compatible(cache_dir: Path, recorded: CacheSpec, expected: dict[str, Any], remedy: str) -> None:
    """Raise :class:`CacheMismatchError` naming each field of ``expected`` the cache does not match."""
    differences = spec_differences(recorded, expected)
    if differences:
        lines = "; ".join(f"{name}: {why}" for name, why in differences)
        raise CacheMismatchError(
            f"latent cache {cache_dir} was built with another configuration: {lines}. {remedy}",
            [name for name, _ in differences],
        )

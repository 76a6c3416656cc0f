"""Writing a latent cache: posterior moments of both orientations of every image, in resumable shards.

Work is split by shard: shard ``k`` (global images ``[k*shard_size, (k+1)*shard_size)``)
belongs to rank ``k % world_size``. A shard file and then its record are each written
atomically, and a shard counts as done only when its record exists and the file has the
recorded size, so a run killed at any point resumes without duplicates or gaps, with any
world size. Whichever process finishes last (it sees every record) writes the complete manifest.

Before any work the output folder is checked (:func:`check_cache_folder`: a folder that can be
written, new, empty or a cache of the same configuration) and the images are scanned once for
unreadable files (:func:`dit_repro.data.scan.check_images`), which are left out of the dataset,
so that shard ``k`` always holds the same images, and listed in the manifest (``skipped``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dit_repro.atomic import TMP_PREFIX, atomic_write, writable_target, write_json_atomic
from dit_repro.config import ConfigError
from dit_repro.data.imagesource import ImageSource, UnreadableImageError
from dit_repro.data.manifest import (
    MANIFEST_NAME,
    CacheError,
    CacheSpec,
    check_compatible,
    manifest_header,
    read_manifest,
    shard_ranges,
    shard_stem,
)
from dit_repro.data.scan import check_images, recorded_unreadable
from dit_repro.data.vae import VAEHandle


@dataclass
class ExtractionReport:
    """What one extraction process did."""

    cache_dir: str
    """The cache folder."""
    rank: int
    """This process's rank."""
    world_size: int
    """Number of extraction processes."""
    shards_assigned: int
    """Shards that belong to this rank."""
    shards_written: int
    """Shards this run encoded and wrote."""
    shards_already_done: int
    """Shards of this rank found complete from an earlier run (resume)."""
    images_encoded: int
    """Images encoded by this run (each in both orientations)."""
    images_skipped: int
    """Unreadable images of the dataset, left out (listed in the manifest)."""
    seconds: float
    """Wall time of the encoding loop."""
    complete: bool
    """Whether every shard of the cache now exists and the manifest is final."""

    @property
    def images_per_second(self) -> float:
        """Throughput of this run (images, both orientations counted once)."""
        return self.images_encoded / self.seconds if self.seconds > 0 else 0.0


def cache_spec(images: ImageSource, vae: VAEHandle, shard_size: int) -> CacheSpec:
    """The spec of the cache that ``images`` encoded by ``vae`` would give."""
    return CacheSpec(
        vae=vae.fingerprint,
        scale_factor=vae.scale_factor,
        image_size=images.image_size,
        crop=images.crop,
        latent_shape=vae.latent_shape(images.image_size),
        dataset=images.fingerprint(),
        shard_size=shard_size,
    )


def extract_latent_cache(
    images: ImageSource,
    vae: VAEHandle,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    shard_size: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    max_shards: int | None = None,
    progress: bool = True,
    strict: bool = False,
) -> ExtractionReport:
    """Encode this rank's missing shards of ``images`` into ``out_dir``; finish the manifest if all exist.

    ``max_shards`` stops after that many new shards (for jobs with a time limit; run again to
    continue). Unreadable images are found by one scan before any work (reused from the
    manifest when a partial cache of the same files is resumed), left out and listed, with the
    reason, in the manifest; ``strict`` refuses them instead, before anything is written. The
    scan runs ``max(1, num_workers)`` threads.
    """
    _check_arguments(images, vae, batch_size, shard_size, rank, world_size, max_shards)
    out = Path(out_dir)
    # Everything but the dataset can be compared before the scan, the expensive part of the checks.
    partial = cache_spec(images, vae, shard_size).to_json()
    partial.pop("dataset")
    recorded = check_cache_folder(out, partial)
    known = None if recorded is None else recorded_unreadable(recorded["dataset"], images.fingerprint())
    unreadable = check_images(
        images, strict=strict, workers=max(1, num_workers), progress=progress, known=known
    )
    spec = cache_spec(images, vae, shard_size)
    _open_for_writing(out, spec)
    ranges = shard_ranges(len(images), shard_size)
    mine = ranges[rank::world_size]
    pending = [r for r in mine if not _shard_done(out, r)]
    done_before = len(mine) - len(pending)
    if max_shards is not None:
        pending = pending[:max_shards]
    for start, end in pending:
        _remove_stale_temporaries(out, shard_stem(start, end))

    encoded = 0
    started = time.perf_counter()
    with tqdm(
        total=sum(end - start for start, end in pending),
        unit="img",
        desc=f"extract rank {rank}/{world_size}",
        disable=not progress,
    ) as bar:
        for start, end in pending:
            encoded += _write_shard(out, images, vae, start, end, batch_size, num_workers, bar)
    seconds = time.perf_counter() - started
    complete = finalize_if_complete(out, spec, ranges)
    return ExtractionReport(
        cache_dir=str(out),
        rank=rank,
        world_size=world_size,
        shards_assigned=len(mine),
        shards_written=len(pending),
        shards_already_done=done_before,
        images_encoded=encoded,
        images_skipped=len(unreadable),
        seconds=seconds,
        complete=complete,
    )


def finalize_if_complete(out: Path, spec: CacheSpec, ranges: list[tuple[int, int]]) -> bool:
    """Write the final manifest when every shard's record exists; return whether it did."""
    records = []
    for start, end in ranges:
        if not _shard_done(out, (start, end)):
            return False
        records.append(_read_record(out, shard_stem(start, end)))
    manifest = manifest_header(spec)
    manifest["complete"] = True
    manifest["shards"] = [{key: value for key, value in r.items() if key != "skipped"} for r in records]
    # Shard records list no skipped images since the scan runs first; caches resumed from older
    # versions may still have some.
    manifest["skipped"] = manifest["skipped"] + [item for r in records for item in r["skipped"]]
    manifest["num_latents"] = sum(r["count"] for r in records)
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return True


def _check_arguments(
    images: ImageSource,
    vae: VAEHandle,
    batch_size: int,
    shard_size: int,
    rank: int,
    world_size: int,
    max_shards: int | None,
) -> None:
    if batch_size < 1 or shard_size < 1:
        raise CacheError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise CacheError(f"--rank must be in [0, --world-size) and --world-size >= 1; got --rank {rank}, --world-size {world_size}")
    if max_shards is not None and max_shards < 1:
        raise CacheError(f"max_shards must be >= 1 (or None for all), got {max_shards}")
    if images.channels != vae.model.config.in_channels:
        raise CacheError(
            f"the VAE takes {vae.model.config.in_channels}-channel images, the dataset gives {images.channels}"
        )


def check_cache_folder(out: str | Path, expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Check, writing nothing, that ``out`` can receive a cache; return its manifest if it holds one.

    ``out`` must be a new folder that can be created, an empty folder, or a cache (complete or
    not) whose spec matches ``expected`` (a subset of :class:`CacheSpec` fields, as
    :func:`~dit_repro.data.manifest.check_compatible` takes); the folder (or the nearest existing
    one above it) must be writable. Raises :class:`CacheError` naming ``--out`` and what would be right.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {out} is a file, not a folder; name a new or empty folder, or a cache to resume")
    try:
        writable_target(out, "--out", folder=True)
    except ConfigError as exc:
        raise CacheError(str(exc)) from None
    if not out.is_dir():
        return None
    if (out / MANIFEST_NAME).exists():
        manifest = read_manifest(out)
        if expected:
            check_compatible(
                out,
                CacheSpec.from_manifest(manifest),
                expected,
                remedy=f"Extract into another --out, or delete {out} to rebuild it with this configuration.",
            )
        return manifest
    # Temporaries of a concurrent rank that is writing the header are not content.
    others = sorted(p.name for p in out.iterdir() if not p.name.startswith(TMP_PREFIX))
    if others:
        raise CacheError(
            f"--out {out} is not empty ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}) and holds no "
            f"{MANIFEST_NAME}, so it is not a cache to resume; extract into an empty or new folder"
        )
    return None


def _open_for_writing(out: Path, spec: CacheSpec) -> None:
    """Create the folder and the header manifest, or check that an existing cache has the same spec."""
    if check_cache_folder(out, spec.to_json()) is not None:
        return
    out.mkdir(parents=True, exist_ok=True)
    # Every rank writes the same header (no timestamps, no rank), so concurrent writes agree.
    write_json_atomic(out / MANIFEST_NAME, manifest_header(spec))


def _read_record(out: Path, stem: str) -> dict[str, Any]:
    return json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))


def _shard_done(out: Path, shard: tuple[int, int]) -> bool:
    stem = shard_stem(*shard)
    record_path, tensor_path = out / f"{stem}.json", out / f"{stem}.safetensors"
    if not (record_path.is_file() and tensor_path.is_file()):
        return False
    try:
        record = _read_record(out, stem)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    # The full sha256 is checked when the cache is opened for training; the size check is cheap.
    return record.get("bytes") == tensor_path.stat().st_size


def _remove_stale_temporaries(out: Path, stem: str) -> None:
    # Only this rank writes this shard, so any temporary of it is left over from a killed run.
    for path in out.glob(f"{TMP_PREFIX}*-{stem}.*"):
        path.unlink(missing_ok=True)


class _ShardImages(Dataset):
    """Images [start, end) of a source as (index, image, None), or (index, None, reason) if unreadable."""

    def __init__(self, images: ImageSource, start: int, end: int) -> None:
        self.images, self.start, self.end = images, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, offset: int) -> tuple[int, torch.Tensor | None, dict[str, Any] | None]:
        index = self.start + offset
        try:
            return index, self.images.load(index), None
        except UnreadableImageError as exc:
            # A plain string, not the exception, crosses the worker boundary (DataLoader would wrap
            # the exception in a traceback).
            return index, None, str(exc)


def _as_list(items: list[Any]) -> list[Any]:
    return items


def _write_shard(
    out: Path,
    images: ImageSource,
    vae: VAEHandle,
    start: int,
    end: int,
    batch_size: int,
    num_workers: int,
    bar: tqdm,
) -> int:
    """Encode images [start, end) in both orientations, write the shard and its record; return the count."""
    loader = DataLoader(
        _ShardImages(images, start, end), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
    )
    means, logvars, indices = [], [], []
    for batch in loader:
        failed = [reason for _, image, reason in batch if image is None]
        if failed:
            # The scan read this file before the work started: it changed since. Stop with nothing of
            # this shard written; a re-run resumes here once the file is repaired.
            raise CacheError(f"{failed[0]}; the scan before extraction read this file, so it changed since: repair "
                             "it and run the same command again to resume")
        ok = [(index, image) for index, image, _ in batch]
        if ok:
            x = torch.stack([image for _, image in ok])
            mean, logvar = vae.encode_moments(torch.cat([x, x.flip(-1)]))
            n = len(ok)
            # (2n, C, h, w) -> (n, 2, C, h, w): orientation 0 as loaded, 1 flipped.
            means.append(mean.cpu().unflatten(0, (2, n)).transpose(0, 1).contiguous())
            logvars.append(logvar.cpu().unflatten(0, (2, n)).transpose(0, 1).contiguous())
            indices += [index for index, _ in ok]
        bar.update(len(batch))
    shape = (0, 2, *vae.latent_shape(images.image_size))
    tensors = {
        "mean": torch.cat(means) if means else torch.zeros(shape),
        "logvar": torch.cat(logvars) if logvars else torch.zeros(shape),
        "label": torch.tensor([images.label(i) for i in indices], dtype=torch.long),
        "index": torch.tensor(indices, dtype=torch.long),
    }
    stem = shard_stem(start, end)
    # No safetensors metadata: it is serialised from a hash map in random key order, which would
    # make identical shards differ byte for byte (and in sha256) between runs.
    data = save(tensors)
    tensor_path = out / f"{stem}.safetensors"
    atomic_write(tensor_path, lambda tmp: tmp.write_bytes(data))
    record = {
        "file": tensor_path.name,
        "start": start,
        "end": end,
        "count": len(indices),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        # Kept for the record format: the scan leaves unreadable images out before any shard is encoded.
        "skipped": [],
    }
    write_json_atomic(out / f"{stem}.json", record)
    return len(indices)

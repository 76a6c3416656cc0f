"""Image sets and their feature statistics (mu, sigma), through torch-fidelity's extractors.

Images come from a folder of PNG/JPEG files or from an ``.npz`` in the ADM evaluator's layout
(``arr_0``: uint8 NHWC, 1 or 3 channels). Statistics are computed by torch-fidelity
(``create_feature_extractor``, ``get_featuresdict_from_dataset``, ``fid_features_to_statistics``)
in float64, or loaded from an ``.npz`` holding ``mu`` and ``sigma``: either an ADM reference
batch (Inception pool3 statistics, no extractor recorded) or one written by :func:`save_stats`,
which also records the extractor and the number of images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.datasets import ImagesPathDataset
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from dit_repro.atomic import write_bytes_atomic
from dit_repro.fid.extractors import (
    EXTRACTORS,
    ExtractorSpec,
    create_inception_extractor,
    register_extractors,
    resolve_inception_weights,
)
from dit_repro.hashing import sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Image files read from a folder (JPEG is lossy and shifts FID; samples are written as PNG)."""

MIN_IMAGES = 2
"""Fewest images whose features have a covariance (np.cov divides by N - 1)."""

LOADER_WORKERS = 4
"""Loader processes torch-fidelity starts when asked for any (it uses min(4, 2 * cores))."""

EXTRACTOR_OF_UNLABELLED_STATS = EXTRACTORS["inception"].registry_name
"""ADM reference batches carry no extractor name: their mu/sigma are Inception pool3 statistics."""


class ImageSetError(ValueError):
    """An image folder or ``.npz`` that cannot be read as an image set, or has too few images."""


class StatsError(ValueError):
    """Statistics that do not fit the chosen extractor, or an ``.npz`` without usable content."""


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of one image set's features under one extractor."""

    mu: np.ndarray
    """Feature mean, float64 (dim,)."""
    sigma: np.ndarray
    """Feature covariance (unbiased, as ``np.cov``), float64 (dim, dim)."""
    num_samples: int | None
    """Number of images the statistics come from; None when a file does not record it."""
    extractor: str
    """torch-fidelity registry name of the feature extractor."""
    source_sha256: str
    """SHA-256 of the images the statistics describe (see :func:`image_set_sha256`), or of the ADM file."""

    def fingerprint(self) -> str:
        """SHA-256 of the extractor name and the source: identifies the reference whatever device computed it.

        Hashing the input rather than mu and sigma keeps the identity when GPU kernels change the
        statistics in their last bits from one run to the next.
        """
        return hashlib.sha256(f"{self.extractor}:{self.source_sha256}".encode()).hexdigest()


class ImageArrayDataset(Dataset):
    """uint8 images held as an NHWC array, served as torch-fidelity expects: uint8 (3, H, W) tensors."""

    def __init__(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ImageSetError(
                f"image arrays must be uint8 NHWC with 1 or 3 channels (the ADM layout), "
                f"got {images.dtype} {images.shape}"
            )
        self.images = images
        """The images, (N, H, W, C) uint8."""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1)  # (C, H, W)
        # Grey becomes RGB by repetition, as PIL's convert("RGB") does for folder images.
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def open_image_set(path: str | os.PathLike[str], num: int | None = None) -> Dataset:
    """The images at ``path`` (a folder of image files, or an ``.npz`` with ``arr_0``) as a Dataset.

    Folder files are taken in sorted name order, so ``num`` (keep the first ``num`` images)
    selects the lowest sample indices of a folder written by ``dit-repro sample``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            str(p)
            for p in path.iterdir()
            # Names starting with "." are temporary files of atomic writes still in progress.
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise ImageSetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        _check_count(len(files), num, path)
        return ImagesPathDataset(files[:num] if num is not None else files)
    if path.suffix == ".npz" and path.is_file():
        with npz_archive(path, ImageSetError) as archive:
            if "arr_0" not in archive:
                raise ImageSetError(f"{path} has no arr_0 image array (keys: {sorted(archive.files)})")
            images = npz_member(archive, "arr_0", path, ImageSetError)
        if images.ndim == 0:
            raise ImageSetError(f"{path}: arr_0 is a single number, not images (expected uint8 N x H x W x C)")
        _check_count(len(images), num, path)
        return ImageArrayDataset(images[:num] if num is not None else images)
    raise ImageSetError(f"{path} is neither a folder of images nor an .npz file with arr_0")


def _check_count(available: int, num: int | None, path: Path) -> None:
    if num is not None and not 0 < num <= available:
        raise ImageSetError(f"asked for {num} images but {path} holds {available}")
    _check_enough_images(num if num is not None else available, str(path))


def _check_enough_images(count: int, source: str) -> None:
    """FID needs a covariance, and a covariance needs at least two images: refuse fewer by their count."""
    if count < MIN_IMAGES:
        raise ImageSetError(
            f"{source} gives {count} image(s); feature statistics need at least {MIN_IMAGES} "
            f"(the covariance of fewer is undefined): give a set of {MIN_IMAGES} or more"
        )


@contextlib.contextmanager
def npz_archive(path: Path, error: type[ValueError]) -> Iterator[np.lib.npyio.NpzFile]:
    """``np.load`` of an ``.npz`` without unpickling anything, with each failure said in words that fit it.

    numpy reports a file that is not a zip archive as "pickled data" (it falls back to unpickling,
    which ``allow_pickle=False`` refuses); the message here says what the file is not instead.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise error(
            f"{path} is not an .npz archive (a zip of .npy arrays, as np.savez writes); "
            f"it is empty, truncated or another kind of file ({type(exc).__name__})"
        ) from None
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise error(f"{path} is a single .npy array, not an .npz archive; save it with np.savez(path, arr_0=...)")
    with archive:
        yield archive


def npz_member(archive: np.lib.npyio.NpzFile, key: str, path: Path, error: type[ValueError]) -> np.ndarray:
    """One array of an open archive; object arrays (which would be unpickled) and corrupt members are refused."""
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise error(
                f"{path}: array {key} holds Python objects, which are not read (reading them would unpickle "
                "them); save plain numeric arrays"
            ) from None
        raise error(f"{path}: array {key} is truncated or corrupt ({type(exc).__name__})") from None
    except (EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise error(f"{path}: array {key} is truncated or corrupt ({type(exc).__name__})") from None


def image_set_sha256(images: Dataset) -> str:
    """SHA-256 identifying an image set: the array's shape and bytes, or each file's name and SHA-256 in order."""
    digest = hashlib.sha256()
    if isinstance(images, ImageArrayDataset):
        digest.update(f"array{images.images.shape}".encode())
        digest.update(np.ascontiguousarray(images.images).tobytes())
    elif isinstance(images, ImagesPathDataset):
        for file in images.files:
            digest.update(f"{Path(file).name}:{sha256_file(file)};".encode())
    else:
        raise ImageSetError(
            f"cannot identify an image set of type {type(images).__name__}; open it with open_image_set"
        )
    return digest.hexdigest()


def compute_stats(
    images: Dataset,
    spec: ExtractorSpec,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    inception_weights: str | None = None,
    allow_download: bool = False,
    verbose: bool = False,
) -> FeatureStats:
    """Features of every image through torch-fidelity, then their mean and covariance in float64.

    ``device``: ``cpu`` or ``cuda`` (torch-fidelity uses the current CUDA device).
    ``inception_weights``/``allow_download`` apply to the Inception extractor only
    (see :func:`~dit_repro.fid.extractors.resolve_inception_weights`).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    _check_enough_images(len(images), "the image set")
    register_extractors()
    cuda = device == "cuda"
    if spec.key == "inception":
        # Checked against the pinned hash before anything unpickles it, then read weights-only.
        weights = resolve_inception_weights(inception_weights, allow_download=allow_download)
        extractor = create_inception_extractor(weights, cuda=cuda, verbose=verbose)
    else:
        extractor = create_feature_extractor(spec.registry_name, [spec.layer], cuda=cuda, verbose=verbose)
    # torch-fidelity's only loader choice is 0 worker processes or min(4, 2 * cores). Workers pay
    # for decoding files, not for in-memory arrays, and would oversubscribe a machine of < 4 cores.
    no_workers = isinstance(images, ImageArrayDataset) or (os.cpu_count() or 1) < LOADER_WORKERS
    features = get_featuresdict_from_dataset(images, extractor, batch_size, cuda, no_workers, verbose)[
        spec.layer
    ]
    statistics = fid_features_to_statistics(features.to(torch.float64))
    return FeatureStats(
        statistics["mu"], statistics["sigma"], len(images), spec.registry_name, image_set_sha256(images)
    )


def save_stats(path: str | os.PathLike[str], stats: FeatureStats) -> None:
    """Write ``mu``, ``sigma``, ``num_samples`` and ``extractor`` to an ``.npz`` atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise StatsError(f"statistics are written as .npz; got {path}")
    num = -1 if stats.num_samples is None else stats.num_samples
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mu=stats.mu,
        sigma=stats.sigma,
        num_samples=np.int64(num),
        extractor=np.str_(stats.extractor),
        source_sha256=np.str_(stats.source_sha256),
    )
    write_bytes_atomic(path, buffer.getvalue())


def load_stats(path: str | os.PathLike[str], spec: ExtractorSpec) -> FeatureStats | None:
    """Statistics stored in an ``.npz`` for ``spec``'s extractor, or None if the file holds none for it.

    A file without an ``extractor`` entry is taken to be an ADM reference batch, whose ``mu`` and
    ``sigma`` are Inception pool3 statistics. Statistics of another extractor return None (the
    caller may compute them from the file's ``arr_0`` images); statistics that claim to be this
    extractor's but have the wrong dimension raise :class:`StatsError`.
    """
    path = Path(path)
    with npz_archive(path, StatsError) as archive:
        if "mu" not in archive or "sigma" not in archive:
            return None
        extractor = _scalar(archive, "extractor", path, str) if "extractor" in archive else EXTRACTOR_OF_UNLABELLED_STATS
        if extractor != spec.registry_name:
            return None
        mu = _floats(archive, "mu", path)
        sigma = _floats(archive, "sigma", path)
        if "num_samples" in archive:
            num = _scalar(archive, "num_samples", path, int)
            num_samples = None if num < 0 else num
        else:
            num_samples = len(npz_member(archive, "arr_0", path, StatsError)) if "arr_0" in archive else None
        source = _scalar(archive, "source_sha256", path, str) if "source_sha256" in archive else None
    if source is None:  # an ADM reference batch: the file itself identifies it
        source = sha256_file(path)
    if mu.shape != (spec.dim,) or sigma.shape != (spec.dim, spec.dim):
        raise StatsError(
            f"{path} holds statistics of shape mu {mu.shape}, sigma {sigma.shape}; the {spec.key} extractor "
            f"({spec.registry_name}, layer {spec.layer}) gives {spec.dim} features"
        )
    return FeatureStats(mu, sigma, num_samples, extractor, source)


def _scalar(archive: np.lib.npyio.NpzFile, key: str, path: Path, kind: type) -> object:
    """A single str or int entry of a statistics file, or StatsError naming the entry and what it holds."""
    value = npz_member(archive, key, path, StatsError)
    expected = "string" if kind is str else "integer"
    if value.ndim != 0 or (kind is str and value.dtype.kind != "U") or (kind is int and value.dtype.kind not in "iu"):
        raise StatsError(f"{path}: {key} must be a single {expected}, got {value.dtype} of shape {value.shape}")
    return kind(value)


def _floats(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """A numeric entry of a statistics file as float64, or StatsError naming the entry."""
    value = npz_member(archive, key, path, StatsError)
    if value.dtype.kind not in "fiu":
        raise StatsError(f"{path}: {key} must be a numeric array, got {value.dtype}")
    return np.asarray(value, dtype=np.float64)


def reference_stats(
    path: str | os.PathLike[str], spec: ExtractorSpec, **compute_options: object
) -> FeatureStats:
    """Reference statistics for ``spec``: loaded from an ``.npz`` that has them, else computed from its images.

    ``path``: a folder of images, an ``.npz`` with ``mu``/``sigma`` (ADM reference batch or
    :func:`save_stats` output), or an ``.npz`` with ``arr_0`` images. ``compute_options`` go to
    :func:`compute_stats`.
    """
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        loaded = load_stats(path, spec)
        if loaded is not None:
            return loaded
        with npz_archive(path, StatsError) as archive:
            has_images = "arr_0" in archive
        if not has_images:
            raise StatsError(
                f"{path} holds neither {spec.key} statistics ({spec.registry_name}) nor arr_0 images to compute them from"
            )
    return compute_stats(open_image_set(path), spec, **compute_options)

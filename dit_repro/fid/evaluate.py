"""FID of a sample set against reference statistics, as a labelled, comparable result.

FID is biased upward by an amount that shrinks with the number of samples N (Chong & Forsyth,
2020), so two FIDs say something about two models only at the same N, with the same extractor,
against the same reference statistics: :func:`ensure_comparable` refuses anything else.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torch_fidelity.datasets import ImagesPathDataset

from dit_repro.fid.extractors import ExtractorSpec
from dit_repro.fid.frechet import frechet_distance
from dit_repro.fid.layout import image_name, record_path
from dit_repro.fid.stats import MIN_IMAGES, FeatureStats, ImageSetError, compute_stats, open_image_set


class NotComparableError(ValueError):
    """Two FIDs measured under different conditions (sample count, extractor, reference)."""


@dataclass(frozen=True)
class FIDResult:
    """One FID measurement and everything needed to decide what it may be compared with."""

    metric: str
    """``FID`` (InceptionV3) or ``proxy-FID`` (the proxy extractor; not comparable with published FID)."""
    value: float
    """The Fréchet distance between sample and reference feature statistics."""
    num_samples: int
    """Number of generated images the value was computed from (N)."""
    seed: int | None
    """Base seed of the samples (image i used seed + i), from their ``samples.json``; None if unknown."""
    extractor: str
    """torch-fidelity registry name of the feature extractor."""
    reference: str
    """Fingerprint (SHA-256) of the reference statistics."""
    reference_num_samples: int | None
    """Number of reference images, when known."""
    samples: str
    """Path of the sample folder or ``.npz``."""
    sampling: dict[str, Any] | None = field(default=None)
    """The samples' ``samples.json`` (checkpoint hash, sampler, steps, guidance, ...), when present."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FIDResult:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    def describe(self) -> str:
        """One line for people: the label, the value, N and the seed."""
        seed = "unknown seed" if self.seed is None else f"seed {self.seed}"
        note = " (proxy features: not comparable with published FID)" if self.metric != "FID" else ""
        return f"{self.metric} {self.value:.4f} at N={self.num_samples}, {seed}{note}"


def ensure_comparable(a: FIDResult, b: FIDResult) -> None:
    """Raise :class:`NotComparableError` unless ``a`` and ``b`` share N, extractor and reference statistics."""
    problems = []
    if a.num_samples != b.num_samples:
        problems.append(
            f"sample counts differ (N={a.num_samples} vs N={b.num_samples}); FID's bias depends on N, "
            "so measure both at the same N (dit-repro fid --num)"
        )
    if a.extractor != b.extractor:
        problems.append(f"feature extractors differ ({a.extractor} vs {b.extractor})")
    if a.reference != b.reference:
        problems.append(f"reference statistics differ ({a.reference[:12]} vs {b.reference[:12]})")
    if problems:
        raise NotComparableError("these FIDs cannot be compared: " + "; ".join(problems))


def samples_record(samples: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``samples.json`` beside a sample folder (inside it) or ``.npz`` (in its folder), if any.

    What FID reads from it is checked here (``num``, ``seed``, ``settings``, ``checkpoint``), so
    that a damaged record is refused naming the file and the field instead of failing later.
    """
    record = record_path(Path(samples))
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"), parse_constant=refuse_json_constant)
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageSetError(f"{record} cannot be read ({exc})") from None
    except ValueError as exc:  # JSONDecodeError, and NaN/Infinity (not JSON)
        raise ImageSetError(f"{record} is not valid JSON ({exc}); write it again with `dit-repro sample`") from None
    check_samples_record(data, record)
    return data


def refuse_json_constant(name: str) -> None:
    """``json.loads`` hook: NaN and Infinity are Python's extension, not JSON, and no field may hold them."""
    raise ValueError(f"{name} is not a JSON number")


def check_samples_record(record: Any, path: Path) -> None:
    """Refuse a ``samples.json`` whose fields FID uses have the wrong type, naming the field and the file."""
    if not isinstance(record, dict):
        raise ImageSetError(f"{path} must hold a JSON object (the record `dit-repro sample` writes), "
                            f"got {type(record).__name__}")
    for key, minimum in (("num", 0), ("seed", 0)):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ImageSetError(f"{path}: {key} must be an integer >= {minimum}, got {value!r}")
    for key in ("settings", "checkpoint"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise ImageSetError(f"{path}: {key} must be a JSON object, got {type(record[key]).__name__}")


def open_sample_set(
    samples: str | os.PathLike[str], num: int | None = None
) -> tuple[Dataset, dict[str, Any] | None]:
    """The images of a sample set and its ``samples.json`` record (None if it has none).

    A folder with a record is read by index: exactly images 0..N-1 (N = ``num``, else the
    record's count), and a missing index is an error rather than a silently smaller or
    shifted set. Anything else is read by :func:`~dit_repro.fid.stats.open_image_set`.
    """
    path = Path(samples)
    record = samples_record(path)
    if record is None or not path.is_dir():
        return open_image_set(path, num), record
    if num is None and record.get("num") is None:
        raise ImageSetError(f"{record_path(path)} does not say how many samples the folder holds (no num); "
                            "pass --num N or write the folder again with `dit-repro sample`")
    count = record["num"] if num is None else num
    if count < MIN_IMAGES:
        raise ImageSetError(f"{path} gives {count} image(s); feature statistics need at least {MIN_IMAGES} "
                            "(a covariance of fewer is undefined)")
    files = [path / image_name(index) for index in range(count)]
    missing = [index for index, file in enumerate(files) if not file.is_file()]
    if missing:
        raise ImageSetError(
            f"{path} lacks {len(missing)} of sample indices 0..{count - 1} (first missing: {missing[:5]}); "
            "run the same `dit-repro sample` command again to complete it"
        )
    return ImagesPathDataset([str(file) for file in files]), record


def fid_of_samples(
    samples: str | os.PathLike[str],
    reference: FeatureStats,
    spec: ExtractorSpec,
    *,
    num: int | None = None,
    seed: int | None = None,
    **compute_options: Any,
) -> FIDResult:
    """FID of the images at ``samples`` (folder or ``.npz``; the first ``num`` if given) against ``reference``.

    ``seed`` overrides the seed found in the samples' ``samples.json``. ``compute_options`` go to
    :func:`~dit_repro.fid.stats.compute_stats` (device, batch size, Inception weights).
    """
    if reference.extractor != spec.registry_name:
        raise NotComparableError(
            f"reference statistics come from {reference.extractor}, the samples would use {spec.registry_name}"
        )
    images, record = open_sample_set(samples, num)
    stats = compute_stats(images, spec, **compute_options)
    if seed is None and record is not None:
        seed = record.get("seed")
    value = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    return FIDResult(
        metric=spec.metric_label,
        value=value,
        num_samples=len(images),
        seed=seed,
        extractor=spec.registry_name,
        reference=reference.fingerprint(),
        reference_num_samples=reference.num_samples,
        samples=str(samples),
        sampling=record,
    )

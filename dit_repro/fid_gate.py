"""The FID regression gate: a stored baseline of FIDs across sampling seeds, and a check against it.

Method. A baseline holds m >= 3 FIDs of the same model, sampler and sample count N, each from
its own seed (image i of a run with seed s uses seed s + i, so runs must use disjoint seed ranges
to be independent). At fixed N, FID is a smooth function of the feature mean and covariance and
so close to normally distributed across seeds. With the baseline mean ``m_hat`` and sample
standard deviation ``s_hat``, the mean of n new independent FIDs of an unchanged model satisfies

    (new_mean - m_hat) / (s_hat * sqrt(1/n + 1/m))  ~  Student t with m - 1 degrees of freedom,

so the one-sided prediction bound

    threshold = m_hat + t_{1-alpha, m-1} * s_hat * sqrt(1/n + 1/m)

is exceeded by an unchanged model with probability ``alpha`` (the false-failure rate, 1% by
default). Only a worse FID fails; a better one passes with a note. The t quantile (not a normal
one) pays for estimating the spread from only m seeds: with m = 3 and alpha = 1% the bound is
``m_hat + 8.0 s_hat`` for one new run, with m = 5 it is ``m_hat + 4.1 s_hat``. The bound covers
sampling noise only: to gate a retrained model, record the baseline from runs that each come from
their own training seed, so that the spread includes training noise.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import scipy.stats

from dit_repro.atomic import write_json_atomic
from dit_repro.fid.evaluate import FIDResult, NotComparableError, ensure_comparable, refuse_json_constant

BASELINE_FORMAT = "dit-repro-fid-baseline"
"""Value of the ``format`` field that identifies a baseline file."""
BASELINE_VERSION = 1
"""Layout version of baseline files."""
MIN_SEEDS = 3
"""Fewest seeds a baseline may hold: two give a spread estimate with one degree of freedom."""
DEFAULT_FALSE_FAILURE_RATE = 0.01
"""Probability that an unchanged model fails the gate (alpha)."""

SAMPLING_KEYS = (
    "sampler",
    "steps",
    "eta",
    "cfg_scale",
    "cfg_channels",
    "clip_denoised",
    "weights",
    "decoder",
)
"""Sampling settings that must match between baseline and check. Precision, attention backend and
checkpoint may differ: they are what the gate is there to test."""


class BaselineError(ValueError):
    """A baseline that cannot be recorded or read: too few seeds, overlapping seeds, mixed conditions."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of checking new FIDs against a baseline."""

    passed: bool
    """True when the mean of the new FIDs is at most the threshold."""
    metric: str
    """``FID`` or ``proxy-FID``."""
    new_mean: float
    """Mean of the new FIDs."""
    new_count: int
    """Number of new FIDs (n)."""
    baseline_mean: float
    """Mean of the baseline FIDs."""
    baseline_std: float
    """Sample standard deviation of the baseline FIDs."""
    baseline_count: int
    """Number of baseline FIDs (m)."""
    k: float
    """Multiplier of ``baseline_std``: t_{1-alpha, m-1} * sqrt(1/n + 1/m)."""
    threshold: float
    """``baseline_mean + k * baseline_std``."""
    false_failure_rate: float
    """alpha."""
    notes: tuple[str, ...]
    """Remarks for people (better than baseline, different checkpoint, ...)."""

    def summary(self) -> str:
        """Multi-line report, every line labelled with the metric."""
        word = "PASS" if self.passed else "FAIL"
        lines = [
            f"{self.metric} gate {word}: mean of {self.new_count} new run(s) {self.new_mean:.4f} "
            f"{'<=' if self.passed else '>'} threshold {self.threshold:.4f}",
            f"{self.metric} baseline: mean {self.baseline_mean:.4f}, std {self.baseline_std:.4f} over "
            f"{self.baseline_count} seeds; threshold = mean + {self.k:.3f} * std "
            f"(one-sided t prediction bound, false-failure rate {self.false_failure_rate:g})",
        ]
        lines += [f"{self.metric} note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return dataclasses.asdict(self) | {"notes": list(self.notes)}


def tolerance_multiplier(baseline_count: int, new_count: int, false_failure_rate: float) -> float:
    """k = t_{1-alpha, m-1} * sqrt(1/n + 1/m): the threshold is ``mean + k * std`` (see module docstring)."""
    if baseline_count < MIN_SEEDS:
        raise BaselineError(f"a baseline needs at least {MIN_SEEDS} seeds, got {baseline_count}")
    if new_count < 1:
        raise BaselineError(f"need at least one new FID, got {new_count}")
    if not 0.0 < false_failure_rate < 0.5:
        raise BaselineError(f"the false-failure rate must be in (0, 0.5), got {false_failure_rate}")
    quantile = float(scipy.stats.t.ppf(1.0 - false_failure_rate, df=baseline_count - 1))
    return quantile * math.sqrt(1.0 / new_count + 1.0 / baseline_count)


def record_baseline(
    results: list[FIDResult],
    path: str | os.PathLike[str],
    *,
    false_failure_rate: float = DEFAULT_FALSE_FAILURE_RATE,
) -> dict[str, Any]:
    """Write a baseline from FIDs of >= 3 independent seeds measured under the same conditions; return it."""
    if len(results) < MIN_SEEDS:
        raise BaselineError(
            f"a baseline needs FIDs from at least {MIN_SEEDS} seeds to measure their spread; got {len(results)}"
        )
    first = results[0]
    for other in results[1:]:
        try:
            ensure_comparable(first, other)
        except NotComparableError as exc:
            raise BaselineError(f"baseline runs must share their measurement conditions: {exc}") from None
        _check_same_sampling(first, other, "baseline runs")
    _check_independent(results)
    tolerance_multiplier(len(results), 1, false_failure_rate)  # validates the rate
    baseline = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "metric": first.metric,
        "num_samples": first.num_samples,
        "extractor": first.extractor,
        "reference": first.reference,
        "reference_num_samples": first.reference_num_samples,
        "sampling": _sampling_settings(first),
        "false_failure_rate": false_failure_rate,
        "method": "one-sided Student-t prediction bound: threshold = mean + t_{1-alpha,m-1} * std * sqrt(1/n + 1/m)",
        "runs": [
            {"seed": r.seed, "value": r.value, "checkpoint_sha256": _checkpoint_hash(r), "samples": r.samples}
            for r in results
        ],
    }
    values = [r.value for r in results]
    # Derived, for people reading the file; checks recompute them from "runs".
    baseline["summary"] = {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values),
        "threshold_one_run": statistics.fmean(values)
        + tolerance_multiplier(len(values), 1, false_failure_rate) * statistics.stdev(values),
    }
    write_json_atomic(Path(path), baseline)
    return baseline


def check_against_baseline(results: list[FIDResult], baseline: dict[str, Any]) -> Verdict:
    """Compare the mean of new FIDs with a baseline's prediction bound; refuse incomparable measurements."""
    _validate_baseline(baseline)
    reference = _baseline_as_result(baseline)
    for result in results:
        ensure_comparable(reference, result)
        _check_same_sampling(reference, result, "the new run and the baseline")
    _check_independent([_baseline_as_result(baseline, run) for run in baseline["runs"]] + list(results))
    values = [run["value"] for run in baseline["runs"]]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    alpha = baseline["false_failure_rate"]
    k = tolerance_multiplier(len(values), len(results), alpha)
    threshold = mean + k * std
    new_mean = statistics.fmean(r.value for r in results)
    notes = []
    if new_mean < mean - k * std:
        notes.append("better than the baseline beyond its spread: consider recording a new baseline")
    baseline_hashes = {run.get("checkpoint_sha256") for run in baseline["runs"]}
    for result in results:
        digest = _checkpoint_hash(result)
        if digest not in baseline_hashes:
            notes.append(f"seed {result.seed}: checkpoint {str(digest)[:12]} differs from the baseline's")
    return Verdict(
        passed=new_mean <= threshold,
        metric=baseline["metric"],
        new_mean=new_mean,
        new_count=len(results),
        baseline_mean=mean,
        baseline_std=std,
        baseline_count=len(values),
        k=k,
        threshold=threshold,
        false_failure_rate=alpha,
        notes=tuple(notes),
    )


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a baseline file; every problem is a BaselineError naming the file and the field."""
    path = Path(path)
    try:
        baseline = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse_json_constant)
    except FileNotFoundError:
        raise BaselineError(f"--baseline {path} does not exist; record one with dit-repro fid --record") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"--baseline {path} cannot be read ({exc})") from None
    except ValueError as exc:  # JSONDecodeError, and NaN/Infinity (not JSON)
        raise BaselineError(f"--baseline {path} is not valid JSON ({exc})") from None
    try:
        _validate_baseline(baseline)
    except BaselineError as exc:
        raise BaselineError(f"--baseline {path}: {exc}") from None
    return baseline


def _validate_baseline(baseline: Any) -> None:
    """Refuse a baseline whose fields the check reads are missing or of the wrong type."""
    if not isinstance(baseline, dict) or baseline.get("format") != BASELINE_FORMAT or baseline.get("version") != BASELINE_VERSION:
        found = baseline if not isinstance(baseline, dict) else (baseline.get("format"), baseline.get("version"))
        raise BaselineError(
            f"not a FID baseline (found {found!r}; expected format {BASELINE_FORMAT!r} version {BASELINE_VERSION}); "
            "record one with dit-repro fid --record"
        )
    _require(baseline, "metric", str)
    _require(baseline, "extractor", str)
    _require(baseline, "reference", str)
    _require_count(baseline, "num_samples", minimum=1)
    _require_count(baseline, "reference_num_samples", minimum=1, optional=True)
    _require(baseline, "sampling", dict, optional=True)
    rate = _require_number(baseline, "false_failure_rate")
    if not 0.0 < rate < 0.5:
        raise BaselineError(f"false_failure_rate must be in (0, 0.5), got {rate}")
    runs = baseline.get("runs")
    if not isinstance(runs, list) or len(runs) < MIN_SEEDS:
        count = len(runs) if isinstance(runs, list) else 0
        raise BaselineError(f"the baseline holds {count} runs; at least {MIN_SEEDS} are needed")
    for index, run in enumerate(runs):
        where = f"runs[{index}]"
        if not isinstance(run, dict):
            raise BaselineError(f"{where} must be an object with seed, value, checkpoint_sha256 and samples")
        _require_count(run, "seed", minimum=0, where=where)
        _require_number(run, "value", where=where)
        _require(run, "checkpoint_sha256", str, optional=True, where=where)
        _require(run, "samples", str, where=where)


def _require(record: dict[str, Any], key: str, kind: type, *, optional: bool = False, where: str = "") -> Any:
    """``record[key]``, which must be a ``kind`` (or absent/null when ``optional``)."""
    value = record.get(key)
    if (value is None and optional) or isinstance(value, kind):
        return value
    name = f"{where}.{key}" if where else key
    raise BaselineError(f"{name} must be {'null or ' if optional else ''}a JSON {_JSON_TYPES[kind]}, got {value!r}")


def _require_count(record: dict[str, Any], key: str, *, minimum: int, optional: bool = False, where: str = "") -> Any:
    """``record[key]``, which must be an integer >= ``minimum`` (or absent/null when ``optional``)."""
    value = record.get(key)
    if value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        name = f"{where}.{key}" if where else key
        raise BaselineError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _require_number(record: dict[str, Any], key: str, *, where: str = "") -> float:
    """``record[key]``, which must be a finite number."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        name = f"{where}.{key}" if where else key
        raise BaselineError(f"{name} must be a finite number, got {value!r}")
    return float(value)


_JSON_TYPES = {str: "string", dict: "object", list: "array"}
"""JSON names of the Python types a baseline's fields are checked against."""


def _baseline_as_result(baseline: dict[str, Any], run: dict[str, Any] | None = None) -> FIDResult:
    """The baseline's conditions as a result (one run's seed and value if ``run`` is given)."""
    sampling = baseline.get("sampling")  # optional, as reference_num_samples: null or absent in older files
    return FIDResult(
        metric=baseline["metric"],
        value=run["value"] if run else math.nan,
        num_samples=baseline["num_samples"],
        seed=run["seed"] if run else None,
        extractor=baseline["extractor"],
        reference=baseline["reference"],
        reference_num_samples=baseline.get("reference_num_samples"),
        samples=run["samples"] if run else "baseline",
        sampling=None if sampling is None else {"settings": sampling},
    )


def _sampling_settings(result: FIDResult) -> dict[str, Any] | None:
    if result.sampling is None:
        return None
    settings = result.sampling.get("settings", {})
    return {key: settings.get(key) for key in SAMPLING_KEYS}


def _checkpoint_hash(result: FIDResult) -> str | None:
    if result.sampling is None:
        return None
    return result.sampling.get("checkpoint", {}).get("sha256")


def _check_same_sampling(a: FIDResult, b: FIDResult, what: str) -> None:
    settings_a, settings_b = _sampling_settings(a), _sampling_settings(b)
    if settings_a == settings_b:
        return
    if settings_a is None or settings_b is None:
        raise NotComparableError(
            f"{what}: one sample set has no samples.json, so its sampler settings are unknown; "
            "generate samples with dit-repro sample"
        )
    differing = {
        key: (settings_a[key], settings_b[key]) for key in SAMPLING_KEYS if settings_a[key] != settings_b[key]
    }
    raise NotComparableError(f"{what} used different sampling settings: {differing}")


def _check_independent(results: list[FIDResult]) -> None:
    """Every run needs a known seed, and the image seeds [seed, seed + N) of two runs must not overlap."""
    spans = []
    for result in results:
        if result.seed is None:
            raise BaselineError(f"{result.samples}: the seed is unknown (no samples.json); pass --seed")
        spans.append((result.seed, result.seed + result.num_samples, result.samples))
    spans.sort()
    for (start_a, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise BaselineError(
                f"{name_a} (seed {start_a}) and {name_b} (seed {start_b}) share image seeds: image i uses "
                f"seed + i, so runs of N={end_a - start_a} images are independent only if their seeds differ "
                f"by at least N (e.g. seeds 0, {end_a - start_a}, {2 * (end_a - start_a)})"
            )

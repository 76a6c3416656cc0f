"""Fuzzing of the JSON loaders with mutated valid documents (hypothesis).

Every loader of a JSON file that users hand to the CLI is fed a valid document with one to three
mutations: a key or list item dropped, or a value replaced by another type, NaN, infinity, a
negative or huge number, an empty container, or a string with ``../``, an absolute path or a NUL
byte. Each mutation must be either accepted, and then survive a JSON round trip unchanged (so
nothing was coerced or lost silently), or refused with the loader's own error type and a message.
Any other exception (KeyError, TypeError, AttributeError, ...) is a bug: it ends in a traceback.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dit_repro.bench.schema import ResultsError, load_results
from dit_repro.config import ConfigError
from dit_repro.data.manifest import MANIFEST_NAME, CacheError, CacheSpec, manifest_header, read_manifest
from dit_repro.fid.evaluate import FIDResult, NotComparableError, samples_record
from dit_repro.fid.layout import SAMPLES_RECORD
from dit_repro.fid.stats import ImageSetError
from dit_repro.fid_gate import BaselineError, check_against_baseline, load_baseline
from dit_repro.paper import PaperDataError, load_paper
from dit_repro.sampling import _merge_record
from dit_repro.verify.claims import ClaimsError, parse_claims
from tests.bench_documents import make_job, make_results, noisy_times

EXAMPLES = 40
"""Mutated documents per loader: enough to reach every kind of mutation, bounded for CI's time."""

REPLACEMENTS = (
    None, True, False, 0, -1, -(2**63), 2**64, 1e308, -1e308, 0.5, math.nan, math.inf, -math.inf,
    "", "x", "../../outside", "/etc/passwd", "a\x00b", [], {}, [1, "two", None], {"k": "v"},
)
"""Values a mutation puts in place of a document's value."""

FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Bounded example count; no deadline (the first call of a loader imports and compiles schemas)."""



# ---------------------------------------------------------------------------------------------- mutation


def container_paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """The path of every value inside ``document`` (keys and list indices from the root), root excluded."""
    paths = []
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        paths.append((*prefix, key))
        paths.extend(container_paths(value, (*prefix, key)))
    return paths


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to three mutations: a value dropped or replaced (the root itself, rarely)."""
    result = copy.deepcopy(document)
    if draw(st.integers(0, 30)) == 0:  # the whole document replaced: a list, a number, null ...
        return copy.deepcopy(draw(st.sampled_from(REPLACEMENTS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = container_paths(result)
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        parent = result
        for key in parents:
            parent = parent[key]
        if draw(st.booleans()):
            del parent[last]
        else:
            # A copy: a shared [] or {} would be mutated by later steps (and could come to hold itself).
            parent[last] = copy.deepcopy(draw(st.sampled_from(REPLACEMENTS) | st.text(max_size=8)))
    return result


def write(folder: Path, name: str, document: Any) -> Path:
    """``document`` as a JSON file (NaN and infinity written as Python writes them: they are fuzz input)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(document, allow_nan=True), encoding="utf-8")
    return path


def accepted_or_refused(load: Callable[[], Any], error: type[Exception] | tuple[type[Exception], ...]) -> Any:
    """``load()``'s value, or None when it refused with ``error`` and a message; anything else propagates."""
    try:
        return load()
    except error as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON text: NaN (which is not equal to itself) compares as the token it is written as."""
    return json.dumps(a, sort_keys=True, allow_nan=True) == json.dumps(b, sort_keys=True, allow_nan=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every example's file (hypothesis refuses function-scoped fixtures)."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------- documents


def results_document(device_type: str) -> dict[str, Any]:
    """A valid results file (also a measured baseline's layout) with two rows."""
    rng = np.random.default_rng(0)
    jobs = [make_job(name, times=noisy_times(0.1, 12, rng), device_type=device_type) for name in ("a", "b")]
    return json.loads(json.dumps(make_results(jobs, device_type)))


FID_BASELINE = {
    "format": "dit-repro-fid-baseline", "version": 1, "metric": "proxy-FID", "num_samples": 100,
    "extractor": "dit-repro-proxy-rff64", "reference": "f" * 64, "reference_num_samples": 1000,
    "sampling": {"sampler": "ddim", "steps": 10, "eta": 0.0, "cfg_scale": 1.0, "cfg_channels": "all",
                 "clip_denoised": True, "weights": "ema", "decoder": {"kind": "pixels"}},
    "false_failure_rate": 0.01, "method": "one-sided Student-t prediction bound",
    "runs": [{"seed": 100 * k, "value": 10.0 + k, "checkpoint_sha256": "c" * 64, "samples": f"run{k}"}
             for k in range(3)],
    "summary": {"mean": 11.0, "std": 1.0, "threshold_one_run": 19.0},
}
"""A valid FID baseline as ``dit-repro fid --record`` writes it."""

SAMPLES_JSON = {
    "format": "dit-repro-samples", "version": 1, "num": 4, "seed": 0, "seed_rule": "seed + index",
    "label_rule": "uniform", "num_classes": 10,
    "checkpoint": {"path": "run/last.pt", "sha256": "c" * 64, "step": 10},
    "config": {"model": "DiT-S/2", "image_size": 32},
    "settings": {"sampler": "ddim", "steps": 10, "eta": 0.0, "cfg_scale": 1.0, "cfg_channels": "all",
                 "clip_denoised": True, "weights": "ema", "decoder": {"kind": "pixels"}, "precision": "fp32",
                 "attention": "auto"},
    "image": {"height": 32, "width": 32, "channels": 3}, "attention_resolved": "math",
}
"""A valid ``samples.json`` as ``dit-repro sample`` writes it."""

CACHE_SPEC = CacheSpec(
    vae={"kind": "tiny-random", "spec": "tiny-random", "config": {"latent_channels": 4}, "weights_sha256": "a" * 64},
    scale_factor=0.18215, image_size=32, crop="adm-center-crop", latent_shape=(4, 4, 4),
    dataset={"sha256": "d" * 64, "num_items": 16, "num_classes": 10}, shard_size=8,
)
"""The spec of a small latent cache."""


# ---------------------------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("device_type", ["cpu", "cuda"], ids=["results-cpu", "baseline-gpu"])
def test_results_and_measured_baselines(workdir: Path, device_type: str) -> None:
    valid = results_document(device_type)

    @FUZZ
    @given(mutated(valid))
    def check(document: Any) -> None:
        path = write(workdir / "results", f"{device_type}.json", document)
        loaded = accepted_or_refused(lambda: load_results(path), ResultsError)
        assert loaded is None or same_json(loaded, document)

    check()


def test_fid_baselines(workdir: Path) -> None:
    new = FIDResult(metric="proxy-FID", value=12.0, num_samples=100, seed=1000, extractor="dit-repro-proxy-rff64",
                    reference="f" * 64, reference_num_samples=1000, samples="new",
                    sampling={"settings": FID_BASELINE["sampling"], "checkpoint": {"sha256": "c" * 64}})

    @FUZZ
    @given(mutated(FID_BASELINE))
    def check(document: Any) -> None:
        path = write(workdir / "fid", "baseline.json", document)
        loaded = accepted_or_refused(lambda: load_baseline(path), BaselineError)
        if loaded is not None:
            assert same_json(loaded, document)
            # An accepted baseline is usable: the check refuses it in words, or gives a verdict.
            accepted_or_refused(lambda: check_against_baseline([new], loaded), (BaselineError, NotComparableError))

    check()


def test_claims() -> None:
    paper = load_paper()
    valid = _shipped_claims()

    @FUZZ
    @given(mutated(valid))
    def check(document: Any) -> None:
        # A row reference the paper lacks is refused as PaperDataError (the verify command reports both).
        parsed = accepted_or_refused(lambda: parse_claims(document, paper), (ClaimsError, PaperDataError))
        if parsed is not None:
            again = parse_claims(json.loads(json.dumps(document, allow_nan=True)), paper)
            assert repr(again) == repr(parsed)

    check()


def _shipped_claims() -> Any:
    """The claims file the package ships, as a plain document."""
    return json.loads(resources.files("dit_repro.verify").joinpath("claims.json").read_text(encoding="utf-8"))


def test_samples_json_as_fid_reads_it(workdir: Path) -> None:
    @FUZZ
    @given(mutated(SAMPLES_JSON))
    def check(document: Any) -> None:
        folder = workdir / "samples"
        write(folder, SAMPLES_RECORD, document)
        loaded = accepted_or_refused(lambda: samples_record(folder), ImageSetError)
        assert loaded is None or same_json(loaded, document)

    check()


def test_samples_json_as_sample_reads_it_to_extend_a_folder(workdir: Path) -> None:
    new = copy.deepcopy(SAMPLES_JSON)

    @FUZZ
    @given(mutated(SAMPLES_JSON))
    def check(document: Any) -> None:
        folder = workdir / "extend"
        write(folder, SAMPLES_RECORD, document)
        merged = accepted_or_refused(lambda: _merge_record(folder, new), ConfigError)
        assert merged is None or same_json(merged, {**new, "num": max(document["num"], new["num"])})

    check()


def test_cache_manifests(workdir: Path) -> None:
    valid = json.loads(json.dumps(manifest_header(CACHE_SPEC)))
    spec_fields = set(CACHE_SPEC.to_json())

    @FUZZ
    @given(mutated(valid))
    def check(document: Any) -> None:
        folder = workdir / "cache"
        write(folder, MANIFEST_NAME, document)

        def load() -> tuple[dict[str, Any], CacheSpec]:
            manifest = read_manifest(folder)
            return manifest, CacheSpec.from_manifest(manifest)

        loaded = accepted_or_refused(load, CacheError)
        if loaded is not None:
            manifest, spec = loaded
            assert same_json(manifest, document)
            assert same_json(spec.to_json(), {key: document[key] for key in spec_fields})

    check()

"""Feature extractors: the proxy separates distributions; Inception weights are found or clearly missing."""

from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np
import pytest
import torch
import torch_fidelity
from sklearn.datasets import load_digits
from torch_fidelity.metric_fid import fid_features_to_statistics

from dit_repro.fid import extractors
from dit_repro.fid.extractors import (
    EXTRACTORS,
    INCEPTION_WEIGHTS_SHA256,
    INCEPTION_WEIGHTS_URL,
    PROXY_REGISTRY_NAME,
    InceptionWeightsError,
    ProxyFeatureExtractor,
    UnknownExtractorError,
    create_inception_extractor,
    extractor_spec,
    inception_cache_path,
    register_extractors,
    resolve_inception_weights,
)
from dit_repro.fid.frechet import frechet_distance
from dit_repro.fid.stats import ImageArrayDataset, compute_stats

PROXY = EXTRACTORS["proxy"]
PERMUTATIONS = 19
"""Random splits in the permutation test: beating all 19 is a one-sided p-value of 1/20."""


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as uint8 (N, 8, 8, 1) images and their labels."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, data.target


def proxy_fid(a: np.ndarray, b: np.ndarray) -> float:
    stats_a = compute_stats(ImageArrayDataset(a), PROXY)
    stats_b = compute_stats(ImageArrayDataset(b), PROXY)
    return frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma)


def test_proxy_is_deterministic_and_batch_independent(digits) -> None:
    images = torch.from_numpy(digits[0][:64]).permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()
    first = ProxyFeatureExtractor(PROXY_REGISTRY_NAME, [PROXY.layer])(images)[0]
    second = ProxyFeatureExtractor(PROXY_REGISTRY_NAME, [PROXY.layer])(images)[0]
    assert torch.equal(first, second)
    one_by_one = torch.cat(
        [ProxyFeatureExtractor(PROXY_REGISTRY_NAME, [PROXY.layer])(im[None])[0] for im in images]
    )
    # Computed in float64 and rounded to float32 once: at most one float32 ulp apart.
    ulp = torch.finfo(torch.float32).eps * first.abs().clamp_min(1.0)
    assert torch.all((first - one_by_one).abs() <= ulp)
    assert first.shape == (64, PROXY.dim)


def test_proxy_features_are_not_degenerate(digits) -> None:
    """Unlike a randomly initialised InceptionV3 (features near 0, FID exactly 0), every direction varies."""
    stats = compute_stats(ImageArrayDataset(digits[0]), PROXY)
    eigenvalues = np.linalg.eigvalsh(stats.sigma)
    print(f"feature covariance eigenvalues: min {eigenvalues[0]:.3g}, max {eigenvalues[-1]:.3g}")
    assert stats.mu.shape == (PROXY.dim,)
    assert np.linalg.matrix_rank(stats.sigma, hermitian=True) == PROXY.dim


def test_proxy_separates_distributions(digits) -> None:
    """Digits 0-4 vs 5-9 against random splits of the same pool (a permutation test).

    Under "the extractor cannot tell the groups apart", the class split's FID is exchangeable
    with those of random splits of the same sizes, so exceeding all 19 has probability 1/20.
    The random splits also show FID of one distribution against itself is near 0.
    """
    images, labels = digits
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=images.shape, dtype=np.uint8)
    batch = torch.from_numpy(np.concatenate([images, noise])).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    features = ProxyFeatureExtractor(PROXY_REGISTRY_NAME, [PROXY.layer])(batch)[0].double()
    digit_features, noise_features = features[: len(images)], features[len(images) :]

    def fid(a: torch.Tensor, b: torch.Tensor) -> float:
        stats_a, stats_b = fid_features_to_statistics(a), fid_features_to_statistics(b)
        return frechet_distance(stats_a["mu"], stats_a["sigma"], stats_b["mu"], stats_b["sigma"])

    low = torch.from_numpy(labels < 5)
    observed = fid(digit_features[low], digit_features[~low])
    null = []
    for _ in range(PERMUTATIONS):
        order = torch.from_numpy(rng.permutation(len(images)))
        null.append(fid(digit_features[order[: int(low.sum())]], digit_features[order[int(low.sum()) :]]))
    noise_fid = fid(digit_features[low], noise_features[low])
    print(
        f"proxy-FID digits 0-4 vs 5-9: {observed:.3f}; random splits: max {max(null):.3f} mean {np.mean(null):.3f}"
    )
    print(f"proxy-FID digits vs uniform noise: {noise_fid:.3f}")
    assert observed > max(null)
    assert noise_fid > max(null)


def test_proxy_runs_through_torch_fidelity_calculate_metrics(digits) -> None:
    """Registered by name, the proxy works in torch-fidelity's own FID and gives our value."""
    register_extractors()
    images = digits[0]
    first, second = ImageArrayDataset(images[:600]), ImageArrayDataset(images[600:1200])
    metrics = torch_fidelity.calculate_metrics(
        input1=first,
        input2=second,
        fid=True,
        feature_extractor=PROXY_REGISTRY_NAME,
        cuda=False,
        save_cpu_ram=True,
        verbose=False,
    )
    ours = proxy_fid(images[:600], images[600:1200])
    print(f"torch-fidelity {metrics['frechet_inception_distance']:.12g}, ours {ours:.12g}")
    # torch-fidelity averages float32 features in float32 before its float64 maths.
    assert metrics["frechet_inception_distance"] == pytest.approx(ours, rel=1e-5)


def test_register_extractors_is_idempotent() -> None:
    register_extractors()
    register_extractors()
    assert PROXY_REGISTRY_NAME in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY


def test_unknown_extractor_names_the_choices() -> None:
    with pytest.raises(UnknownExtractorError, match="inception, proxy"):
        extractor_spec("vgg")


def test_missing_inception_weights_say_where_to_put_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = str(tmp_path / "hub" / "checkpoints" / os.path.basename(INCEPTION_WEIGHTS_URL))
    assert inception_cache_path() == expected
    with pytest.raises(InceptionWeightsError) as error:
        resolve_inception_weights(None)
    message = str(error.value)
    assert INCEPTION_WEIGHTS_URL in message
    assert expected in message
    # A named file that is missing is an error even when downloading is allowed.
    with pytest.raises(InceptionWeightsError, match="not found"):
        resolve_inception_weights(str(tmp_path / "absent.pth"), allow_download=True)
    # Without a named file, allowing the download fetches it here (not in torch-fidelity), checked.
    fetched = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **_: fetched.append(url) or _fake(dst))
    with pytest.raises(InceptionWeightsError, match="not the published"):
        resolve_inception_weights(None, allow_download=True)
    assert fetched == [INCEPTION_WEIGHTS_URL]
    assert os.listdir(tmp_path / "hub" / "checkpoints") == []  # a refused download is not kept


def _fake(path: str) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)


def test_wrong_inception_weights_are_refused_by_full_hash_before_any_load(tmp_path, monkeypatch) -> None:
    impostor = tmp_path / "pt_inception-2015-12-05-6726825d.pth"  # the right name is not enough
    _fake(str(impostor))
    actual = hashlib.sha256(impostor.read_bytes()).hexdigest()
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(InceptionWeightsError) as error:
        resolve_inception_weights(str(impostor))
    message = str(error.value)
    assert "not the published" in message and str(impostor) in message
    assert INCEPTION_WEIGHTS_SHA256 in message and actual in message
    assert loads == []


def test_the_pinned_hash_is_a_full_sha256_that_begins_with_the_published_prefix() -> None:
    prefix = torch.hub.HASH_REGEX.search(os.path.basename(INCEPTION_WEIGHTS_URL)).group(1)
    assert len(INCEPTION_WEIGHTS_SHA256) == 64 and int(INCEPTION_WEIGHTS_SHA256, 16) >= 0
    assert INCEPTION_WEIGHTS_SHA256.startswith(prefix)


def test_a_weights_file_with_pickled_code_is_refused_without_torchs_advice(tmp_path) -> None:
    unsafe = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2), "args": argparse.Namespace(lr=1e-4)}, unsafe)
    with pytest.raises(InceptionWeightsError) as error:
        create_inception_extractor(str(unsafe), cuda=False, verbose=False)
    message = str(error.value)
    assert "holds objects other than tensors and plain containers" in message and str(unsafe) in message
    assert "weights_only=False" not in message and "weights_only" not in message


def test_torch_fidelitys_own_load_runs_weights_only(tmp_path, monkeypatch) -> None:
    seen = {}

    def fake_create(*args, **kwargs):
        seen["forced"] = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        return "extractor"

    weights = tmp_path / "weights.pth"
    _fake(str(weights))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch refuses both: lifted for the block
    monkeypatch.setattr(extractors, "create_feature_extractor", fake_create)
    assert create_inception_extractor(str(weights), cuda=False, verbose=False) == "extractor"
    assert seen == {"forced": "1"}
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isfile(inception_cache_path()),
    reason="InceptionV3 FID weights are not in the torch hub cache",
)
def test_inception_statistics_from_cached_weights(digits) -> None:
    """With the published weights present, Inception statistics have 2048 dimensions and separate digits."""
    spec = EXTRACTORS["inception"]
    images, labels = digits
    low_images = images[labels < 5]
    low = compute_stats(ImageArrayDataset(low_images[:300]), spec)
    low_again = compute_stats(ImageArrayDataset(low_images[300:600]), spec)
    high = compute_stats(ImageArrayDataset(images[labels >= 5][:300]), spec)
    assert low.mu.shape == (spec.dim,)
    same = frechet_distance(low.mu, low.sigma, low_again.mu, low_again.sigma)
    different = frechet_distance(low.mu, low.sigma, high.mu, high.sigma)
    print(f"FID same classes {same:.3f}, different classes {different:.3f}")
    assert different > same

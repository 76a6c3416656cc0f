"""The Fréchet distance against closed forms, in float64, including nearly singular covariances.

Error bound used throughout (the rule of dit_repro.fid.frechet): eigenvalues of S1 S2 are exact
up to delta = ROUNDING_MARGIN * d * eps * ||S1|| ||S2||, so the square root of eigenvalue lam is
off by at most min(sqrt(delta), delta / (2 sqrt(lam))); the trace of sqrt(S1 S2) enters FID twice,
and the other terms (traces, mean difference) carry ROUNDING_MARGIN * d * eps relative error.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from torch_fidelity.metric_fid import fid_statistics_to_metric

from dit_repro.fid.frechet import (
    ROUNDING_MARGIN,
    FrechetInputError,
    ImaginaryComponentError,
    frechet_distance,
    trace_sqrt_product,
)

EPS64 = float(np.finfo(np.float64).eps)


def error_bound(
    product_eigenvalues: np.ndarray, norm1: float, norm2: float, magnitude: float, eps: float = EPS64
) -> float:
    """Rounding bound of the computed FID for inputs exact to ``eps`` (see module docstring)."""
    dim = len(product_eigenvalues)
    delta = ROUNDING_MARGIN * dim * eps * norm1 * norm2
    lam = np.maximum(product_eigenvalues, 0.0)
    with np.errstate(divide="ignore"):
        per_eigenvalue = np.minimum(np.sqrt(delta), delta / (2.0 * np.sqrt(lam)))
    return 2.0 * float(per_eigenvalue.sum()) + ROUNDING_MARGIN * dim * eps * magnitude


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def commuting_case(a: np.ndarray, b: np.ndarray, rng: np.random.Generator):
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T and the closed form ||mu1-mu2||^2 + sum (sqrt a - sqrt b)^2."""
    dim = len(a)
    q = random_rotation(dim, rng)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    exact = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    bound = error_bound(a * b, a.max(), b.max(), a.sum() + b.sum() + np.sum((mu1 - mu2) ** 2))
    return mu1, s1, mu2, s2, exact, bound


@pytest.mark.parametrize("dim", [1, 2, 16, 128])
def test_diagonal_covariances_match_closed_form(dim: int) -> None:
    rng = np.random.default_rng(dim)
    a, b = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    exact = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    bound = error_bound(a * b, a.max(), b.max(), a.sum() + b.sum() + np.sum((mu1 - mu2) ** 2))
    print(f"dim {dim}: exact {exact:.17g} got {got:.17g} error {abs(got - exact):.3g} bound {bound:.3g}")
    assert abs(got - exact) <= bound


@pytest.mark.parametrize("dim", [2, 16, 128])
def test_commuting_covariances_match_closed_form(dim: int) -> None:
    rng = np.random.default_rng(100 + dim)
    mu1, s1, mu2, s2, exact, bound = commuting_case(
        rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim), rng
    )
    got = frechet_distance(mu1, s1, mu2, s2)
    print(f"dim {dim}: error {abs(got - exact):.3g} bound {bound:.3g}")
    assert abs(got - exact) <= bound


def test_rotated_covariances_match_two_by_two_closed_form() -> None:
    """S2 = R S1 R^T does not commute with S1; for 2x2 blocks tr sqrt(A) = sqrt(tr A + 2 sqrt(det A)).

    Eight 2x2 blocks with different rotations make a 16-dim block-diagonal case whose exact
    distance is the sum of the blocks' distances.
    """
    rng = np.random.default_rng(7)
    blocks1, blocks2, exact_terms, eigenvalues = [], [], [], []
    for angle in np.linspace(0.1, 1.5, 8):
        s1 = np.diag(rng.uniform(0.2, 3.0, 2))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        s2 = rotation @ s1 @ rotation.T
        product = s1 @ s2
        tr_sqrt = np.sqrt(np.trace(product) + 2.0 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
        exact_terms.append(np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
        eigenvalues.extend(np.linalg.eigvals(product).real)
        blocks1.append(s1)
        blocks2.append(s2)
    s1, s2 = scipy.linalg.block_diag(*blocks1), scipy.linalg.block_diag(*blocks2)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    exact = float(np.sum((mu1 - mu2) ** 2) + np.sum(exact_terms))
    assert not np.allclose(s1 @ s2, s2 @ s1), "the case must not commute"
    got = frechet_distance(mu1, s1, mu2, s2)
    bound = error_bound(
        np.array(eigenvalues), np.linalg.norm(s1, 2), np.linalg.norm(s2, 2), np.trace(s1) + np.trace(s2)
    )
    print(f"rotation: exact {exact:.17g} got {got:.17g} error {abs(got - exact):.3g} bound {bound:.3g}")
    assert abs(got - exact) <= bound


@pytest.mark.parametrize("dim", [4, 64])
def test_nearly_singular_covariances_match_closed_form(dim: int) -> None:
    """Eigenvalues spread from 1 down to 1e-15 (condition number 1e15) in a random basis."""
    rng = np.random.default_rng(200 + dim)
    a = np.geomspace(1.0, 1e-15, dim)
    b = rng.permutation(np.geomspace(3.0, 1e-14, dim))
    mu1, s1, mu2, s2, exact, bound = commuting_case(a, b, rng)
    got = frechet_distance(mu1, s1, mu2, s2)
    print(f"dim {dim}: error {abs(got - exact):.3g} bound {bound:.3g}")
    assert abs(got - exact) <= bound


def test_rank_deficient_covariances_match_closed_form() -> None:
    """Exactly singular covariances (fewer samples than features) with disjoint null spaces."""
    rng = np.random.default_rng(300)
    a = rng.uniform(0.1, 2.0, 32)
    b = rng.uniform(0.1, 2.0, 32)
    a[16:] = 0.0
    b[:8] = 0.0
    mu1, s1, mu2, s2, exact, bound = commuting_case(a, b, rng)
    got = frechet_distance(mu1, s1, mu2, s2)
    print(f"error {abs(got - exact):.3g} bound {bound:.3g}")
    assert abs(got - exact) <= bound


def test_identical_gaussians_have_zero_distance() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(500, 64))
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    eigenvalues = np.linalg.eigvalsh(sigma)
    bound = error_bound(eigenvalues**2, eigenvalues[-1], eigenvalues[-1], 2.0 * np.trace(sigma))
    got = frechet_distance(mu, sigma, mu, sigma)
    print(f"FID(P, P) = {got:.3g}, bound {bound:.3g}")
    assert abs(got) <= bound


def test_agrees_with_torch_fidelity_on_sample_statistics() -> None:
    """Same value as torch-fidelity's eigenvalue formula on well-conditioned statistics."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 32))
    y = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32)) * 0.3 + 0.2
    stats_x = {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}
    stats_y = {"mu": y.mean(0), "sigma": np.cov(y, rowvar=False)}
    ours = frechet_distance(stats_x["mu"], stats_x["sigma"], stats_y["mu"], stats_y["sigma"])
    theirs = fid_statistics_to_metric(stats_x, stats_y, verbose=False)["frechet_inception_distance"]
    norms = np.linalg.norm(stats_x["sigma"], 2) * np.linalg.norm(stats_y["sigma"], 2)
    eigenvalues = np.linalg.eigvals(stats_x["sigma"] @ stats_y["sigma"]).real
    bound = 2 * error_bound(eigenvalues, np.sqrt(norms), np.sqrt(norms), ours)
    print(f"ours {ours:.17g} torch-fidelity {theirs:.17g} bound {bound:.3g}")
    assert abs(ours - theirs) <= bound


def test_float32_statistics_are_accepted_at_their_own_precision() -> None:
    """A float32 covariance (as some reference files store) passes with float32 rounding tolerance."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16))
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    got = frechet_distance(mu.astype(np.float32), sigma.astype(np.float32), mu, sigma)
    eigenvalues = np.linalg.eigvalsh(sigma)
    eps32 = float(np.finfo(np.float32).eps)
    bound = error_bound(eigenvalues**2, eigenvalues[-1], eigenvalues[-1], 2.0 * np.trace(sigma), eps=eps32)
    print(f"FID(P in float32, P in float64) = {got:.3g}, float32 bound {bound:.3g}")
    assert abs(got) <= bound


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["mu", "sigma"])
def test_non_finite_input_is_an_error(bad: float, where: str) -> None:
    mu, sigma = np.zeros(3), np.eye(3)
    mu_bad, sigma_bad = mu.copy(), sigma.copy()
    if where == "mu":
        mu_bad[1] = bad
    else:
        sigma_bad[1, 1] = bad
    with pytest.raises(FrechetInputError, match="non-finite"):
        frechet_distance(mu_bad, sigma_bad, mu, sigma)


def test_imaginary_square_root_beyond_tolerance_is_an_error() -> None:
    """sqrt(S1 S2) of a product with a negative eigenvalue is imaginary: the input was no covariance pair."""
    s1 = np.diag([1.0, -0.5])
    s2 = np.eye(2)
    with pytest.raises(ImaginaryComponentError, match="imaginary"):
        trace_sqrt_product(s1, s2)


def test_imaginary_part_within_rounding_is_dropped() -> None:
    """A product eigenvalue at -delta/2 (inside the rounding tolerance) gives a real trace."""
    delta = ROUNDING_MARGIN * 2 * EPS64
    s1 = np.diag([1.0, -0.5 * delta])
    value = trace_sqrt_product(s1, np.eye(2))
    assert value == pytest.approx(1.0, abs=np.sqrt(delta))


def test_non_covariance_sigma_is_refused() -> None:
    mu = np.zeros(2)
    with pytest.raises(FrechetInputError, match="not positive semi-definite"):
        frechet_distance(mu, np.diag([1.0, -0.5]), mu, np.eye(2))
    with pytest.raises(FrechetInputError, match="not symmetric"):
        frechet_distance(mu, np.array([[1.0, 0.5], [0.0, 1.0]]), mu, np.eye(2))


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(FrechetInputError, match="different dimensions"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(FrechetInputError, match="3x3"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))

"""The Fréchet distance between two Gaussians, the number behind FID.

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

computed in float64 with :func:`scipy.linalg.sqrtm`, as in the ADM evaluator and pytorch-fid,
so that values agree with the numbers papers report. Unlike those implementations, nothing is
silently repaired: non-finite input, a matrix that is not a covariance, and an imaginary part
of sqrt(S1 S2) larger than rounding can explain are errors.

Tolerances follow one rule. A covariance that arrives in a dtype with machine epsilon ``eps``
is exact only up to rounding of order ``d * eps * ||S||_2`` (the backward error of a
symmetric eigensolver on a d x d matrix). ``ROUNDING_MARGIN`` times that is accepted as an
asymmetry or a negative eigenvalue. The eigenvalues of S1 S2 are then non-negative up to
``delta = ROUNDING_MARGIN * d * eps * ||S1||_2 ||S2||_2``, and the square root of an eigenvalue
pushed to ``-delta`` has an imaginary part of ``sqrt(delta)``: that is the imaginary tolerance.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.linalg

ROUNDING_MARGIN = 100.0
"""Multiple of the ``d * eps * norm`` rounding scale accepted before input counts as wrong."""


class FrechetInputError(ValueError):
    """Statistics that cannot be two Gaussians: wrong shapes, non-finite values, not a covariance."""


class ImaginaryComponentError(ValueError):
    """sqrt(S1 S2) has an imaginary part larger than rounding explains: the input is not two covariances."""


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Inputs may be any float dtype; they are checked in their own precision (see the module
    docstring) and the distance is computed in float64. Raises :class:`FrechetInputError` for
    mismatched shapes, non-finite values, or a sigma that is not symmetric positive
    semi-definite, and :class:`ImaginaryComponentError` from :func:`trace_sqrt_product`.
    """
    mu1_64, sigma1_64, norm1 = _validated_gaussian(mu1, sigma1, "1")
    mu2_64, sigma2_64, norm2 = _validated_gaussian(mu2, sigma2, "2")
    if mu1_64.shape != mu2_64.shape:
        raise FrechetInputError(
            f"the two Gaussians have different dimensions: {mu1_64.shape[0]} and {mu2_64.shape[0]} "
            "(statistics from different feature extractors or layers?)"
        )
    eps = max(_input_eps(sigma1), _input_eps(sigma2))
    diff = mu1_64 - mu2_64
    tr_covmean = _trace_sqrt_product(sigma1_64, sigma2_64, eps, lambda: norm1 * norm2)
    return float(diff @ diff + np.trace(sigma1_64) + np.trace(sigma2_64) - 2.0 * tr_covmean)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, *, eps: float | None = None) -> float:
    """tr sqrt(sigma1 @ sigma2) in float64, refusing an imaginary part beyond rounding.

    ``eps`` is the machine epsilon of the precision the matrices were computed in (default:
    that of their dtype). The imaginary tolerance on the diagonal of the square root is
    ``sqrt(ROUNDING_MARGIN * d * eps * ||sigma1||_2 ||sigma2||_2)``; larger raises
    :class:`ImaginaryComponentError`, a non-finite square root raises :class:`FrechetInputError`.
    """
    if eps is None:
        eps = max(_input_eps(sigma1), _input_eps(sigma2))
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    return _trace_sqrt_product(s1, s2, eps, lambda: float(np.linalg.norm(s1, 2) * np.linalg.norm(s2, 2)))


def _trace_sqrt_product(
    s1: np.ndarray, s2: np.ndarray, eps: float, norm_product: Callable[[], float]
) -> float:
    """:func:`trace_sqrt_product` on float64 input; ``norm_product`` gives ||s1||_2 ||s2||_2 when needed."""
    with warnings.catch_warnings():
        # Covariances of fewer samples than dimensions are singular; sqrtm still returns the
        # principal root and warns. Its accuracy is judged below by the finite/imaginary checks.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        raise FrechetInputError(
            "sqrt(sigma1 @ sigma2) is not finite; the covariances are degenerate beyond what the "
            "matrix square root can handle (check that features are not constant)"
        )
    if np.iscomplexobj(covmean):
        # The 2-norms cost an SVD each, so they are only computed on this path.
        tolerance = float(np.sqrt(ROUNDING_MARGIN * s1.shape[0] * eps * norm_product()))
        imaginary = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imaginary > tolerance:
            raise ImaginaryComponentError(
                f"sqrt(sigma1 @ sigma2) has an imaginary diagonal component of {imaginary:.3g}, above the "
                f"rounding tolerance {tolerance:.3g}; sigma1 and sigma2 must be covariance matrices "
                "(symmetric positive semi-definite)"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _validated_gaussian(
    mu: np.ndarray, sigma: np.ndarray, which: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Check one (mu, sigma) pair in its own precision; return float64 mu, symmetrised sigma, ||sigma||_2."""
    mu = np.asarray(mu)
    sigma = np.asarray(sigma)
    if mu.ndim != 1 or mu.shape[0] == 0:
        raise FrechetInputError(f"mu{which} must be a non-empty vector, got shape {mu.shape}")
    dim = mu.shape[0]
    if sigma.shape != (dim, dim):
        raise FrechetInputError(
            f"sigma{which} must be a {dim}x{dim} matrix to match mu{which}, got shape {sigma.shape}"
        )
    for name, array in ((f"mu{which}", mu), (f"sigma{which}", sigma)):
        if not np.issubdtype(array.dtype, np.floating):
            raise FrechetInputError(f"{name} must be a float array, got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise FrechetInputError(f"{name} has {bad} non-finite entries (NaN or inf)")
    raw = sigma.astype(np.float64)
    symmetric = 0.5 * (raw + raw.T)
    eigenvalues = np.linalg.eigvalsh(symmetric)
    norm = float(np.max(np.abs(eigenvalues)))
    tolerance = ROUNDING_MARGIN * dim * _input_eps(sigma) * norm
    asymmetry = float(np.max(np.abs(raw - raw.T)))
    if asymmetry > tolerance:
        raise FrechetInputError(
            f"sigma{which} is not symmetric (max |S - S^T| = {asymmetry:.3g} > tolerance {tolerance:.3g}); "
            "a covariance matrix is symmetric"
        )
    if eigenvalues[0] < -tolerance:
        raise FrechetInputError(
            f"sigma{which} is not positive semi-definite (smallest eigenvalue {eigenvalues[0]:.3g} < "
            f"-{tolerance:.3g}); a covariance matrix has no negative eigenvalues"
        )
    return mu.astype(np.float64), symmetric, norm


def _input_eps(array: np.ndarray) -> float:
    """Machine epsilon of the array's float dtype (float64's for anything else)."""
    dtype = np.asarray(array).dtype
    return (
        float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else float(np.finfo(np.float64).eps)
    )

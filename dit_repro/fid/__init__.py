"""FID through torch-fidelity: the Fréchet distance, feature extractors, statistics, labelled results.

Modules: :mod:`~dit_repro.fid.frechet` (the distance, checked against closed forms),
:mod:`~dit_repro.fid.extractors` (InceptionV3 weights offline, the proxy extractor),
:mod:`~dit_repro.fid.stats` (image sets, mu/sigma, ADM ``.npz`` files),
:mod:`~dit_repro.fid.evaluate` (FID of a sample set, comparability by N), and
:mod:`~dit_repro.fid.layout` (file names of a sample folder). The regression gate built on
them is :mod:`dit_repro.fid_gate`.
"""

from dit_repro.fid.evaluate import FIDResult, NotComparableError, ensure_comparable, fid_of_samples
from dit_repro.fid.extractors import EXTRACTORS, ExtractorSpec, extractor_spec, register_extractors
from dit_repro.fid.frechet import FrechetInputError, ImaginaryComponentError, frechet_distance
from dit_repro.fid.stats import FeatureStats, compute_stats, open_image_set, reference_stats, save_stats

__all__ = [
    "EXTRACTORS",
    "ExtractorSpec",
    "FIDResult",
    "FeatureStats",
    "FrechetInputError",
    "ImaginaryComponentError",
    "NotComparableError",
    "compute_stats",
    "ensure_comparable",
    "extractor_spec",
    "fid_of_samples",
    "frechet_distance",
    "open_image_set",
    "reference_stats",
    "register_extractors",
    "save_stats",
]

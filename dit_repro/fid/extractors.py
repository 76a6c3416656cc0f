"""Feature extractors for FID, all created through torch-fidelity's registry.

Two are offered:

``inception``
    torch-fidelity's ``inception-v3-compat``, the TensorFlow FID network (pool3, 2048 features).
    Its weights are never fetched implicitly: they are read from a file given by the user or
    from the torch hub cache, checked against the hash in their published file name, and a
    missing file is an error that says where to get it and where to put it.
``proxy``
    A fixed random-feature map for CPU tests and CI, whose numbers are labelled ``proxy-FID``
    and are not comparable with any published FID: the image is area-downsampled to 8x8 RGB in
    [-1, 1] and mapped through 64 random Fourier features ``sqrt(2) cos(W x + b)`` with
    ``W ~ N(0, 1 / bandwidth^2)``, ``b ~ U[0, 2 pi)`` drawn once from a fixed seed (Rahimi &
    Recht 2007). The features' mean embeds a Gaussian kernel, so distributions that differ at
    the scale of ``bandwidth`` get different feature means, while no training is needed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dit_repro.hashing import sha256_file


@dataclass(frozen=True)
class ExtractorSpec:
    """How one feature extractor is named, read and labelled."""

    key: str
    """Short name used on the command line (``inception`` or ``proxy``)."""
    registry_name: str
    """Name registered with ``torch_fidelity.register_feature_extractor``."""
    layer: str
    """Feature name (torch-fidelity's ``feature_layer_fid``) whose statistics define FID."""
    dim: int
    """Length of that feature vector."""
    metric_label: str
    """How the resulting number is labelled in every output: ``FID`` or ``proxy-FID``."""


PROXY_REGISTRY_NAME = "dit-repro-proxy-rff64"
"""torch-fidelity registry name of the proxy extractor."""

EXTRACTORS: dict[str, ExtractorSpec] = {
    "inception": ExtractorSpec("inception", "inception-v3-compat", "2048", 2048, "FID"),
    "proxy": ExtractorSpec("proxy", PROXY_REGISTRY_NAME, "rff64", 64, "proxy-FID"),
}
"""The extractors by command-line name."""


class UnknownExtractorError(ValueError):
    """An extractor name that is not in :data:`EXTRACTORS`."""


class InceptionWeightsError(FileNotFoundError):
    """The InceptionV3 FID weights are missing or are not the published file."""


def extractor_spec(key: str) -> ExtractorSpec:
    """The :class:`ExtractorSpec` for a command-line name, or a clear error listing the choices."""
    try:
        return EXTRACTORS[key]
    except KeyError:
        raise UnknownExtractorError(
            f"unknown feature extractor {key!r}; choose one of {', '.join(EXTRACTORS)}"
        ) from None


# ----------------------------------------------------------------------------------------------
# InceptionV3 weights
# ----------------------------------------------------------------------------------------------

INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3
"""Where torch-fidelity downloads the pt_inception-2015-12-05 weights from."""


def inception_cache_path() -> str:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the weights: ``<hub dir>/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(INCEPTION_WEIGHTS_URL))


def resolve_inception_weights(path: str | None, *, allow_download: bool = False) -> str | None:
    """The weights file torch-fidelity should load, checked; ``None`` lets torch-fidelity download.

    ``path`` (a user-given file) is used if given; otherwise the torch hub cache file. A missing
    file raises :class:`InceptionWeightsError` naming the URL and the path to put it at, unless
    ``allow_download`` is set and no path was given. A file whose SHA-256 does not start with the
    hash in the published file name is refused: FID is only comparable with these exact weights.
    """
    candidate = path if path is not None else inception_cache_path()
    if not os.path.isfile(candidate):
        if path is None and allow_download:
            return None
        raise InceptionWeightsError(
            f"InceptionV3 FID weights not found at {candidate}. Without network access, download "
            f"{INCEPTION_WEIGHTS_URL} on a machine that has it and put the file at {inception_cache_path()} "
            "(the torch hub cache, $TORCH_HOME/hub/checkpoints), or pass its location with --inception-weights; "
            "with network access, --download-weights fetches it there."
        )
    expected = torch.hub.HASH_REGEX.search(os.path.basename(INCEPTION_WEIGHTS_URL)).group(1)
    digest = sha256_file(candidate)
    if not digest.startswith(expected):
        raise InceptionWeightsError(
            f"{candidate} is not the published InceptionV3 FID weights: its SHA-256 starts {digest[: len(expected)]}, "
            f"expected {expected} (the file at {INCEPTION_WEIGHTS_URL})"
        )
    return candidate


# ----------------------------------------------------------------------------------------------
# Proxy extractor
# ----------------------------------------------------------------------------------------------

PROXY_RESOLUTION = 8
"""Side of the area-downsampled image the proxy features see."""
PROXY_SEED = 20240101
"""Seed of the proxy's random projection: fixed, so every run uses the same features."""
PROXY_BANDWIDTH_PER_PIXEL = 0.5
"""Kernel bandwidth as an RMS per-value difference: a quarter of the [-1, 1] pixel range."""


class ProxyFeatureExtractor(FeatureExtractorBase):
    """Random Fourier features of the 8x8 area-downsampled image (see the module docstring).

    Takes uint8 images (B, 3, H, W) as every torch-fidelity extractor does and returns one
    float32 feature tensor (B, 64). Computed in float64 so that the features do not depend on
    the batch size through matmul blocking.
    """

    def __init__(self, name: str, features_list: list[str], **kwargs: object) -> None:
        # torch-fidelity passes every calculate_metrics option as a keyword; none apply here.
        super().__init__(name, features_list)
        in_dim = 3 * PROXY_RESOLUTION * PROXY_RESOLUTION
        out_dim = EXTRACTORS["proxy"].dim
        bandwidth = PROXY_BANDWIDTH_PER_PIXEL * math.sqrt(in_dim)
        generator = torch.Generator().manual_seed(PROXY_SEED)
        weight = torch.randn(in_dim, out_dim, generator=generator, dtype=torch.float64) / bandwidth
        phase = torch.rand(out_dim, generator=generator, dtype=torch.float64) * (2 * math.pi)
        self.register_buffer("weight", weight)
        self.register_buffer("phase", phase)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        """The single feature this extractor provides."""
        return (EXTRACTORS["proxy"].layer,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        """Every metric uses the random Fourier features."""
        return EXTRACTORS["proxy"].layer

    @staticmethod
    def can_be_compiled() -> bool:
        """Compilation would not pay for a single small matmul."""
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        """A valid input batch (only used if compilation were enabled)."""
        return torch.zeros(1, 3, PROXY_RESOLUTION, PROXY_RESOLUTION, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 (B, 3, H, W) -> ((B, 64) float32,)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"the proxy extractor takes uint8 images shaped (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(torch.float64) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        x = F.adaptive_avg_pool2d(x, PROXY_RESOLUTION)  # (B, 3, 8, 8), area average
        z = x.flatten(1) @ self.weight + self.phase  # (B, 64)
        return ((math.sqrt(2.0) * torch.cos(z)).to(torch.float32),)


def register_extractors() -> None:
    """Register the proxy extractor with torch-fidelity (idempotent; Inception ships registered)."""
    if PROXY_REGISTRY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(PROXY_REGISTRY_NAME, ProxyFeatureExtractor)

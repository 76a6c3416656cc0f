"""Feature extractors for FID, all created through torch-fidelity's registry.

Two are offered:

``inception``
    torch-fidelity's ``inception-v3-compat``, the TensorFlow FID network (pool3, 2048 features).
    Its weights are never fetched implicitly: they are read from a file given by the user or
    from the torch hub cache, checked against their full pinned SHA-256 before anything loads
    them, then read weights-only; a missing file is an error that says where to get it and where
    to put it.
``proxy``
    A fixed random-feature map for CPU tests and CI, whose numbers are labelled ``proxy-FID``
    and are not comparable with any published FID: the image is area-downsampled to 8x8 RGB in
    [-1, 1] and mapped through 64 random Fourier features ``sqrt(2) cos(W x + b)`` with
    ``W ~ N(0, 1 / bandwidth^2)``, ``b ~ U[0, 2 pi)`` drawn once from a fixed seed (Rahimi &
    Recht 2007). The features' mean embeds a Gaussian kernel, so distributions that differ at
    the scale of ``bandwidth`` get different feature means, while no training is needed.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

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

INCEPTION_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
"""Full SHA-256 of the InceptionV3 FID weights (pt_inception-2015-12-05-6726825d.pth, mirrored by
torch-fidelity as weights-inception-2015-12-05-6726825d.pth, the file it downloads).

The file name carries only the first 8 hex digits. The full digest is pinned, with the same value,
by public code that checks these weights before loading them, among them
snap-research/discoscene and qiuyu96/Carver (models/inception_model.py, ``_MODEL_URL_SHA256``, for
the pytorch-fid release URL) and, independently, evaluation code that pins the torch-fidelity
mirror URL (v0.2.0/weights-inception-2015-12-05-6726825d.pth) to the same digest. It begins with the
8 digits of the published name, as torch.hub's naming convention requires."""


def inception_cache_path() -> str:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the weights: ``<hub dir>/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(INCEPTION_WEIGHTS_URL))


def resolve_inception_weights(path: str | None, *, allow_download: bool = False) -> str:
    """The weights file torch-fidelity should load, checked against the pinned SHA-256 before anything loads it.

    ``path`` (a user-given file) is used if given; otherwise the torch hub cache file. A missing
    file raises :class:`InceptionWeightsError` naming the URL and the path to put it at, unless
    ``allow_download`` is set and no path was given: then it is downloaded to the cache here (not by
    torch-fidelity), so that the download is checked too. A file whose SHA-256 is not
    :data:`INCEPTION_WEIGHTS_SHA256` is refused: FID is only comparable with these exact weights,
    and a file that is not them is never unpickled.
    """
    candidate = path if path is not None else inception_cache_path()
    if not os.path.isfile(candidate):
        if path is None and allow_download:
            return download_inception_weights(candidate)
        raise InceptionWeightsError(
            f"InceptionV3 FID weights not found at {candidate}. Without network access, download "
            f"{INCEPTION_WEIGHTS_URL} on a machine that has it and put the file at {inception_cache_path()} "
            "(the torch hub cache, $TORCH_HOME/hub/checkpoints), or pass its location with --inception-weights; "
            "with network access, --download-weights fetches it there."
        )
    check_inception_weights(candidate)
    return candidate


def check_inception_weights(path: str) -> None:
    """Refuse ``path`` unless its SHA-256 is the pinned :data:`INCEPTION_WEIGHTS_SHA256`; reads the bytes only."""
    digest = sha256_file(path)
    if digest != INCEPTION_WEIGHTS_SHA256:
        raise InceptionWeightsError(
            f"{path} is not the published InceptionV3 FID weights: its SHA-256 is {digest}, expected "
            f"{INCEPTION_WEIGHTS_SHA256} (the file at {INCEPTION_WEIGHTS_URL}); it was not loaded. "
            "Download that file again, or pass the right one with --inception-weights"
        )


def download_inception_weights(destination: str) -> str:
    """Download the weights to ``destination`` and check them before they are kept (``--download-weights``)."""
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    partial = f"{destination}.partial"
    try:
        torch.hub.download_url_to_file(INCEPTION_WEIGHTS_URL, partial, progress=False)
        check_inception_weights(partial)
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return destination


FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
"""Environment variable that makes ``torch.load`` weights-only even where its caller passes ``weights_only=False``."""
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
"""Its opposite, which torch refuses to combine with it."""


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Make every ``torch.load`` inside the block weights-only, whatever its caller asks for.

    torch-fidelity reads a weights file with ``torch.load(..., weights_only=False)``, which would run
    any code pickled in it. ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` (read by torch.load on every call)
    overrides that, so the file checked by :func:`check_inception_weights` is also read as tensors
    and plain containers only; the pinned file is a plain state dict, which loads that way. Its
    opposite, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, is lifted for the block: torch refuses both at once.
    """
    saved = {name: os.environ.pop(name, None) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def create_inception_extractor(weights: str, *, cuda: bool, verbose: bool) -> FeatureExtractorBase:
    """torch-fidelity's InceptionV3 from a checked weights file, read weights-only.

    ``weights`` must have passed :func:`resolve_inception_weights`. The file is first read here
    with ``torch.load(weights_only=True)``, so that a file that is not a plain state dict is refused
    in this project's words (torch's own message suggests ``weights_only=False``, exactly what must
    not be done with an untrusted file); torch-fidelity's own read then runs weights-only too.
    """
    try:
        torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign, truncated or unsafe files
        raise InceptionWeightsError(
            f"{weights} holds objects other than tensors and plain containers, or is not a complete file "
            f"written by torch.save ({type(exc).__name__}); it is refused because loading it any other way "
            f"could run code from the file. Use the published file {INCEPTION_WEIGHTS_URL}"
        ) from None
    spec = EXTRACTORS["inception"]
    with weights_only_loading():
        return create_feature_extractor(
            spec.registry_name, [spec.layer], cuda=cuda, verbose=verbose, feature_extractor_weights_path=weights
        )


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

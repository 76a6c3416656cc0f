"""Data: image datasets, the per-item draw scheme, the VAE, the latent cache and the feature sources.

The trainer needs only :func:`build_feature_source`; ``dit-repro extract`` uses
:func:`extract_latent_cache`.
"""

from dit_repro.data.decode import UnsupportedImageMode, decode_image, to_8bit
from dit_repro.data.draws import ItemDraws, draw_item, item_generator, stable_seed
from dit_repro.data.extraction import ExtractionReport, extract_latent_cache
from dit_repro.data.images import AugmentedImageDataset, build_image_source
from dit_repro.data.imagesource import DatasetError, ImageSource, UnreadableImageError
from dit_repro.data.latents import LatentCache, LatentDataset
from dit_repro.data.manifest import CacheCorruptError, CacheError, CacheMismatchError, CacheSpec
from dit_repro.data.scan import UnreadableImagesError, check_images
from dit_repro.data.sources import FeatureSource, build_feature_source
from dit_repro.data.vae import VAEHandle, VAEUnavailableError, load_vae

__all__ = [
    "AugmentedImageDataset",
    "CacheCorruptError",
    "CacheError",
    "CacheMismatchError",
    "CacheSpec",
    "DatasetError",
    "ExtractionReport",
    "FeatureSource",
    "ImageSource",
    "ItemDraws",
    "LatentCache",
    "LatentDataset",
    "UnreadableImageError",
    "UnreadableImagesError",
    "UnsupportedImageMode",
    "VAEHandle",
    "VAEUnavailableError",
    "build_feature_source",
    "build_image_source",
    "check_images",
    "decode_image",
    "draw_item",
    "extract_latent_cache",
    "item_generator",
    "load_vae",
    "stable_seed",
    "to_8bit",
]

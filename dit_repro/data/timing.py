"""Time the data + encode part of a training step, live VAE encoding against the latent cache.

Both paths run side by side, interleaved (their order alternates every step), on the same
images, at the same batch size: live = decode and centre-crop JPEGs, flip, VAE-encode on the
device, draw the posterior sample; cached = read the stored moments, flip, draw the sample. The
model's forward and backward are not included (the trainer times whole steps).

With the default ``full-size-random`` VAE the architecture is the full SD VAE with seeded random
weights: the timing is representative, the latents are meaningless. Run::

    python -m dit_repro.data.timing --batch-size 8 --steps 10 --image-size 256 --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate

from dit_repro.data.extraction import extract_latent_cache
from dit_repro.data.imagefolder import ImageFolderImages
from dit_repro.data.latents import LatentCache
from dit_repro.data.sources import CachedLatentSource, FeatureSource, LiveLatentSource
from dit_repro.data.synthetic import SyntheticImages
from dit_repro.data.vae import FULL_SIZE_RANDOM, load_vae

_SOURCE_SCALE = 1.5
"""Stored JPEGs are this much larger than ``image_size`` so that the live path really crops and resizes."""


def write_jpeg_folder(root: Path, count: int, side: int, classes: int = 2) -> None:
    """Write ``count`` synthetic RGB JPEGs of ``side`` x ``side`` into ``root/<class>/``."""
    images = SyntheticImages(side, channels=3, count=count, classes=classes)
    for index in range(count):
        folder = root / f"class_{images.label(index)}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = ((images.load(index) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{index:06d}.jpg", quality=90)


def _spread(times: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median": statistics.median(times),
        "p25": quartiles[0],
        "p75": quartiles[2],
        "min": min(times),
        "max": max(times),
    }


def _timed_batch(source: FeatureSource, batch_size: int, epoch: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    source.dataset.set_epoch(epoch)
    batch = default_collate([source.dataset[i] for i in range(batch_size)])
    source.prepare(batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def time_live_vs_cached(
    batch_size: int = 8,
    image_size: int = 256,
    steps: int = 10,
    warmup: int = 2,
    vae_spec: str = FULL_SIZE_RANDOM,
    device: str = "cpu",
) -> dict[str, Any]:
    """Seconds per batch of the data + encode part, live vs cached, with median and spread.

    Builds ``batch_size`` JPEGs and a cache of them (the cache build is not timed), then times
    ``warmup + steps`` interleaved batches of each path; the first ``warmup`` are dropped.
    """
    torch_device = torch.device(device)
    vae = load_vae(vae_spec, torch_device)
    with tempfile.TemporaryDirectory(prefix="dit-repro-timing-") as tmp:
        root = Path(tmp)
        write_jpeg_folder(root / "images", batch_size, round(image_size * _SOURCE_SCALE))
        images = ImageFolderImages(root / "images", image_size)
        extract_latent_cache(
            images, vae, root / "cache", batch_size=batch_size, shard_size=batch_size, progress=False
        )
        sources = {
            "live": LiveLatentSource(images, vae, seed=0, num_classes=images.num_classes),
            "cached": CachedLatentSource(
                LatentCache.open(root / "cache"), seed=0, num_classes=images.num_classes
            ),
        }
        times: dict[str, list[float]] = {"live": [], "cached": []}
        for step in range(warmup + steps):
            order = ("live", "cached") if step % 2 == 0 else ("cached", "live")
            for name in order:
                elapsed = _timed_batch(sources[name], batch_size, step, torch_device)
                if step >= warmup:
                    times[name].append(elapsed)
    live, cached = _spread(times["live"]), _spread(times["cached"])
    return {
        "what": "seconds per batch of data loading + VAE encoding (live) vs cache reading (cached); no model step",
        "device": str(torch_device),
        "vae": {
            key: vae.fingerprint[key] for key in ("kind", "spec", "random_weights") if key in vae.fingerprint
        }
        | {"note": vae.fingerprint.get("note", "pretrained weights")},
        "batch_size": batch_size,
        "image_size": image_size,
        "steps": steps,
        "warmup": warmup,
        "live_s": live,
        "cached_s": cached,
        "live_over_cached_median": live["median"] / cached["median"],
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--vae", default=FULL_SIZE_RANDOM, help="VAE spec; default full-size-random (timing only)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    result = time_live_vs_cached(
        args.batch_size, args.image_size, args.steps, args.warmup, args.vae, args.device
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

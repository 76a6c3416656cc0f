"""A temporary latent cache for the ``cached`` rows when the user gives none.

It is encoded by the code of ``dit-repro extract`` in a child process
(``python -m dit_repro.bench.latent_cache``), so that the VAE's device memory and CUDA context
are gone before the first row is measured.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from dit_repro.config import ConfigError


def build_temporary_cache(out_dir: Path, *, data: str, vae: str, image_size: int, device: str,
                          batch_size: int) -> Path:
    """Encode ``data`` at ``image_size`` with ``vae`` into ``out_dir`` and return it."""
    command = [sys.executable, "-m", "dit_repro.bench.latent_cache", str(out_dir), "--data", data, "--vae", vae,
               "--image-size", str(image_size), "--device", device, "--batch-size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"could not build the temporary latent cache (exit {done.returncode}) with "
                          f"{' '.join(command)}:\n{done.stderr.strip()[-3000:]}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: extract one complete cache, single process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    args = parser.parse_args(argv)

    from dit_repro.data.extraction import extract_latent_cache
    from dit_repro.data.images import build_image_source
    from dit_repro.data.vae import load_vae

    images = build_image_source(args.data, args.image_size, channels=3)
    vae = load_vae(args.vae, args.device)
    report = extract_latent_cache(images, vae, args.out_dir, batch_size=args.batch_size, progress=False)
    if not report.complete:
        print(f"cache in {args.out_dir} is incomplete after extraction", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

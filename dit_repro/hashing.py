"""SHA-256 of files: names the checkpoint behind a sample set, checks latent-cache shards and the Inception weights."""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 22
"""Read size: checkpoints and weights are hashed in 4 MiB pieces, never loaded whole."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()

"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write

CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "scaler", "step", "config")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or lacks what a run needs."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    A crash mid-write leaves the previous checkpoint intact, never a truncated one.
    """
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code runs) and check its keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read as a weights-only torch file: {exc}") from exc
    missing = [key for key in ("model", "ema", "step", "config") if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; expected keys {list(CHECKPOINT_KEYS)}")
    return state

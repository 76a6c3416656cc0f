"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
import re
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
        raise CheckpointError(weights_only_refusal(path, exc)) from None
    check_checkpoint_keys(state, path)
    return state


def check_checkpoint_keys(state: Any, path: Path) -> None:
    """Refuse a loaded file that lacks what sampling and resuming read from this project's checkpoints."""
    missing = [key for key in ("model", "ema", "step", "config") if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; expected keys {list(CHECKPOINT_KEYS)}")


def weights_only_refusal(path: Path, exc: Exception) -> str:
    """Why ``path`` cannot be read weights-only, in this project's words (torch's advice to drop
    ``weights_only`` is left out: following it would run code from the file)."""
    text = str(exc)
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported:
        return (
            f"checkpoint {path} holds a pickled {unsupported.group(1)}, which is not a tensor or a plain "
            "container; it is refused because loading it would run code from the file. Re-save the weights "
            "alone, e.g. torch.save(model.state_dict(), PATH)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]*)", text)
    # An unknown pickle opcode means the bytes are not a pickle at all: junk or a truncated file.
    if detail and detail.group(1).strip() and "Unsupported operand" not in detail.group(1):
        reason = detail.group(1).split(" Please use")[0].strip()
        return (
            f"checkpoint {path} holds pickled data other than tensors and plain containers "
            f"({reason}); it is refused because loading it would run code from the file"
        )
    if detail:
        text = re.search(r"WeightsUnpickler error:\s*(.*?)\n\n", text + "\n\n", re.S).group(1)
    return (
        f"checkpoint {path} is not a file written by torch.save, or it is truncated or corrupt "
        f"({type(exc).__name__}: {text.splitlines()[0] if text else 'no detail'})"
    )

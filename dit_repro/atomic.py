"""Atomic file writes: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dit_repro.config import ConfigError

TMP_PREFIX = ".tmp-"
"""Name prefix of the temporary files behind every atomic write (skipped when a folder is scanned)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    The temporary is named ``{TMP_PREFIX}{pid}-{random}-{name}``: unique among concurrent writers,
    processes or threads, and ending in the final name so that writers which choose a format by the
    file's suffix (PIL, matplotlib) choose the right one. ``os.replace`` within one folder is
    atomic. Writers that take a path (safetensors, torch, PIL, matplotlib) can be used as they are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp and some writers (safetensors) create private 0600 files; give the result the
        # usual umask mode so that caches, results and reports can be shared.
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def default_file_mode() -> int:
    """0666 less the process umask: the mode ``open()`` would have given a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: Any, *, sort_keys: bool = True,
                      allow_nan: bool = True) -> Path:
    """Write ``value`` as JSON indented by one space, with a final newline, to ``path`` atomically.

    ``sort_keys=False`` keeps the dicts' own order (results files list fields in the schema's
    order); ``allow_nan=False`` raises ValueError on NaN or infinity, which strict JSON readers reject.
    """
    return write_text_atomic(path, json.dumps(value, indent=1, sort_keys=sort_keys, allow_nan=allow_nan) + "\n")


def writable_target(path: str | os.PathLike[str], flag: str, *, folder: bool = False) -> Path:
    """Prove that ``path`` can be written (a file, or with ``folder`` a folder to write into), creating nothing.

    Nothing is left behind: the check writes and removes one temporary file (named like this
    module's temporaries, which readers of a folder skip) in the nearest folder that already
    exists, so that a command refused later leaves the output location as it was; a probe, not
    ``os.access``, which says yes to root even on a read-only file system. Raises ConfigError
    naming ``flag``, the path and what would be right.
    """
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {target}: is a file, not a folder; name a folder to write into")
    if not folder and target.is_dir():
        raise ConfigError(f"{flag} {target}: is a folder; name the file to write")
    start = target if folder else target.parent
    existing = next((p for p in (start, *start.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(
            f"{flag} {target}: cannot write there ({existing} is a file, not a folder, so nothing can be "
            "created under it); name a path you can write to"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f"{TMP_PREFIX}write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag} {target}: cannot write there ({exc.strerror or exc}); name a path you can write to"
        ) from None
    return target

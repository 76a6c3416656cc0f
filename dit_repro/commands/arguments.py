"""Argument types that validate a flag's value when it is parsed, so that argparse names the flag, and
the check that an output folder is writable before any work.

``type=at_least(1)`` turns ``--log-every 0`` into ``argument --log-every: must be an integer >= 1,
got 0`` before any work starts, instead of an error (or a traceback) deep inside the run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from dit_repro.config import ConfigError


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number(text: str, requirement: str, holds: Callable[[float], bool]) -> float:
    """Parse ``text`` as a float that ``holds``; the error says ``must be {requirement}``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
    if not holds(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
    return value


def fraction_below_one(text: str) -> float:
    """An argparse type: a number in [0, 1) (an EMA decay)."""
    return _number(text, "a number in [0, 1)", lambda value: 0.0 <= value < 1.0)


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (a learning rate)."""
    return _number(text, "a finite number > 0", lambda value: 0.0 < value < float("inf"))


def non_negative_number(text: str) -> float:
    """An argparse type: a finite number >= 0 (a guidance scale, DDIM's eta)."""
    return _number(text, "a finite number >= 0", lambda value: 0.0 <= value < float("inf"))


def writable_folder(folder: str | os.PathLike[str], flag: str) -> Path:
    """Create ``folder`` (and its parents) and prove that a file can be written in it, before any work.

    Raises ConfigError naming ``flag`` and the reason, so that an unwritable output fails in the
    first second rather than after the measurements it was meant to hold.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); name a folder you can write to") from None
    return path


class RefusedFlag(argparse.Action):
    """A flag of an earlier version (or of DiT's scripts) whose meaning moved: using it is an error giving
    the new spelling, never a silent reinterpretation. Takes a value, as the old flag did."""

    def __init__(self, option_strings: list[str], dest: str, new_spelling: str, **kwargs) -> None:
        self.new_spelling = new_spelling
        """What to write instead."""
        super().__init__(option_strings, dest, nargs="?", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        """Stop parsing with the replacement named."""
        parser.error(f"{option_string} is no longer accepted; write {self.new_spelling}")


def number_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number strictly between ``low`` and ``high`` (NaN is refused: it compares false)."""

    def parse(text: str) -> float:
        return _number(text, f"a number in ({low:g}, {high:g})", lambda value: low < value < high)

    parse.__name__ = f"number in ({low:g}, {high:g})"
    return parse


def writable_target(path: str | os.PathLike[str], flag: str, *, folder: bool = False) -> Path:
    """Prove that ``path`` can be written (a file, or with ``folder`` a folder to write into), creating nothing.

    Unlike :func:`writable_folder`, nothing is left behind: the check writes and removes one
    temporary file in the nearest folder that already exists, so that a command refused later
    (a bad input found after this check) leaves the output location as it was. Raises
    ConfigError naming ``flag``, the path and what would be right.
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
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag} {target}: cannot write there ({exc.strerror or exc}); name a path you can write to"
        ) from None
    return target

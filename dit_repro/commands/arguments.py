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

"""Argument types that validate a flag's value when it is parsed, so that argparse names the flag; the
check that an output path is writable before any work (:func:`dit_repro.atomic.writable_target`) is
re-exported here for the commands.

``type=at_least(1)`` turns ``--log-every 0`` into ``argument --log-every: must be an integer >= 1,
got 0`` before any work starts, instead of an error (or a traceback) deep inside the run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dit_repro.atomic import writable_target  # noqa: F401 - the commands import it from here


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


def number_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number strictly between ``low`` and ``high`` (NaN is refused: it compares false)."""

    def parse(text: str) -> float:
        return _number(text, f"a number in ({low:g}, {high:g})", lambda value: low < value < high)

    parse.__name__ = f"number in ({low:g}, {high:g})"
    return parse




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


def add_sampling_process_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--rank``, ``--world-size`` and ``--no-progress``: where and as which process a
    sampling command runs (``sample`` and ``fid-protocol``; torchrun's RANK/WORLD_SIZE fill the gaps)."""
    parser.add_argument(
        "--device", default="auto", help="auto (cuda:$LOCAL_RANK if available, else cpu), cpu, cuda[:N]"
    )
    parser.add_argument("--rank", type=at_least(0), default=None, help="this process's rank; default $RANK or 0")
    parser.add_argument(
        "--world-size", type=at_least(1), default=None, help="number of processes; default $WORLD_SIZE or 1"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

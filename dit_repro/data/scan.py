"""The one scan for unreadable images, run by ``train`` and ``extract`` before any work.

Every file of an image folder is opened and fully decoded once, with the same
:func:`~dit_repro.data.decode.decode_image` that later serves training and extraction (so a
refused image mode counts as unreadable too). The files that fail are left out of the source,
which then serves only readable images, each still with its own label, and they are listed
with their reason in the run record: ``env.json`` (``source.dataset.unreadable``) for training,
the cache manifest (``skipped``, and ``dataset.unreadable``) for extraction. A warning names
their count and the first few. With ``strict`` any unreadable file is an error instead, raised
before anything is written. Generated datasets (digits, synthetic) have no files and nothing
to scan.

Cost: one extra decode of every image before the first step. A 500x375 JPEG (quality 90) took
2.1 ms to scan on one core of a 2-core CPU (7 ms while other jobs shared it), so an
ImageNet-sized folder (1.28 M files) takes about 45 minutes on one thread. The scan runs
``workers`` threads (PIL releases the GIL while it decodes, Pillow PR #1224) and, under DDP,
each process scans its share. ``extract`` scans once per cache: a resumed extraction reuses
the list recorded in the manifest when the folder still lists the same files. The ranks of
``extract --rank/--world-size`` share no process group, so each of them scans the whole folder.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from dit_repro.data.decode import decode_image
from dit_repro.data.imagesource import DatasetError, ImageSource, UnreadableImageError
from dit_repro.distributed import gather_lists

SCAN_BLOCK = 4096
"""Files handed to the scan's threads at a time."""
SHOWN_IN_WARNING = 3
"""Unreadable files named in the warning (all of them are in the run record)."""
SHOWN_IN_ERROR = 10
"""Unreadable files named in the --strict error."""


class UnreadableImagesError(DatasetError):
    """``--strict`` and at least one unreadable image: the run is refused before anything is written."""

    def __init__(self, message: str, unreadable: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.unreadable = unreadable
        """Every unreadable file with its reason."""


def scan_files(
    root: Path, files: list[str], channels: int = 3, *, workers: int = 1, progress: bool = True
) -> list[dict[str, str]]:
    """Decode every file of ``files`` (relative to ``root``) once; ``{"file", "reason"}`` for each that fails.

    Runs ``workers`` threads: PIL releases the GIL while it decodes, so threads scale without
    the start-up and pickling of processes. The result is sorted by file, so it does not depend
    on the thread count.
    """

    def check(name: str) -> dict[str, str] | None:
        try:
            decode_image(root / name, channels)
        except UnreadableImageError as exc:
            return {"file": name, "reason": exc.reason}
        return None

    found: list[dict[str, str]] = []
    # delay: the bar appears only for a scan that takes more than a second.
    bar = tqdm(total=len(files), unit="img", desc="scan images", disable=not progress, delay=1.0)
    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # In blocks, so that a million files do not become a million pending futures at once.
        for start in range(0, len(files), SCAN_BLOCK):
            for entry in pool.map(check, files[start : start + SCAN_BLOCK]):
                if entry:
                    found.append(entry)
                bar.update(1)
    return sorted(found, key=lambda entry: entry["file"])


def describe_unreadable(unreadable: list[dict[str, str]], shown: int = SHOWN_IN_WARNING) -> str:
    """``a/x.png (reason); b/y.jpg (reason) and 4 more``: the first ``shown`` files with their reasons."""
    listed = "; ".join(f"{entry['file']} ({entry['reason']})" for entry in unreadable[:shown])
    rest = len(unreadable) - shown
    return listed + (f" and {rest} more" if rest > 0 else "")


def check_images(
    images: ImageSource,
    *,
    strict: bool = False,
    workers: int = 1,
    progress: bool = True,
    announce: bool = True,
    known: list[dict[str, str]] | None = None,
) -> list[dict[str, str]]:
    """Find the unreadable images of ``images`` and leave them out; return them (``{"file", "reason"}``).

    ``known`` is a list recorded by an earlier scan of the same files (a resumed extraction),
    used instead of scanning again. ``strict`` raises :class:`UnreadableImagesError` naming the
    files instead of leaving them out. ``announce`` prints the warning (the main process only).
    A source that is already checked is returned as it is. Raises :class:`DatasetError` when
    no image is readable.
    """
    if images.unreadable is not None:
        return images.unreadable
    found = known if known is not None else _scan(images, workers, progress)
    where = getattr(images, "root", images.kind)
    if found and strict:
        raise UnreadableImagesError(
            f"--strict: {len(found)} unreadable image(s) in {where}: {describe_unreadable(found, SHOWN_IN_ERROR)}. "
            "Repair or remove them, or leave out --strict to train on the readable ones (they are then "
            "listed in the run record)",
            found,
        )
    if found and len(found) == len(images):
        raise DatasetError(f"none of the {len(found)} images in {where} can be read: {describe_unreadable(found)}")
    images.leave_out(found)
    if found and announce:
        print(
            f"dit-repro: warning: left out {len(found)} unreadable image(s) of {where}: {describe_unreadable(found)} "
            "(all are listed in the run record; --strict refuses them)",
            file=sys.stderr,
        )
    return found


def recorded_unreadable(recorded: dict[str, Any], current: dict[str, Any]) -> list[dict[str, str]] | None:
    """The unreadable list of an earlier scan, if it covers exactly the files of ``current``; else None.

    ``recorded`` is a checked source's fingerprint (served ``files`` plus ``unreadable``),
    ``current`` the fingerprint of an unchecked source (every listed file). Reusing the list
    keeps a resumed extraction from decoding every image again.
    """
    unreadable = recorded.get("unreadable")
    if unreadable is None or "files" not in current or recorded.get("classes") != current.get("classes"):
        return None
    covered = sorted([*recorded.get("files", []), *(entry["file"] for entry in unreadable)])
    return list(unreadable) if covered == sorted(current["files"]) else None


def _scan(images: ImageSource, workers: int, progress: bool) -> list[dict[str, str]]:
    """Scan ``images``; under DDP each process scans an interleaved share and the shares are gathered."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    found = images.scan(workers=workers, progress=progress and rank == 0, part=(rank, world_size))
    return sorted(gather_lists(found), key=lambda entry: entry["file"])

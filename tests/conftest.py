"""Shared test set-up: offline hubs, a fixed thread count, and the CUDA skip."""

from __future__ import annotations

import os

# Without this a hub lookup retries for most of a minute before failing: tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI explores the same examples every run (a red CI then means a change, not a new draw);
# locally hypothesis keeps drawing new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Under pytest-xdist each worker process takes one core: one torch thread each (and one in the
# processes the tests start, which inherit OMP_NUM_THREADS), so that workers do not oversubscribe
# the cores; a run without xdist keeps two threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)"
)
"""Skip marker for tests that exercise GPU-only paths; combine with ``pytest.mark.gpu``."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a ``slow`` test run first; every ``gpu`` test is skipped, with the reason, without CUDA.

    The order matters under pytest-xdist (``--dist loadfile`` hands out files in this order): the
    long files start at once on the workers and the short ones fill in after, instead of one long
    file starting last while the other workers sit idle.
    """
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order within each group kept
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(requires_cuda)


@pytest.fixture(autouse=True)
def tf32_flags_restored():
    """Each test leaves the process's TF32 flags as it found them (through the legacy setters, which
    also settle a state a test mixed on purpose): under pytest-xdist a worker runs many files in one
    process, and a test that reads the flags must not see what an earlier file left."""
    from dit_repro.precision import restore_tf32_state, tf32_state

    saved = tf32_state()
    yield
    restore_tf32_state(saved)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run on one thread: on a shared CPU, synchronising two threads per op costs more than
    the maths (a 1-token DiT-S/2 sampled 250 steps: 136 s on two threads of a busy machine, 12 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

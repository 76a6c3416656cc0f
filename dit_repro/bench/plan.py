"""A benchmark run end to end: scale, inputs, rows in fresh processes, results document.

Scales. On a GPU the default is the paper's: DiT-XL/2, global batch 128, 256 px images, the
full-size SD-VAE architecture for live encoding (random weights unless ``--vae`` names real
ones: only speed is measured). On a CPU the default shrinks to a smoke scale that finishes in a
few minutes (DiT-S/2, batch 8, 32 px, the tiny test VAE, one thread per row); its absolute
numbers say nothing about the paper, and the CPU gate uses only machine-independent figures.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dit_repro.config import ConfigError, Features, Switches, TrainConfig
from dit_repro.switches import resolve_device

from .latent_cache import build_temporary_cache
from .matrices import Matrix
from .reference import Reference, candidate_root, checked_out, describe_candidate
from .results import device_block, results_document
from .runner import WORKER_COMMAND, MatrixRunner, RowJob, Schedule
from .schema import validate_results, write_results
from .stats import WarmupPolicy


@dataclass(frozen=True)
class BenchScale:
    """Model, data and timing of a run."""

    model: str
    """Model preset."""
    global_batch_size: int
    """Images per step."""
    image_size: int
    """Image side in pixels (the VAE's input; latents are 8x smaller)."""
    timed_steps: int
    """Timed steps per row after the warm-up."""
    block_steps: int
    """Steps per block of the interleaved schedule."""
    schedule: str
    """``sequential`` (GPU default) or ``interleaved`` (CPU default)."""
    warmup: WarmupPolicy
    """When a row's warm-up ends."""
    data: str
    """Dataset spec (synthetic by default: only speed and memory are measured)."""
    vae: str
    """VAE of the live rows and of the temporary cache."""
    num_classes: int | None
    """Label-embedding size (ImageNet's 1000 at the paper's scale)."""
    threads: int | None
    """torch threads per worker on a CPU (None: torch's default)."""
    smoke: bool
    """True when this is the CPU smoke scale rather than the paper's."""
    notes: tuple[str, ...] = field(default=())
    """What the reader must know about this scale."""
    ab_timed_steps: int | None = None
    """Timed steps per side in a same-run A/B, where more than ``timed_steps`` are needed (None: the same)."""

    def for_ab(self) -> BenchScale:
        """This scale as a same-run A/B times it."""
        return self if self.ab_timed_steps is None else dataclasses.replace(self, timed_steps=self.ab_timed_steps)

    def to_dict(self) -> dict[str, Any]:
        """The ``scale`` block of the results."""
        return {
            "model": self.model, "global_batch_size": self.global_batch_size, "image_size": self.image_size,
            "smoke": self.smoke, "timed_steps": self.timed_steps, "schedule": self.schedule,
            "block_steps": self.block_steps if self.schedule == "interleaved" else self.timed_steps,
            "warmup": self.warmup.to_dict(), "data": self.data, "vae": self.vae, "notes": list(self.notes),
        }


PAPER_SCALE = BenchScale(
    # Eager GPU rows settle within a few steps (allocator and cuBLAS/cuDNN heuristics); compiled
    # rows take longer and the steady detection waits for them. Steady = the medians of two adjacent
    # 3-step windows within 3 %; at least 6 steps. 30 timed steps keep a Table 4 run near 6 minutes
    # on one H100 while a GPU's step-to-step spread (well under 1 %) still resolves a 5 % change.
    model="DiT-XL/2", global_batch_size=128, image_size=256, timed_steps=30, block_steps=10,
    schedule="sequential", warmup=WarmupPolicy(window=3, rel_tol=0.03, min_steps=6, max_steps=60),
    data="synthetic:count=1024,classes=1000", vae="full-size-random", num_classes=1000, threads=None, smoke=False,
    notes=("paper scale (Table 4: DiT-XL/2, global batch 128, 256 px); the VAE of live rows has the SD-VAE "
           "architecture, with random weights unless --vae names real ones (speed and memory only)",),
)
"""The paper's Table 4 setting, used on a GPU."""

SMOKE_SCALE = BenchScale(
    # Rounds of two steps: the rows of one round are timed within about a second of each other,
    # so that drift of a shared machine stays paired (the CPU gate resamples whole rounds).
    # A/B: 120 steps per side (60 paired rounds). With 60, one row-pair in 42 of identical code came out
    # 5 % apart (bf16 rows on a loaded 2-core VM), and a 10 % slowdown of it was missed.
    model="DiT-S/2", global_batch_size=8, image_size=32, timed_steps=60, block_steps=2, ab_timed_steps=120,
    schedule="interleaved", warmup=WarmupPolicy(window=5, rel_tol=0.05, min_steps=10, max_steps=60),
    data="synthetic:count=64,classes=10", vae="tiny-random", num_classes=None, threads=1, smoke=True,
    notes=("CPU smoke scale: DiT-S/2, batch 8, 32 px, the tiny random test VAE, one thread per row; absolute "
           "numbers say nothing about the paper (DiT-XL/2, batch 128, 256 px on A100s)",
           "rows are interleaved in blocks, in a fresh shuffled order every round, so that machine drift "
           "cancels in ratios between rows"),
)
"""A few minutes on a CPU; checks that everything runs and gates machine-independent figures."""


def default_scale(device_type: str) -> BenchScale:
    """The paper's scale on a GPU, the smoke scale on a CPU."""
    return PAPER_SCALE if device_type == "cuda" else SMOKE_SCALE


def resolve_device_type(spec: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    if spec not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu or cuda")
    try:
        return resolve_device(spec).type
    except ValueError as exc:
        raise ConfigError(f"--device {spec}: {exc}") from None


@dataclass
class BenchRequest:
    """Everything ``dit-repro bench`` was asked for."""

    matrix: Matrix
    """The rows."""
    scale: BenchScale
    """Model, data and timing."""
    device_type: str
    """``cpu`` or ``cuda``."""
    cache_dir: str | None = None
    """Latent cache for the cached rows (None: a temporary one is made)."""
    seed: int = 0
    """Training seed of every row."""
    inject_slowdown: dict[str, float] = field(default_factory=dict)
    """Test-only: row name -> slowdown factor of its timed steps."""
    peak_flops: float | None = None
    """Override of the device's peak FLOP/s for MFU."""
    timeout_s: float = 3600.0
    """Longest wait for one reply of a worker."""
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    """The command line, stored in the results."""
    against: Reference | None = None
    """Same-run A/B: REF's code runs every row too, beside this code (``bench --against``); the scale
    then times ``scale.ab_timed_steps`` per side."""

    def __post_init__(self) -> None:
        if self.against is not None:
            self.scale = self.scale.for_ab()
        unknown = sorted(set(self.inject_slowdown) - {row.name for row in self.matrix.rows})
        if unknown:
            names = ", ".join(row.name for row in self.matrix.rows)
            raise ConfigError(f"--inject-slowdown names rows {unknown} that matrix {self.matrix.name!r} lacks; rows: {names}")

    def needs_cache(self) -> bool:
        """True when some row trains on cached latents."""
        return any(row.resolved().features is Features.CACHED for row in self.matrix.rows)

    def row_config(self, switches: dict[str, Any], cache_dir: str | None) -> TrainConfig:
        """The TrainConfig of one row (validated now, before any process starts).

        A cached row names no VAE: the cache's manifest records the VAE that made it, and building
        a full-size VAE only to compare fingerprints would cost the row seconds of fixed cost.
        """
        scale = self.scale
        cached = Switches(**switches).features is Features.CACHED
        return TrainConfig(
            model=scale.model, data=scale.data, image_size=scale.image_size, num_classes=scale.num_classes,
            cache_dir=cache_dir, vae=None if cached else scale.vae, global_batch_size=scale.global_batch_size, steps=0, seed=self.seed,
            device=self.device_type, switches=dict(switches),
        )

    def jobs(self, cache_dir: str | None, reference_root: Path | None = None) -> list[RowJob]:
        """One job per row; with ``reference_root`` (an A/B) two, the candidate's and REF's.

        The two sides of a row are adjacent: the sequential (GPU) schedule runs them back to back,
        the candidate first on even rows and REF first on odd ones, so that neither side always
        follows the other; the interleaved (CPU) schedule alternates them block by block.
        """
        jobs = []
        for index, row in enumerate(self.matrix.rows):
            cfg = self.row_config(row.switches, cache_dir)
            workload = {"kind": "trainer", "config": cfg.to_dict()}
            inject = self.inject_slowdown.get(row.name)
            if reference_root is None:
                jobs.append(RowJob(row.name, cfg.switches.to_dict(), workload, inject, threads=self.scale.threads))
                continue
            sides = [RowJob(row.name, cfg.switches.to_dict(), workload, inject, threads=self.scale.threads,
                            side="candidate", code_root=candidate_root()),
                     RowJob(row.name, cfg.switches.to_dict(), workload, None, threads=self.scale.threads,
                            side="reference", code_root=reference_root)]
            jobs.extend(sides if index % 2 == 0 else sides[::-1])
        return jobs


class EnvironmentProbeError(RuntimeError):
    """The environment fingerprint could not be taken."""


def default_environment(device_type: str) -> dict[str, Any]:
    """dit_repro.envinfo's fingerprint of the device type (versions, driver, git commit, attention).

    Taken by ``dit-repro env --json`` in a child process: its attention probes then leave no CUDA
    context or cached blocks in this process while the rows run.
    """
    command = [sys.executable, "-m", "dit_repro.cli", "env", "--device", device_type, "--json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProbeError(f"the environment fingerprint ({' '.join(command)}) took over 600 s") from exc
    if done.returncode != 0:
        raise EnvironmentProbeError(f"the environment fingerprint failed ({' '.join(command)}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def paired_path(results_path: Path) -> Path:
    """Where the reference side of an A/B is written beside the candidate's results: ``results-reference.json``."""
    return results_path.with_name(f"{results_path.stem}-reference{results_path.suffix}")


@dataclass
class BenchRun:
    """The documents a bench wrote: the results, and in an A/B also REF's side."""

    results: dict[str, Any]
    """The (candidate's) validated results document."""
    reference: dict[str, Any] | None = None
    """REF's validated results document in an A/B, else None."""


@contextmanager
def _reference_code(request: BenchRequest) -> Iterator[Path | None]:
    if request.against is None:
        yield None
        return
    with checked_out(request.against) as root:
        yield root


def run_bench(request: BenchRequest, log_dir: Path,
              environment: Callable[[str], dict[str, Any]] = default_environment,
              worker_command: tuple[str, ...] = WORKER_COMMAND, partial_out: Path | None = None) -> BenchRun:
    """Run every row (both sides of each in an A/B) and return the validated results document(s).

    ``environment`` maps the device type to the fingerprint; it is taken before the rows (see
    default_environment). With ``partial_out``, the results so far are written there atomically
    before the first row and after every finished row, the rows still to come marked ``not_run``
    (REF's side beside it, see paired_path). On the sequential schedule (the GPU default) a bench
    killed by a CI time limit thus keeps the rows it measured, and the gate fails the rest; so does
    an interleaved A/B, whose rows run pair by pair. A plain interleaved run finishes all its rows at
    the end, so when killed it leaves every row ``not_run``.
    """
    scale = request.scale
    fingerprint = environment(request.device_type)
    # The hardware key from the child's fingerprint: asking torch here would initialise CUDA in this
    # process, which is what taking the fingerprint in a child avoids.
    device = device_block(fingerprint["hardware_key"], request.peak_flops)
    ab = None
    if request.against is not None:
        ab = {"run_id": uuid.uuid4().hex, "against": request.against.spec,
              "reference_commit": request.against.commit, "candidate": describe_candidate()}

    results_name = (partial_out or Path("results.json")).name
    paired_names = {"candidate": paired_path(Path(results_name)).name, "reference": results_name}

    def document(jobs: list[RowJob], side: str | None) -> dict[str, Any]:
        block = None if ab is None or side is None else {**ab, "role": side, "paired_results": paired_names[side]}
        return results_document(
            command=request.command, matrix=request.matrix, scale=scale.to_dict(), device=device,
            environment=fingerprint, jobs=[job for job in jobs if job.side == side], ab=block)

    def documents(jobs: list[RowJob]) -> BenchRun:
        if ab is None:
            return BenchRun(document(jobs, None))
        return BenchRun(document(jobs, "candidate"), document(jobs, "reference"))

    schedule = Schedule(scale.schedule, scale.timed_steps, scale.block_steps, scale.warmup, request.timeout_s)
    runner = MatrixRunner(schedule, log_dir, worker_command)
    with tempfile.TemporaryDirectory(prefix="dit-repro-bench-cache-") as tmp, _reference_code(request) as ref_root:
        if request.against is not None:
            runner.say(f"A/B in one run: this code ({ab['candidate']}) against {request.against.how}, checked out "
                       f"in {ref_root}; every row runs twice, {request.scale.timed_steps} timed steps per side")
        cache_dir = request.cache_dir
        if cache_dir is None and request.needs_cache():
            runner.say(f"building a temporary latent cache ({scale.data}, {scale.image_size} px, VAE {scale.vae})")
            cache_dir = str(build_temporary_cache(
                Path(tmp) / "cache", data=scale.data, vae=scale.vae, image_size=scale.image_size,
                device=request.device_type, batch_size=min(scale.global_batch_size, 32)))
        jobs = request.jobs(cache_dir, ref_root)

        def write_partial(_: RowJob | None = None) -> None:
            if partial_out is not None and any(job.active for job in jobs):
                write_run(partial_out, documents(jobs))

        write_partial()  # every row not_run yet: no earlier run's file can pass for this one's
        if ab is not None and schedule.kind == "interleaved":
            # The two sides of a row take turns block by block, one row after the other: drift cancels
            # within each row's pair, and only two workers (not two per row) hold memory at a time.
            for pair in zip(jobs[::2], jobs[1::2], strict=True):
                runner.run(list(pair), on_row_done=write_partial)
        else:
            runner.run(jobs, on_row_done=write_partial)
    run = documents(jobs)
    validate_results(run.results, source="the results of this run")
    if run.reference is not None:
        validate_results(run.reference, source="the reference side of this run")
    return run


def write_run(results_path: Path, run: BenchRun) -> list[Path]:
    """Write the run's documents (REF's side beside the results in an A/B); returns the paths."""
    paths = [write_results(results_path, run.results)]
    if run.reference is not None:
        paths.append(write_results(paired_path(results_path), run.reference))
    return paths


def with_overrides(scale: BenchScale, **overrides: Any) -> BenchScale:
    """``scale`` with the fields the user set (None values are ignored).

    The default scale's notes describe its own model, batch, size and VAE; once any of those is
    overridden a note saying what actually runs takes the first note's place.
    """
    changed = {k: v for k, v in overrides.items() if v is not None}
    if "timed_steps" in changed:
        changed["ab_timed_steps"] = None  # steps given by the user hold for an A/B too
    result = dataclasses.replace(scale, **changed)
    described = ("model", "global_batch_size", "image_size", "vae", "data")
    if any(getattr(result, key) != getattr(scale, key) for key in described):
        label = "CPU smoke scale, customised" if scale.smoke else "custom scale"
        actual = (f"{label}: {result.model}, batch {result.global_batch_size}, {result.image_size} px, "
                  f"data {result.data}, VAE {result.vae}; only figures measured side by side in this run compare")
        result = dataclasses.replace(result, notes=(actual, *scale.notes[1:]))
    return result

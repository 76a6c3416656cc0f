"""Schema-valid benchmark results files for the verifier's tests, built with the bench's own assembly code."""

from __future__ import annotations

from dit_repro.bench.schema import validate_results
from dit_repro.verify.results import ResultsFile
from tests.bench_documents import make_job, make_results


def results_file(rows: dict[str, object], *, device: str = "cuda", matrix: str = "table4", model: str = "DiT-S/2",
                 batch: int = 8, image_size: int = 32, name: str = "run.json") -> ResultsFile:
    """A results file whose rows are lists of step times, or a status such as 'oom' or 'unavailable'."""
    jobs = [make_job(row, times=None, device_type=device, status=spec) if isinstance(spec, str)
            else make_job(row, times=list(spec), device_type=device) for row, spec in rows.items()]
    doc = make_results(jobs, device_type=device, matrix_name=matrix)
    doc["scale"].update(model=model, global_batch_size=batch, image_size=image_size)
    return ResultsFile(name, validate_results(doc))


def flat(seconds: float, n: int = 20) -> list[float]:
    """``n`` equal step times."""
    return [seconds] * n

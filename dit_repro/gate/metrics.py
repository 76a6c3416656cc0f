"""Which figures the gate compares, by reference (mode) and device.

``ab`` (REF's side of one same-run A/B): both sides ran on this machine at once. On a GPU
(sequential, the sides of a row back to back) every row's step time, peak allocated and reserved
memory, saved-activation bytes and multiply-adds, plus the matrix's named ratios. On a CPU
(interleaved) each row's absolute CPU time per step, by a bootstrap that draws the same rounds
for both sides (they were timed together), plus ratios, saved bytes and multiply-adds. A uniform
slowdown of every row is caught.

``stored`` (a baseline recorded on hardware with the same key): on a GPU as in ``ab``. On a CPU,
absolute times and memory move between runs and days, so only each row's step time *relative to
the other rows of the same run* (the change of each row divided by the median change over all
rows, which absorbs the speed of the machine), the matrix's named ratios, saved-activation bytes
and multiply-adds are compared; a uniform slowdown of every row then passes. Times on a CPU are
the process's CPU time per step, which leaves out the time other processes held the core.

``portable`` (a baseline of any hardware): only what does not depend on the machine:
multiply-adds, saved-activation bytes and the ratios between them; and rows that failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dit_repro.bench.baselines import FAILED_STATUSES, failure_summary

from .compare import (
    Comparison,
    RunSamples,
    Thresholds,
    Verdict,
    compare_bootstrap,
    compare_exact,
    compare_round_ratios,
    compare_samples,
)

MODES = ("ab", "stored", "portable")
"""What the gate compares against (see the module docstring)."""

MIN_ROWS_FOR_RELATIVE_TIME = 3
"""With fewer rows the median change is not a row-independent measure of the machine."""


@dataclass
class GateInputs:
    """Options of the comparison that are not thresholds."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    """When a change counts."""
    resamples: int = 2000
    """Bootstrap resamples for ratios between rows."""
    seed: int = 0
    """Seed of the bootstrap (the gate's verdict is reproducible)."""


def interleave_block(results: dict[str, Any]) -> int | None:
    """Steps per round of an interleaved run (None for a sequential one)."""
    scale = results["scale"]
    return scale["block_steps"] if scale["schedule"] == "interleaved" else None


def step_clock(baseline: dict[str, Any], current: dict[str, Any]) -> str:
    """``cpu_times_s`` when every timed row of both runs has CPU times (CPU runs), else ``step_times_s``."""
    timed = [row["timing"] for doc in (baseline, current) for row in doc["rows"] if row["timing"] is not None]
    return "cpu_times_s" if timed and all(t["cpu_times_s"] is not None for t in timed) else "step_times_s"


def _fail(metric: str, unit: str, base: float | None, cur: float | None, threshold: float, note: str) -> Comparison:
    return Comparison(metric, unit, base, cur, None, None, Verdict.FAIL, threshold, note)


def _status_comparison(name: str, base_row: dict[str, Any], cur_row: dict[str, Any] | None,
                       thr: Thresholds) -> Comparison | None:
    """A comparison decided by the rows' statuses alone, or None when both are ok."""
    metric = f"{name}: status"
    if cur_row is None:
        return _fail(metric, "", None, None, thr.time, "row is in the baseline but missing from the results")
    base_status, cur_status = base_row["status"], cur_row["status"]
    if cur_status in FAILED_STATUSES:
        return _fail(metric, "", None, None, thr.time, failure_summary(cur_row))
    if base_status == cur_status == "ok":
        return None
    if base_status == cur_status:  # both oom, or both unavailable: the same result
        return Comparison(metric, "", None, None, None, None, Verdict.PASS, thr.time, f"{cur_status} in both")
    if base_status == "ok":
        return Comparison(metric, "", None, None, None, None, Verdict.REGRESSION, thr.time,
                          f"was ok, now {cur_status}")
    if cur_status == "ok":
        return Comparison(metric, "", None, None, None, None, Verdict.IMPROVEMENT, thr.time,
                          f"was {base_status}, now runs")
    return Comparison(metric, "", None, None, None, None, Verdict.FAIL, thr.time,
                      f"was {base_status}, now {cur_status}")


def _get(row: dict[str, Any], *path: str) -> Any:
    value: Any = row
    for key in path:
        value = None if value is None else value.get(key)
    return value


def _exact_metrics(name: str, base_row: dict[str, Any], cur_row: dict[str, Any], thr: Thresholds) -> list[Comparison]:
    """Saved-activation bytes (memory threshold) and forward multiply-adds (time threshold)."""
    out = []
    for path, label, unit, threshold in (
        (("saved_activations", "bytes"), "saved activations", "bytes", thr.memory),
        (("compute", "forward_gmacs_per_image"), "forward multiply-adds per image", "gmacs", thr.time),
    ):
        base, cur = _get(base_row, *path), _get(cur_row, *path)
        metric = f"{name}: {label}"
        if base is None:
            continue
        if cur is None:
            out.append(_fail(metric, unit, base, None, threshold, "in the baseline, missing from the results"))
        else:
            out.append(compare_exact(metric, unit, base, cur, threshold))
    return out


def _gpu_row_metrics(name: str, base_row: dict[str, Any], cur_row: dict[str, Any], thr: Thresholds) -> list[Comparison]:
    out = []
    base_times, cur_times = _get(base_row, "timing", "step_times_s"), _get(cur_row, "timing", "step_times_s")
    if base_times:
        if not cur_times:
            out.append(_fail(f"{name}: step time", "s", float(np.median(base_times)), None, thr.time,
                             "in the baseline, missing from the results"))
        else:
            out.append(compare_samples(f"{name}: step time", "s", base_times, cur_times, thr.time, thr.alpha))
    for kind in ("allocated", "reserved"):
        metric = f"{name}: peak {kind} memory"
        base_steps = _get(base_row, "memory", f"per_step_max_{kind}_bytes")
        cur_steps = _get(cur_row, "memory", f"per_step_max_{kind}_bytes")
        base_max, cur_max = _get(base_row, "memory", f"max_{kind}_bytes"), _get(cur_row, "memory", f"max_{kind}_bytes")
        if base_max is None:
            continue
        if cur_max is None:
            out.append(_fail(metric, "bytes", base_max, None, thr.memory, "in the baseline, missing from the results"))
        elif base_steps and cur_steps:
            out.append(compare_samples(metric, "bytes", base_steps, cur_steps, thr.memory, thr.alpha))
        else:
            out.append(compare_exact(metric, "bytes", base_max, cur_max, thr.memory))
    return out + _exact_metrics(name, base_row, cur_row, thr)


def _relative_time_metrics(base_rows: dict[str, dict], cur_rows: dict[str, dict], blocks: tuple[int | None, int | None],
                           clock: str, inputs: GateInputs,
                           rng: np.random.Generator) -> tuple[dict[str, Comparison], list[str]]:
    """Each row's step-time change divided by the median change over the rows (CPU gate), by row."""
    names = [n for n, row in base_rows.items()
             if _get(row, "timing", clock) and _get(cur_rows.get(n), "timing", clock)]
    if len(names) < MIN_ROWS_FOR_RELATIVE_TIME:
        return {}, [f"relative step times not compared: {len(names)} row(s) timed in both runs, "
                    f"{MIN_ROWS_FOR_RELATIVE_TIME} needed to tell one row's change from the machine's speed"]
    base = RunSamples({n: base_rows[n]["timing"][clock] for n in names}, blocks[0])
    cur = RunSamples({n: cur_rows[n]["timing"][clock] for n in names}, blocks[1])
    notes = [f"machine speed factor (median change of the {len(names)} timed rows' step times): "
             f"x{machine_speed_factor(base, cur):.3f}"]
    return {name: relative_time_comparison(name, base, cur, inputs, rng) for name in names}, notes


def machine_speed_factor(base: RunSamples, cur: RunSamples) -> float:
    """Median over the rows of each row's change of median step time (current / baseline)."""
    return float(np.median([np.median(cur.rows[n]) / np.median(base.rows[n]) for n in base.rows]))


def relative_time_comparison(name: str, base: RunSamples, cur: RunSamples, inputs: GateInputs,
                             rng: np.random.Generator) -> Comparison:
    """Row ``name``'s step-time change divided by the machine speed factor, judged by a block bootstrap.

    ``base`` and ``cur`` hold the same rows (at least MIN_ROWS_FOR_RELATIVE_TIME).
    """
    names = list(base.rows)

    def change(b: dict[str, np.ndarray], c: dict[str, np.ndarray]) -> np.ndarray:
        per_row = np.stack([c[n] / b[n] for n in names])  # (rows, resamples)
        return (c[name] / b[name]) / np.median(per_row, axis=0)

    return compare_bootstrap(
        f"{name}: step time relative to the run", "s", change, base, cur,
        (float(np.median(base.rows[name])), float(np.median(cur.rows[name]))), inputs.thresholds.time,
        inputs.thresholds.alpha, higher_is_better=False, resamples=inputs.resamples, rng=rng,
        note="bootstrap; change divided by the machine speed factor")


def ab_time_comparison(name: str, base: RunSamples, cur: RunSamples, inputs: GateInputs,
                       rng: np.random.Generator) -> Comparison:
    """Row ``name``'s step time, candidate against REF of one interleaved A/B run: median of the paired
    round ratios, bootstrap over rounds (see dit_repro.gate.compare)."""
    return compare_round_ratios(
        f"{name}: step time", "s", lambda medians: medians[name], RunSamples({name: base.rows[name]}, base.block),
        RunSamples({name: cur.rows[name]}, cur.block),
        (float(np.median(base.rows[name])), float(np.median(cur.rows[name]))), inputs.thresholds.time,
        inputs.thresholds.alpha, higher_is_better=False, resamples=inputs.resamples, rng=rng,
        note="same-run A/B; median of paired round ratios, bootstrap over rounds")


def _ab_time_metrics(base_rows: dict[str, dict], cur_rows: dict[str, dict], blocks: tuple[int | None, int | None],
                     clock: str, inputs: GateInputs, rng: np.random.Generator) -> dict[str, Comparison]:
    names = [n for n, row in base_rows.items() if _get(row, "timing", clock) and _get(cur_rows.get(n), "timing", clock)]
    base = RunSamples({n: base_rows[n]["timing"][clock] for n in names}, blocks[0])
    cur = RunSamples({n: cur_rows[n]["timing"][clock] for n in names}, blocks[1])
    if base.block is None:  # the sides ran one after the other (--schedule sequential): no rounds to pair
        thr = inputs.thresholds
        return {n: compare_samples(f"{n}: step time", "s", base.rows[n], cur.rows[n], thr.time, thr.alpha)
                for n in names}
    return {name: ab_time_comparison(name, base, cur, inputs, rng) for name in names}


def _ratio_metrics(ratios: list[dict[str, Any]], base_rows: dict[str, dict], cur_rows: dict[str, dict],
                   blocks: tuple[int | None, int | None], clock: str, inputs: GateInputs,
                   rng: np.random.Generator, mode: str) -> list[Comparison]:
    """The matrix's named ratios between rows of one run (only the noise-free ones when ``portable``)."""
    thr = inputs.thresholds
    out = []
    for ratio in ratios:
        num, den = ratio["numerator"], ratio["denominator"]
        rows = {"b_num": base_rows.get(num), "b_den": base_rows.get(den), "c_num": cur_rows.get(num),
                "c_den": cur_rows.get(den)}
        if ratio["metric"] == "time" and mode == "portable":
            continue  # a time ratio moves with the instruction set
        if ratio["metric"] == "time":
            path, unit, threshold = ("timing", clock), "x", thr.time
        else:
            path, unit, threshold = ("saved_activations", "bytes"), "x", thr.memory
        values = {k: _get(row, *path) for k, row in rows.items()}
        if values["b_num"] is None or values["b_den"] is None:
            continue  # the baseline has no such figure (e.g. a row ran out of memory): nothing to keep
        if values["c_num"] is None or values["c_den"] is None:
            out.append(_fail(ratio["name"], unit, None, None, threshold, "a row of the ratio has no figure now"))
            continue
        if ratio["metric"] == "time":
            def change(b: dict[str, np.ndarray], c: dict[str, np.ndarray], n: str = num, d: str = den) -> np.ndarray:
                return (c[n] / c[d]) / (b[n] / b[d])

            base = RunSamples({num: values["b_num"], den: values["b_den"]}, blocks[0])
            cur = RunSamples({num: values["c_num"], den: values["c_den"]}, blocks[1])
            shown = (float(np.median(values["b_num"]) / np.median(values["b_den"])),
                     float(np.median(values["c_num"]) / np.median(values["c_den"])))
            if mode == "ab" and blocks[0] is not None:
                # (c_num / c_den) / (b_num / b_den) = row num's paired change / row den's
                out.append(compare_round_ratios(
                    ratio["name"], unit, lambda m, n=num, d=den: m[n] / m[d], base, cur, shown, threshold,
                    thr.alpha, ratio["higher_is_better"], inputs.resamples, rng,
                    note="same-run A/B; ratio of the rows' median paired round ratios"))
            else:
                out.append(compare_bootstrap(ratio["name"], unit, change, base, cur, shown, threshold, thr.alpha,
                                             ratio["higher_is_better"], inputs.resamples, rng))
        else:
            out.append(compare_exact(ratio["name"], unit, values["b_num"] / values["b_den"],
                                     values["c_num"] / values["c_den"], threshold, ratio["higher_is_better"]))
    return out


def gate_comparisons(baseline: dict[str, Any], current: dict[str, Any], inputs: GateInputs,
                     mode: str = "stored") -> tuple[list[Comparison], list[str]]:
    """Every comparison of ``current`` against ``baseline`` in ``mode``, and notes on what was (not) compared."""
    if mode not in MODES:
        raise ValueError(f"unknown gate mode {mode!r}; one of {', '.join(MODES)}")
    thr = inputs.thresholds
    rng = np.random.default_rng(inputs.seed)
    cpu = current["device"]["type"] == "cpu"
    base_rows = {row["name"]: row for row in baseline["rows"]}
    cur_rows = {row["name"]: row for row in current["rows"]}
    notes = []
    if mode == "portable":
        notes.append("portable: the reference may come from other hardware, so only multiply-adds, "
                     "saved-activation bytes and their ratios are compared (and failed rows fail)")
    elif cpu and mode == "stored":
        notes.append("CPU gate against a stored baseline: absolute step times and memory move between runs and are "
                     "not gated; compared are step times relative to the other rows of the same run, ratios between "
                     "rows, saved-activation bytes and multiply-adds.")
    elif cpu:
        notes.append("CPU gate, same-run A/B: the two sides of each row took turns in the same rounds on this "
                     "machine, so absolute step times compare (each round a paired ratio), with ratios, "
                     "saved-activation bytes and multiply-adds.")
    blocks = (interleave_block(baseline), interleave_block(current))
    clock = step_clock(baseline, current)
    if clock == "cpu_times_s" and mode != "portable":
        notes.append("times compared as process CPU time per step: on a shared machine wall time also counts "
                     "the time other processes held the core")
    per_row: dict[str, list[Comparison]] = {}
    both_ok: dict[str, dict] = {}
    for name, base_row in base_rows.items():
        cur_row = cur_rows.get(name)
        if mode == "portable":
            status = None
            if cur_row is not None and cur_row["status"] in FAILED_STATUSES:
                status = _fail(f"{name}: status", "", None, None, thr.time, failure_summary(cur_row))
            elif cur_row is None or not base_row["status"] == cur_row["status"] == "ok":
                continue  # ok on one machine, oom on the other: nothing portable to compare
        else:
            status = _status_comparison(name, base_row, cur_row, thr)
        if status is not None:
            per_row[name] = [status]
            continue
        assert cur_row is not None
        both_ok[name] = base_row
        per_row[name] = (_gpu_row_metrics(name, base_row, cur_row, thr) if not cpu and mode != "portable"
                         else _exact_metrics(name, base_row, cur_row, thr))
    if cpu and mode == "stored":
        relative, relative_notes = _relative_time_metrics(both_ok, cur_rows, blocks, clock, inputs, rng)
        for name, comparison in relative.items():
            per_row[name].insert(0, comparison)
        notes.extend(relative_notes)
    elif cpu and mode == "ab":
        for name, comparison in _ab_time_metrics(both_ok, cur_rows, blocks, clock, inputs, rng).items():
            per_row[name].insert(0, comparison)
    out = [comparison for comparisons in per_row.values() for comparison in comparisons]
    out.extend(_ratio_metrics(baseline["matrix"]["ratios"], base_rows, cur_rows, blocks, clock, inputs, rng, mode))
    for name in cur_rows:
        if name not in base_rows:
            out.append(Comparison(f"{name}: status", "", None, None, None, None, Verdict.NEW, thr.time,
                                  "not in the reference; record a new baseline (or A/B) to gate it"))
    return out, notes

"""The stored baselines: the paper's numbers and the measured CPU baseline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from dit_repro.bench.baselines import FAILED_STATUSES, baseline_name
from dit_repro.bench.hardware import key_slug
from dit_repro.bench.plan import SMOKE_SCALE
from dit_repro.bench.schema import load_results, write_results
from dit_repro.cli import main
from dit_repro.gate import EXIT_DATA_ERROR, EXIT_PASS

BASELINES = Path(__file__).resolve().parent.parent / "baselines"


CPU_BASELINES = sorted(BASELINES.glob("cpu-*/*.json"))


@pytest.mark.parametrize("path", CPU_BASELINES, ids=[f"{p.parent.name}/{p.name}" for p in CPU_BASELINES])
def test_committed_cpu_baselines_are_valid_and_complete(path: Path) -> None:
    baseline = load_results(path)
    device = baseline["device"]
    # Keyed by hardware: the folder is the key's slug, and the slug follows from the key.
    assert device["type"] == "cpu" and path.parent.name == device["slug"] == key_slug(device["hardware_key"])
    assert path.name == baseline_name(baseline)
    assert not [r["name"] for r in baseline["rows"] if r["status"] in FAILED_STATUSES]
    assert all(r["injected_slowdown"] is None for r in baseline["rows"])
    # The CPU gate compares saved activations and relative times: every ok row must carry both.
    for row in baseline["rows"]:
        if row["status"] == "ok":
            assert row["saved_activations"]["bytes"] > 0 and len(row["timing"]["step_times_s"]) > 1


def test_the_smoke_scale_has_a_committed_cpu_baseline() -> None:
    names = {p.name for p in CPU_BASELINES}
    expected = f"dit-s2-b{SMOKE_SCALE.global_batch_size}-{SMOKE_SCALE.image_size}px-table4.json"
    assert expected in names, f"record it: dit-repro bench --device cpu --record (expected baselines/cpu-*/{expected})"


def _smoke_baseline() -> Path:
    expected = f"dit-s2-b{SMOKE_SCALE.global_batch_size}-{SMOKE_SCALE.image_size}px-table4.json"
    return next(p for p in CPU_BASELINES if p.name == expected)


def test_a_copy_keyed_to_another_cpu_model_is_refused_naming_both_keys(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    committed = load_results(_smoke_baseline())
    other = copy.deepcopy(committed)
    other["device"]["hardware_key"]["name"] = "AMD EPYC 9654 96-Core Processor"
    other["device"]["slug"] = key_slug(other["device"]["hardware_key"])
    stored = write_results(tmp_path / "baselines" / other["device"]["slug"] / _smoke_baseline().name, other)
    # The results of a run on the committed baseline's own hardware: identical figures, other key.
    results = write_results(tmp_path / "results.json", committed)
    mine, theirs = committed["device"], other["device"]
    for baselines in (tmp_path / "baselines", stored):
        assert main(["gate", str(results), "--baselines", str(baselines), "--report-dir", str(tmp_path)]) == EXIT_DATA_ERROR
        err = capsys.readouterr().err
        assert mine["slug"] in err and theirs["slug"] in err, err
        assert mine["hardware_key"]["name"] in err and "AMD EPYC 9654" in err, err
        assert "step time" not in err
    # What does not depend on the machine may still be checked against it.
    assert main(["gate", str(results), "--baselines", str(stored), "--portable", "--report-dir", str(tmp_path)]) == EXIT_PASS
    out = capsys.readouterr().out
    assert "only machine-independent figures" in out and "saved activations" in out
    assert "step time" not in out and "speed-up" not in out

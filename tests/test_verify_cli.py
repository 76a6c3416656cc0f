"""``dit-repro verify`` end to end on a few cheap claims, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dit_repro.cli import main

CHEAP = ["t1-exp1-average", "t2-params-ditxl2", "t2-params-ditl2", "headline-speed-95", "amp-speed-a100x2"]


def test_verify_writes_the_report_and_prints_a_verdict_per_claim(tmp_path: Path, capsys) -> None:
    code = main(["verify", "--only", *CHEAP, "--skip-equivalence", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("report.md", "report.json", "speed.png", "memory.png"):
        assert (tmp_path / name).is_file(), name
    verdicts = {c["id"]: c["verdict"] for c in json.loads((tmp_path / "report.json").read_text())["claims"]}
    assert verdicts == {
        "t1-exp1-average": "inconsistent in the paper itself",
        "t2-params-ditxl2": "reproduced",
        "t2-params-ditl2": "inconsistent in the paper itself",
        "headline-speed-95": "inconsistent in the paper itself",
        "amp-speed-a100x2": "not checkable here",
    }
    assert "t2-params-ditxl2" in out and "reproduced" in out and "report:" in out


def test_an_unknown_claim_id_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["verify", "--only", "no-such-claim", "--out", str(tmp_path)]) == 2
    assert "no claim 'no-such-claim'" in capsys.readouterr().err


def test_a_broken_claims_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "claims.json"
    bad.write_text('{"schema": "dit-repro/claims"}')
    assert main(["verify", "--claims", str(bad), "--out", str(tmp_path)]) == 2
    assert "does not follow claims.schema.json" in capsys.readouterr().err


def test_a_missing_results_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["verify", "--results", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU --scale small runs the benchmark")
def test_small_scale_without_a_gpu_says_what_runs_instead(tmp_path: Path, capsys) -> None:
    assert main(["verify", "--scale", "small", "--out", str(tmp_path)]) == 2
    assert "--scale small needs a CUDA device" in capsys.readouterr().err

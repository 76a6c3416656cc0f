"""The commands chained as CI chains them: ``bench --record``, ``bench --inject-slowdown``, ``gate``.

This checks the plumbing (a baseline recorded under this hardware's key is found again, the
injected row is marked, the gate reads both files and answers 0 or 1), not the verdict: whether a
slowdown measured live is caught depends on the machine's load, which is a benchmark's business
(`dit-repro gate --self-test`). The verdict on real step times is tested on a recording
(test_gate_statistics.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dit_repro.bench.hardware import cpu_key, key_slug
from dit_repro.gate import EXIT_PASS, EXIT_REGRESSION


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dit_repro.cli", *argv], capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_bench_record_then_an_injected_bench_then_the_gate_against_this_hardware_s_baseline(tmp_path: Path) -> None:
    # Pixel-space rows: no VAE and no latent cache to build, so the commands finish quickly.
    rows = "plain@features:pixels;ckpt@ckpt:full+features:pixels;tf32@precision:tf32+features:pixels"
    common = ["bench", "--device", "cpu", "--matrix", f"tiny={rows}",
              "--batch-size", "2", "--image-size", "16", "--steps", "8", "--block-steps", "2", "--warmup-max", "4"]
    baselines = tmp_path / "baselines"
    done = _cli(*common, "--out", str(tmp_path / "base" / "results.json"), "--record", str(baselines))
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = baselines / key_slug(cpu_key()) / "dit-s2-b2-16px-tiny.json"
    assert f"baseline written: {recorded}" in done.stdout and "CPU smoke scale" in done.stderr
    assert json.loads(recorded.read_text())["device"]["hardware_key"] == cpu_key()

    slowed = tmp_path / "slowed" / "results.json"
    done = _cli(*common, "--out", str(slowed), "--inject-slowdown", "ckpt=1.5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| ckpt | ok (slowed x1.5) |" in done.stdout
    assert [row["injected_slowdown"] for row in json.loads(slowed.read_text())["rows"]] == [None, 1.5, None]

    gate = _cli("gate", str(slowed), "--baselines", str(baselines))
    assert gate.returncode in (EXIT_PASS, EXIT_REGRESSION), gate.stdout + gate.stderr
    assert f"reference: stored baseline {recorded} (hardware key matches)" in gate.stdout
    assert "CPU gate against a stored baseline" in gate.stdout
    for row in ("plain", "ckpt", "tf32"):
        assert f"| {row}: step time relative to the run |" in gate.stdout
    assert (tmp_path / "slowed" / "gate.md").exists() and (tmp_path / "slowed" / "gate.png").exists()

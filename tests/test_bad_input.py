"""Bad input through the command line, as a new user hits it: every command, refused fast and cleanly.

Each case runs ``dit-repro`` in-process (``main(argv)``; a subprocess would cost seconds of imports
per case) with one bad input: a number out of range, a missing file, an output under a regular file
(unwritable for every user, root included), a junk file where data is expected, or a name with
``../`` where a name becomes a path. Every case must

* exit non-zero (2: usage or data error), through argparse or the command's own error message,
* print no traceback,
* name the flag or the file at fault (the ``expected`` texts), and say nothing it must not
  (``forbidden``: torch's advice to drop ``weights_only``, numpy's "pickled data" for a junk file,
  "non-finite" for too few images),
* leave nothing behind: the output location is not created, the inputs and the working folder
  are unchanged.

Only inputs that are refused before any work are listed here, so the file runs in seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dit_repro.cli import COMMANDS, main
from dit_repro.fid.extractors import INCEPTION_WEIGHTS_SHA256
from tests.bench_documents import make_job, make_results, noisy_times

TRAIN = ["train", "--device", "cpu", "--steps", "1"]
FID = ["fid", "--extractor", "proxy", "--device", "cpu"]
BENCH = ["bench", "--device", "cpu"]
NEVER = ("Traceback",)
"""Texts no refusal may print."""


def case(command: str, argv: list[str], expected: list[str], forbidden: tuple[str, ...] | list[str] = (), *,
         bug: str | None = None) -> object:
    """One bad input: ``argv`` with ``{in}`` (the inputs folder) and ``{out}`` (an output path that must stay
    absent), the texts stderr must hold and those it must not; ``bug`` marks a known failure, with its reason."""
    marks = [pytest.mark.xfail(strict=False, reason=bug)] if bug else []
    return pytest.param(command, argv, expected, list(forbidden), marks=marks, id=" ".join(argv)[:90])


CASES = [
    # info
    case("info", ["info", "--image-size", "0"], ["--image-size", ">= 1, got 0"]),
    case("info", ["info", "--num-classes", "-1"], ["--num-classes"]),
    case("info", ["info", "--model", "../x"], ["unknown model preset '../x'"]),
    case("info", ["info", "--image-size", "12"], ["image size 12"]),
    # env
    case("env", ["env", "--device", "bogus"], ["unknown device 'bogus'"]),
    case("env", ["env", "--dtype", "fp8"], ["--dtype"]),
    case("env", ["env", "--device", "cuda:x"], ["unknown device 'cuda:x'"]),
    # train
    case("train", [*TRAIN, "--log-every", "0", "--out", "{out}"], ["--log-every", ">= 1, got 0"]),
    case("train", [*TRAIN, "--lr", "nan", "--out", "{out}"], ["--lr"]),
    case("train", [*TRAIN, "--model", "../x", "--out", "{out}"], ["--model", "'../x'"]),
    case("train", [*TRAIN, "--data", "{in}/nothing", "--out", "{out}"], ["{in}/nothing"]),
    case("train", [*TRAIN, "--resume", "{in}/junk.pth", "--out", "{out}"], ["{in}/junk.pth"]),
    case("train", [*TRAIN, "--resume", "{in}/unsafe.pt", "--out", "{out}"],
     ["{in}/unsafe.pt", "argparse.Namespace"], ["weights_only"]),
    case("train", [*TRAIN, "--cache", "{in}/nothing", "--out", "{out}"], ["{in}/nothing", "manifest.json"]),
    # extract
    case("extract", ["extract", "--data", "{in}/nothing", "--out", "{out}", "--vae", "tiny-random"], ["{in}/nothing"]),
    case("extract", ["extract", "--data", "synthetic", "--out", "{in}/a-file/cache", "--vae", "tiny-random"],
     ["--out", "{in}/a-file/cache"]),
    case("extract", ["extract", "--data", "synthetic", "--out", "{out}", "--vae", "tiny-random", "--batch-size", "0"],
     ["--batch-size"]),
    case("extract", ["extract", "--data", "synthetic", "--out", "{out}", "--vae", "tiny-random", "--rank", "3",
                 "--world-size", "2"], ["--rank", "3"]),
    # sample
    case("sample", ["sample", "--checkpoint", "{in}/junk.pth", "--num", "2", "--out", "{out}", "--eta", "0.5"],
     ["--eta 0.5 applies only to --sampler ddim"]),
    case("sample", ["sample", "--checkpoint", "{in}/junk.pth", "--num", "2", "--out", "{out}", "--cfg-scale", "nan"],
     ["--cfg-scale", "finite number >= 0"]),
    case("sample", ["sample", "--checkpoint", "{in}/junk.pth", "--num", "2", "--out", "{out}"], ["{in}/junk.pth"]),
    case("sample", ["sample", "--checkpoint", "{in}/nothing.pt", "--num", "2", "--out", "{out}"],
     ["{in}/nothing.pt", "does not exist"]),
    case("sample", ["sample", "--checkpoint", "{in}/unsafe.pt", "--num", "2", "--out", "{out}"],
     ["{in}/unsafe.pt"], ["weights_only"]),
    case("sample", ["sample", "--checkpoint", "{in}/junk.pth", "--num", "0", "--out", "{out}"], ["--num"]),
    case("sample", ["sample", "--checkpoint", "{in}/junk.pth", "--num", "2", "--steps", "0", "--out", "{out}"],
     ["--steps"]),
    # fid
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/junk.npz", "--json", "{out}/fid.json"],
     ["{in}/junk.npz", "is not an .npz archive"], ["pickled"]),
    case("fid", [*FID, "{in}/junk.npz", "--ref", "{in}/two.npz", "--save-ref-stats", "{out}/ref.npz", "--json",
                 "{out}/fid.json"], ["{in}/junk.npz", "is not an .npz archive"], ["pickled"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/one.npz", "--json", "{out}/fid.json"],
     ["{in}/one.npz", "1 image(s)", "at least 2"], ["non-finite"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/objects.npz"], ["{in}/objects.npz", "Python objects"], ["pickled"]),
    case("fid", [*FID, "{in}/nothing.npz", "--ref", "{in}/two.npz"], ["{in}/nothing.npz", "does not exist"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/two.npz", "--num", "1"], ["--num", ">= 2"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/two.npz", "--batch-size", "0"], ["--batch-size"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/two.npz", "--false-failure-rate", "0.7"],
     ["--false-failure-rate"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/two.npz", "--json", "{in}/a-file/fid.json"],
     ["--json", "{in}/a-file/fid.json"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/two.npz", "--save-ref-stats", "{in}/a-file/ref.npz"],
     ["--save-ref-stats"]),
    case("fid", [*FID, "{in}/two.npz", "{in}/two.npz", "{in}/two.npz", "--ref", "{in}/two.npz",
             "--record", "{in}/a-file/baseline.json"], ["--record"]),
    case("fid", [*FID, "{in}/two.npz", "--ref", "{in}/two.npz", "--baseline", "{in}/junk.json"],
     ["--baseline", "{in}/junk.json", "not valid JSON"]),
    case("fid", [*FID, "{in}/samples", "--ref", "{in}/two.npz"], ["{in}/samples/samples.json", "num"]),
    case("fid", ["fid", "--device", "cpu", "--extractor", "inception", "--inception-weights",
             "{in}/pt_inception-2015-12-05-6726825d.pth", "{in}/two.npz", "--ref", "{in}/two.npz"],
     ["{in}/pt_inception-2015-12-05-6726825d.pth", "not the published", INCEPTION_WEIGHTS_SHA256]),
    # fid-protocol
    case("fid_protocol", ["fid-protocol", "dit", "--checkpoint", "{in}/junk.pth", "--ref", "{in}/two.npz",
                      "--out", "{out}"], ["{in}/junk.pth"]),
    case("fid_protocol", ["fid-protocol", "dit", "--checkpoint", "{in}/nothing.pt", "--ref", "{in}/two.npz",
                      "--out", "{out}"], ["{in}/nothing.pt"]),
    case("fid_protocol", ["fid-protocol", "dit", "--checkpoint", "{in}/junk.pth", "--ref", "{in}/two.npz",
                      "--out", "{out}", "--num-fid-samples", "0"], ["--num-fid-samples"]),
    case("fid_protocol", ["fid-protocol", "uvit", "--checkpoint", "{in}/junk.pth", "--ref", "{in}/two.npz",
                      "--out", "{out}"], ["uvit", "--vae", "autoencoder_kl_ema.pth"]),
    # bench
    case("bench", [*BENCH, "--matrix", "../evil=default", "--out", "{out}/results.json"], ["'../evil'"]),
    case("bench", [*BENCH, "--rows", "nope", "--out", "{out}/results.json"], ["--rows", "nope"]),
    case("bench", [*BENCH, "--batch-size", "0", "--out", "{out}/results.json"], ["--batch-size"]),
    case("bench", [*BENCH, "--row-timeout", "0", "--out", "{out}/results.json"], ["--row-timeout"]),
    case("bench", [*BENCH, "--out", "{in}/a-file/results.json"], ["--out", "{in}/a-file/results.json"]),
    case("bench", [*BENCH, "--out", "{out}/results.json", "--record", "{in}/a-file"], ["--record", "{in}/a-file"]),
    case("bench", [*BENCH, "--out", "{out}/results.json", "--record", "{out}/baselines", "--against", "HEAD"],
     ["--record and --against"]),
    # gate
    case("gate", ["gate", "{in}/junk.json"], ["{in}/junk.json", "is not JSON"]),
    case("gate", ["gate", "{in}/nothing.json"], ["{in}/nothing.json", "does not exist"]),
    case("gate", ["gate", "{in}/nan.json", "--report-dir", "{out}"],
     ["{in}/nan.json", "non-finite", "rows/0/timing/step_times_s/0"]),
    case("gate", ["gate", "{in}/traversal.json", "--report-dir", "{out}"], ["{in}/traversal.json", "matrix/name"]),
    case("gate", ["gate", "{in}/results.json", "--report-dir", "{in}/a-file/report"], ["--report-dir"]),
    case("gate", ["gate", "{in}/results.json", "--alpha", "0.7", "--report-dir", "{out}"], ["--alpha"]),
    case("gate", ["gate", "{in}/results.json", "--time-threshold", "abc", "--report-dir", "{out}"],
     ["--time-threshold", "'abc'"]),
    case("gate", ["gate", "{in}/results.json", "--draws", "5", "--report-dir", "{out}"], ["--draws", "--self-test"]),
    case("gate", ["gate", "--self-test", "--draws", "0"], ["--draws"]),
    case("gate", ["gate", "--self-test", "--samples", "{in}/junk.json"], ["{in}/junk.json"]),
    case("gate", ["gate", "--self-test", "--samples", "{in}/results.json", "--save-samples", "{in}/a-file/s.json"],
     ["--save-samples"]),
    # bench-gate
    case("bench_gate", ["bench-gate", "--device", "cpu", "--steps", "0", "--out", "{out}/results.json"], ["--steps"]),
    case("bench_gate", ["bench-gate", "--device", "cpu", "--alpha", "2", "--out", "{out}/results.json"], ["--alpha"]),
    case("bench_gate", ["bench-gate", "--device", "cpu", "--matrix", "../evil=default", "--out", "{out}/results.json"],
     ["'../evil'"]),
    case("bench_gate", ["bench-gate", "--device", "cpu", "--out", "{in}/a-file/results.json"], ["--out"]),
    # verify
    case("verify", ["verify", "--skip-equivalence", "--results", "{in}/junk.json", "--out", "{out}"],
     ["{in}/junk.json", "is not JSON"]),
    case("verify", ["verify", "--skip-equivalence", "--claims", "{in}/junk.json", "--out", "{out}"], ["{in}/junk.json"]),
    case("verify", ["verify", "--skip-equivalence", "--only", "nope", "--out", "{out}"], ["'nope'"]),
    case("verify", ["verify", "--skip-equivalence", "--out", "{in}/a-file/report"], ["--out", "{in}/a-file/report"]),
    case("verify", ["verify", "--scale", "bogus", "--out", "{out}"], ["--scale"]),
    case("train", [*TRAIN, "--features", "cached", "--out", "{out}"], ["--cache"]),
    case("train", [*TRAIN, "--features", "live", "--out", "{out}"], ["--vae"]),
    case("sample", ["sample", "--checkpoint", "{in}/junk.pth", "--num", "2", "--out", "{out}", "--rank", "3",
                    "--world-size", "2"], ["--rank", "3"]),
    case("train", [*TRAIN, "--out", "{in}/a-file/run"], ["--out", "{in}/a-file/run"]),
]
"""Every case; the first value of each is the command's module name in COMMANDS."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of bad (and a few good) inputs, shared by every case and never to be changed by one."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    for name in ("junk.json", "junk.npz", "junk.pth", "a-file"):
        (folder / name).write_text("junk, not the file it is named after\n")
    (folder / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"not the weights, whatever the name says")
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(folder / "two.npz", arr_0=images)
    np.savez(folder / "one.npz", arr_0=images[:1])
    np.savez(folder / "objects.npz", arr_0=np.array([{"a": 1}, None], dtype=object))
    torch.save({"model": {}, "args": argparse.Namespace(lr=1e-4)}, folder / "unsafe.pt")
    samples = folder / "samples"
    samples.mkdir()
    (samples / "samples.json").write_text(json.dumps({"num": -1, "seed": 0}))
    _write_results(folder)
    return folder


def _write_results(folder: Path) -> None:
    """A valid results file, one with a NaN step time, and one whose matrix name would climb out of a folder."""
    rng = np.random.default_rng(0)
    results = make_results([make_job(name, times=noisy_times(0.1, 12, rng), device_type="cpu") for name in ("a", "b")])
    (folder / "results.json").write_text(json.dumps(results))
    broken = json.loads(json.dumps(results))
    broken["rows"][0]["timing"]["step_times_s"][0] = float("nan")
    (folder / "nan.json").write_text(json.dumps(broken))
    traversal = json.loads(json.dumps(results))
    traversal["matrix"]["name"] = "../evil"
    (folder / "traversal.json").write_text(json.dumps(traversal))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def run_cli(argv: list[str]) -> int:
    """``dit-repro ARGV`` in this process: its exit status, whether it returned or called sys.exit."""
    try:
        return main(argv)
    except SystemExit as exited:
        return exited.code if isinstance(exited.code, int) else 1


def test_every_command_has_bad_inputs() -> None:
    commands = [param.values[0] for param in CASES]
    assert set(commands) == set(COMMANDS), f"commands without a bad-input case: {set(COMMANDS) - set(commands)}"
    assert all(commands.count(command) >= 3 for command in COMMANDS), {c: commands.count(c) for c in COMMANDS}


@pytest.mark.parametrize(("command", "argv", "expected", "forbidden"), CASES)
def test_bad_input_is_refused_cleanly(command: str, argv: list[str], expected: list[str], forbidden: list[str],
                                      inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    cwd = tmp_path / "cwd"  # default outputs (bench-out/, verify/) would land here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fill = {"{in}": str(inputs), "{out}": str(out)}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    before = snapshot(inputs)
    status = run_cli([filled(arg) for arg in argv])
    captured = capsys.readouterr()
    said = captured.err + captured.out
    assert status == 2, f"exit {status}: {said}"
    for text in NEVER + tuple(forbidden):
        assert filled(text) not in said, f"{text!r} in: {said}"
    for text in expected:
        assert filled(text) in captured.err, f"{filled(text)!r} not in: {captured.err}"
    assert not out.exists(), f"left {sorted(p.name for p in out.rglob('*'))} in the output location"
    assert snapshot(inputs) == before, "changed the inputs folder"
    assert list(cwd.iterdir()) == [], f"left {list(cwd.iterdir())} in the working folder"

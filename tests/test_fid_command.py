"""``dit-repro fid``: labelled output, exit codes, reference statistics files, missing Inception weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dit_repro.cli import main
from dit_repro.fid.extractors import INCEPTION_WEIGHTS_URL


@pytest.fixture(scope="module")
def digit_sets(tmp_path_factory):
    """A reference .npz (digits 0..999) and two sample .npz files with samples.json (seeds 0 and 300)."""
    root = tmp_path_factory.mktemp("fid-cli")
    images = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    np.savez(root / "ref.npz", arr_0=images[:1000])
    samples = []
    for k, seed in enumerate((0, 300)):
        folder = root / f"run{k}"
        folder.mkdir()
        np.savez(folder / "samples_300x8x8x1.npz", arr_0=images[1000 + 300 * k : 1300 + 300 * k])
        (folder / "samples.json").write_text(json.dumps({"seed": seed, "num": 300}))
        samples.append(str(folder / "samples_300x8x8x1.npz"))
    return str(root / "ref.npz"), samples


def test_reports_label_value_count_and_seed(tmp_path, digit_sets, capsys) -> None:
    reference, samples = digit_sets
    out = tmp_path / "fid.json"
    assert main(["fid", *samples, "--ref", reference, "--extractor", "proxy", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("proxy-FID ") and "N=300, seed 0" in lines[0] and "not comparable" in lines[0]
    assert "N=300, seed 300" in lines[1]
    results = json.loads(out.read_text())["results"]
    assert [r["num_samples"] for r in results] == [300, 300]
    assert all(r["metric"] == "proxy-FID" and np.isfinite(r["value"]) for r in results)


def test_saved_reference_statistics_give_the_same_fid(tmp_path, digit_sets) -> None:
    reference, samples = digit_sets
    stats = tmp_path / "ref_stats.npz"
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    argv = ["fid", samples[0], "--extractor", "proxy"]
    assert main([*argv, "--ref", reference, "--save-ref-stats", str(stats), "--json", str(first)]) == 0
    assert main([*argv, "--ref", str(stats), "--json", str(second)]) == 0
    value = json.loads(first.read_text())["results"][0]["value"]
    assert json.loads(second.read_text())["results"][0]["value"] == value


def test_missing_inception_weights_exit_2_with_where_to_put_them(
    digit_sets, capsys, monkeypatch, tmp_path
) -> None:
    reference, samples = digit_sets
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["fid", samples[0], "--ref", reference, "--extractor", "inception", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert INCEPTION_WEIGHTS_URL in error and str(tmp_path / "hub" / "checkpoints") in error


def test_usage_errors_exit_2(digit_sets, capsys, tmp_path) -> None:
    reference, samples = digit_sets
    proxy = ["--ref", reference, "--extractor", "proxy"]
    assert main(["fid", *samples, *proxy, "--record", str(tmp_path / "b.json")]) == 2
    assert "at least 3" in capsys.readouterr().err
    assert main(["fid", *samples, *proxy, "--seed", "1"]) == 2
    assert "single sample set" in capsys.readouterr().err
    assert main(["fid", str(tmp_path / "nothing"), *proxy]) == 2
    assert "nothing does not exist" in capsys.readouterr().err

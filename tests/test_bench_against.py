"""Same-run A/B (``dit-repro bench --against REF``): resolving REF, checking it out, running both sides.

Every test builds its own git repository holding a copy of this package, so it runs the same on
a developer's dirty tree, in a fresh clone and in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dit_repro.bench.matrices import build_matrix
from dit_repro.bench.plan import SMOKE_SCALE, BenchRequest, with_overrides
from dit_repro.bench.reference import (
    Reference,
    ReferenceUnusable,
    candidate_root,
    checked_out,
    resolve_reference,
)
from dit_repro.gate import EXIT_DATA_ERROR, EXIT_PASS, EXIT_REGRESSION

WAYS = ("git fetch --unshallow", "dit-repro bench --record")


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as a fixed test author; returns stdout."""
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    """Commit everything in ``repo``; returns the new commit id."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository (branch main) whose two commits hold this package's code."""
    root = tmp_path / "repo"
    shutil.copytree(candidate_root() / "dit_repro", root / "dit_repro", ignore=shutil.ignore_patterns("__pycache__"))
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    commit_all(root, "first")
    (root / "NOTES").write_text("a second commit\n")
    commit_all(root, "second")
    return root


def test_refs_resolve_to_commits_and_bad_refs_are_refused_by_name(repo: Path) -> None:
    head, parent = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD~1")
    assert resolve_reference("HEAD", repo).commit == head
    assert resolve_reference(parent[:10], repo).commit == parent
    with pytest.raises(ReferenceUnusable, match="'no-such-branch' is not a commit"):
        resolve_reference("no-such-branch", repo)
    with pytest.raises(ReferenceUnusable, match="names a tree, not a commit"):
        resolve_reference("HEAD^{tree}", repo)
    with pytest.raises(ReferenceUnusable, match="needs a git ref"):
        resolve_reference("--all", repo)


def test_auto_is_the_merge_base_or_head_s_parent_on_the_default_branch(repo: Path) -> None:
    parent = git(repo, "rev-parse", "HEAD~1")
    on_main = resolve_reference("auto", repo)
    assert on_main.commit == parent and "parent" in on_main.how
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "NOTES").write_text("work on a branch\n")
    commit_all(repo, "feature work")
    on_branch = resolve_reference("auto", repo)
    assert on_branch.commit == base and "merge-base of HEAD and main" in on_branch.how


def test_without_history_both_ways_to_a_reference_are_named(repo: Path, tmp_path: Path) -> None:
    plain = tmp_path / "unpacked"
    plain.mkdir()
    with pytest.raises(ReferenceUnusable, match="not in a git repository") as no_git:
        resolve_reference("auto", plain)
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", "--branch", "main", f"file://{repo}", str(shallow))
    with pytest.raises(ReferenceUnusable, match="shallow") as cut:
        resolve_reference("auto", shallow)
    for message in (str(no_git.value), str(cut.value)):
        assert all(way in message for way in WAYS), message


def test_a_ref_that_predates_the_worker_protocol_or_does_not_import_is_refused(repo: Path) -> None:
    worker = repo / "dit_repro" / "bench" / "worker.py"
    worker.write_text(worker.read_text().replace("WORKER_PROTOCOL = ", "OLD_PROTOCOL = "))
    commit_all(repo, "an old worker")
    with pytest.raises(ReferenceUnusable, match="predates same-run A/B: its bench worker speaks protocol none"):
        with checked_out(resolve_reference("HEAD", repo)):
            pass
    (repo / "dit_repro" / "__init__.py").write_text("this is not python\n")
    commit_all(repo, "broken")
    with pytest.raises(ReferenceUnusable, match="does not import in this environment"):
        with checked_out(resolve_reference("HEAD", repo)):
            pass
    assert len(git(repo, "worktree", "list").splitlines()) == 1  # no worktree left behind


def test_a_good_ref_is_checked_out_at_its_commit_and_removed_afterwards(repo: Path) -> None:
    reference = resolve_reference("HEAD~1", repo)
    with checked_out(reference) as root:
        assert git(root, "rev-parse", "HEAD") == reference.commit
        assert not (root / "NOTES").exists() and (root / "dit_repro" / "bench" / "worker.py").exists()
    assert not root.exists() and len(git(repo, "worktree", "list").splitlines()) == 1


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dit_repro.cli", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


# Two pixel-space rows at 16 px: no VAE and no latent cache, so both sides finish in about a minute
# (two rows are what the gate's paired comparison needs; a third only costs time).
TINY = ["--device", "cpu", "--matrix", "tiny=plain@features:pixels;ckpt@ckpt:full+features:pixels", "--batch-size", "2", "--image-size", "16", "--steps", "8",
        "--block-steps", "2", "--warmup-max", "4"]


@pytest.mark.slow
def test_bench_against_a_ref_runs_both_sides_in_one_run_and_the_gate_pairs_them(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "ab" / "results.json"
    done = _cli("bench", *TINY, "--against", "HEAD~1", "--repo", str(repo), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    candidate = json.loads(out.read_text())
    reference = json.loads((out.parent / "results-reference.json").read_text())
    assert candidate["ab"]["run_id"] == reference["ab"]["run_id"]
    assert (candidate["ab"]["role"], reference["ab"]["role"]) == ("candidate", "reference")
    assert reference["ab"]["reference_commit"] == git(repo, "rev-parse", "HEAD~1")
    assert candidate["ab"]["paired_results"] == "results-reference.json"
    # Every row ok on both sides: each worker proved it imported its side's code (else WrongCode).
    for document in (candidate, reference):
        assert [row["status"] for row in document["rows"]] == ["ok"] * 2
        assert all(len(row["timing"]["cpu_times_s"]) == 8 for row in document["rows"])
    logs = sorted(p.name for p in (out.parent / "logs").iterdir())
    assert logs == sorted(f"{row}_{side}_.log" for row in ("plain", "ckpt") for side in ("candidate", "reference"))
    assert "A/B in one run" in done.stderr and "every row runs twice, 8 timed steps per side" in done.stderr
    assert len(git(repo, "worktree", "list").splitlines()) == 1

    # The gate finds REF's side by itself and compares every figure, absolute CPU times included.
    gate = _cli("gate", str(out))
    assert gate.returncode in (EXIT_PASS, EXIT_REGRESSION), gate.stdout + gate.stderr
    assert "same-run A/B against HEAD~1" in gate.stdout
    for row in ("plain", "ckpt"):
        assert f"| {row}: step time |" in gate.stdout and f"| {row}: saved activations |" in gate.stdout
    # The reference side alone is not a candidate.
    wrong = _cli("gate", str(out.parent / "results-reference.json"))
    assert wrong.returncode == EXIT_DATA_ERROR and "reference side of an A/B" in wrong.stderr


@pytest.mark.slow
def test_bench_gate_without_a_stored_baseline_measures_against_the_parent_and_says_so_first(repo: Path,
                                                                                           tmp_path: Path) -> None:
    done = _cli("bench-gate", *TINY, "--repo", str(repo), "--baselines", str(tmp_path / "empty"),
                "--out", str(tmp_path / "bg" / "results.json"))
    assert done.returncode in (EXIT_PASS, EXIT_REGRESSION), done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("[bench-gate] same-run A/B: this code against auto = HEAD's parent"), first
    assert "no stored baseline of dit-s2-b2-16px-tiny.json for this hardware" in first
    report = (tmp_path / "bg" / "gate.md").read_text()
    assert "no stored baseline" in report and "same-run A/B against auto" in report


def test_bench_gate_without_history_or_baseline_exits_2_naming_both_ways(tmp_path: Path) -> None:
    plain = tmp_path / "unpacked"
    plain.mkdir()
    done = _cli("bench-gate", *TINY, "--repo", str(plain), "--baselines", str(tmp_path / "empty"),
                "--out", str(tmp_path / "x" / "results.json"))
    assert done.returncode == EXIT_DATA_ERROR, done.stdout + done.stderr
    assert all(way in done.stderr for way in WAYS), done.stderr
    assert not (tmp_path / "x" / "results.json").exists()


def test_an_a_b_times_more_steps_per_side_at_the_smoke_scale_unless_steps_are_given() -> None:
    reference = Reference("HEAD", "0" * 40, Path("."), "HEAD")
    matrix = build_matrix("table4", "cpu")
    assert BenchRequest(matrix, SMOKE_SCALE, "cpu").scale.timed_steps == 60
    assert BenchRequest(matrix, SMOKE_SCALE, "cpu", against=reference).scale.timed_steps == 120
    given = with_overrides(SMOKE_SCALE, timed_steps=30)
    assert BenchRequest(matrix, given, "cpu", against=reference).scale.timed_steps == 30

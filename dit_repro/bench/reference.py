"""The reference side of a same-run A/B (``dit-repro bench --against REF``): REF's code, checked out.

REF is any git ref naming a commit. It is checked out into a temporary ``git worktree`` (removed
afterwards), and REF's rows run in worker processes of this same Python environment with the
worktree first on their path, so that they import REF's ``dit_repro`` and nothing else differs.
The candidate is the ``dit_repro`` this process imports, uncommitted changes included.

``auto`` is the merge-base of HEAD with the default branch (``origin/main``, else ``main``); when
HEAD is that commit (a run on the default branch itself) it is HEAD's parent, so that the answer
is "did the last commit make training slower?".

A REF whose worker does not speak this worker protocol (it predates same-run A/B) or whose
package does not import is refused by name before any row runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dit_repro

from .worker import WORKER_PROTOCOL

DEFAULT_BRANCHES = ("origin/main", "main")
"""Where ``auto`` looks for the default branch, in order."""

WAYS_TO_GET_A_REFERENCE = (
    "either fetch the history (`git fetch --unshallow`, or clone without --depth) so that the code can be measured "
    "against a commit in the same run, or record a baseline for this hardware with `dit-repro bench --record` "
    "and commit it"
)


class ReferenceUnusable(ValueError):
    """REF cannot be resolved, checked out or run; the message names REF and what to do."""


@dataclass(frozen=True)
class Reference:
    """A resolved REF."""

    spec: str
    """REF as the user gave it (``auto`` included)."""
    commit: str
    """The full commit id it resolved to."""
    repo: Path
    """Top folder of the git repository it was resolved in."""
    how: str
    """How it was resolved, for the report (e.g. ``merge-base of HEAD and origin/main``)."""


def _git(repo: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ReferenceUnusable(f"git is not installed: same-run A/B needs it; {WAYS_TO_GET_A_REFERENCE}") from None
    if check and done.returncode != 0:
        raise ReferenceUnusable(f"`git {' '.join(args)}` failed in {repo}: {done.stderr.strip()}")
    return done


def candidate_root() -> Path:
    """The folder holding the ``dit_repro`` package this process runs (the candidate's code)."""
    return Path(dit_repro.__file__).resolve().parent.parent


def repository_of(start: Path) -> Path | None:
    """Top folder of the git work tree holding ``start``, or None."""
    if shutil.which("git") is None:
        return None
    done = _git(start, "rev-parse", "--show-toplevel")
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def default_repository() -> Path | None:
    """The repository of the candidate's package, else that of the working directory."""
    return repository_of(candidate_root()) or repository_of(Path.cwd())


def describe_candidate() -> str:
    """``git describe --always --dirty`` of the candidate's work tree, or its package path outside git."""
    root = candidate_root()
    repo = repository_of(root)
    if repo is None:
        return f"package at {root}"
    done = _git(repo, "describe", "--always", "--dirty", "--abbrev=12")
    return done.stdout.strip() if done.returncode == 0 else f"package at {root}"


def _commit(repo: Path, spec: str) -> str | None:
    done = _git(repo, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _shallow(repo: Path) -> bool:
    return _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"


def resolve_reference(spec: str, repo: Path | None = None) -> Reference:
    """Resolve REF (or ``auto``) to a commit of ``repo`` (default: :func:`default_repository`)."""
    if not spec or spec.startswith("-"):
        raise ReferenceUnusable(f"--against needs a git ref naming a commit (a branch, tag, sha, HEAD~1 or auto), "
                             f"got {spec!r}")
    root = repo if repo is not None else default_repository()
    if root is None or repository_of(root) is None:
        where = repo if repo is not None else f"{candidate_root()} or {Path.cwd()}"
        raise ReferenceUnusable(f"cannot resolve --against {spec!r}: {where} is not in a git repository (no history); "
                             f"{WAYS_TO_GET_A_REFERENCE}")
    root = repository_of(root) or root
    shallow = " (this clone is shallow: its history is cut)" if _shallow(root) else ""
    if spec == "auto":
        return _resolve_auto(root, shallow)
    commit = _commit(root, spec)
    if commit is None:
        kind = _git(root, "cat-file", "-t", spec).stdout.strip()
        if kind:
            raise ReferenceUnusable(f"--against {spec!r} names a {kind}, not a commit; give a branch, tag, sha or HEAD~N")
        raise ReferenceUnusable(f"--against {spec!r} is not a commit of {root}{shallow}; check the name "
                             f"(`git log --oneline` lists commits), or {WAYS_TO_GET_A_REFERENCE}")
    return Reference(spec, commit, root, f"{spec} = {commit[:12]}")


def _resolve_auto(root: Path, shallow: str) -> Reference:
    head = _commit(root, "HEAD")
    if head is None:
        raise ReferenceUnusable(f"--against auto: {root} has no commit yet; {WAYS_TO_GET_A_REFERENCE}")
    branch = next((name for name in DEFAULT_BRANCHES if _commit(root, name) is not None), None)
    if branch is None:
        raise ReferenceUnusable(f"--against auto: neither {' nor '.join(DEFAULT_BRANCHES)} exists in {root}{shallow}; "
                             "name the reference (e.g. --against HEAD~1)")
    done = _git(root, "merge-base", "HEAD", branch)
    base = done.stdout.strip()
    if done.returncode != 0 or not base:
        raise ReferenceUnusable(f"--against auto: HEAD and {branch} have no common commit in {root}{shallow}; "
                             f"{WAYS_TO_GET_A_REFERENCE}")
    if base != head:
        return Reference("auto", base, root, f"auto = merge-base of HEAD and {branch} = {base[:12]}")
    parent = _commit(root, "HEAD~1")
    if parent is None:
        raise ReferenceUnusable(f"--against auto: HEAD is on {branch} and has no parent in {root}{shallow}; "
                             f"{WAYS_TO_GET_A_REFERENCE}")
    return Reference("auto", parent, root, f"auto = HEAD's parent {parent[:12]} (HEAD is {branch}'s merge-base)")


def worker_environment(code_root: Path) -> dict[str, str]:
    """Environment variables that make a worker import ``dit_repro`` from ``code_root``."""
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(code_root) + (os.pathsep + existing if existing else "")}


def check_reference_code(reference: Reference, code_root: Path) -> None:
    """Refuse REF's checkout unless its package imports and its worker speaks this protocol."""
    probe = ("import dit_repro.bench.worker as worker; "
             "print(getattr(worker, 'WORKER_PROTOCOL', 'none'), worker.__file__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=code_root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **worker_environment(code_root)})
    name = f"--against {reference.spec!r} ({reference.commit[:12]})"
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise ReferenceUnusable(f"{name}: its dit_repro does not import in this environment, so it cannot be measured: "
                             + " | ".join(tail))
    protocol, _, path = done.stdout.strip().rpartition("\n")[-1].partition(" ")
    if not Path(path).resolve().is_relative_to(code_root.resolve()):
        raise ReferenceUnusable(f"{name}: a worker started in its checkout imported {path}, not the checkout's code")
    if protocol != str(WORKER_PROTOCOL):
        raise ReferenceUnusable(
            f"{name} predates same-run A/B: its bench worker speaks protocol {protocol}, this one {WORKER_PROTOCOL}; "
            "choose a newer reference, or gate against a stored baseline (`dit-repro bench --record` on the "
            "reference commit)")


@contextmanager
def checked_out(reference: Reference) -> Iterator[Path]:
    """REF in a temporary detached worktree, checked, removed on exit; yields its top folder."""
    with tempfile.TemporaryDirectory(prefix="dit-repro-ref-") as tmp:
        path = Path(tmp) / "ref"
        done = _git(reference.repo, "worktree", "add", "--detach", "--quiet", str(path), reference.commit)
        if done.returncode != 0:
            raise ReferenceUnusable(f"--against {reference.spec!r}: cannot check out {reference.commit[:12]} into a "
                                 f"worktree: {done.stderr.strip()}")
        try:
            check_reference_code(reference, path)
            yield path
        finally:
            _git(reference.repo, "worktree", "remove", "--force", str(path))
            _git(reference.repo, "worktree", "prune")

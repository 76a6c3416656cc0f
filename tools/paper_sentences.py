#!/usr/bin/env python3
"""The paper's sentences that state a number, a comparison or a cause, as JSON; or, with ``--check``,
whether ``text_coverage.json`` lists exactly those sentences.

The paper's text is not part of the project (its tests cannot read it), so this tool is where the
recorded list meets the paper. Splitting, section tracking, selection and the sentence ids are
those of ``dit_repro/verify/coverage.py``, loaded by path with the standard library alone (the
package itself imports torch).

    python tools/paper_sentences.py PAPER.txt                 # the selected sentences, one JSON record each
    python tools/paper_sentences.py PAPER.txt --all           # every sentence of the running text
    python tools/paper_sentences.py PAPER.txt --check dit_repro/verify/text_coverage.json

``--check`` exits 1 and lists the selected sentences the file lacks and the recorded ones the
paper no longer has; it exits 0 when the two agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
COVERAGE = ROOT / "dit_repro" / "verify" / "coverage.py"


def load_coverage_module() -> ModuleType:
    """``dit_repro/verify/coverage.py``, loaded from its file: the one implementation of the splitting,
    the selection and the ids."""
    spec = importlib.util.spec_from_file_location("dit_repro_text_coverage", COVERAGE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {COVERAGE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def check(coverage: ModuleType, paper_text: str, recorded_path: Path) -> int:
    """Compare the recorded sentences with the paper's selected ones; print the differences; 0 when none."""
    recorded = json.loads(recorded_path.read_text(encoding="utf-8"))["sentences"]
    selected = coverage.select_sentences(paper_text)
    missing, stale = coverage.compare_with_paper(recorded, selected)
    for sentence in missing:
        print(f"missing from {recorded_path}: {sentence.id} [{sentence.section}] {sentence.text}")
    for entry in stale:
        print(f"recorded but not selected from the paper: {entry['id']} [{entry['section']}] {entry['text']}")
    if missing or stale:
        print(f"{len(missing)} missing, {len(stale)} no longer in the paper "
              f"({len(selected)} selected, {len(recorded)} recorded)")
        return 1
    print(f"{recorded_path}: all {len(selected)} selected sentences recorded, none extra")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Print the selected sentences as JSON, or run the check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper", type=Path, help="the paper's text (Markdown-like plain text)")
    parser.add_argument("--check", type=Path, metavar="TEXT_COVERAGE_JSON",
                        help="compare this text_coverage.json with the paper; exit 1 on any difference")
    parser.add_argument("--all", action="store_true", help="print every sentence of the running text, not only the selected")
    args = parser.parse_args(argv)
    coverage = load_coverage_module()
    text = args.paper.read_text(encoding="utf-8")
    if args.check is not None:
        return check(coverage, text, args.check)
    sentences = coverage.paper_sentences(text) if args.all else coverage.select_sentences(text)
    print(json.dumps([s.record() for s in sentences], indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

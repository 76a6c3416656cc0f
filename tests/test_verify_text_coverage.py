"""The paper's running text is covered: each sentence that states a number, a comparison or a cause
is a claim or is recorded as not one, with the reason.

The paper's text is not part of the project, so no test reads it: ``tools/paper_sentences.py
--check`` compares the recorded list with the paper. These tests check the list against itself
and the claims, the id and selection rules the tool uses, and the tool's check on a small text.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest

from dit_repro.verify import coverage
from dit_repro.verify.claims import load_claims
from dit_repro.verify.coverage import (
    TextCoverageError,
    compare_with_paper,
    coverage_problems,
    is_running_text_source,
    is_selected,
    load_text_coverage,
    normalise,
    paper_sentences,
    section_slug,
    select_sentences,
    sentence_id,
)

REPO = Path(__file__).resolve().parent.parent
CLAIMS = load_claims()
SOURCES = {c.id: c.source for c in CLAIMS.claims}


def shipped() -> dict:
    return json.loads(resources.files("dit_repro.verify").joinpath("text_coverage.json").read_text(encoding="utf-8"))


def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paper_sentences_tool", REPO / "tools" / "paper_sentences.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------- the shipped list


def test_the_shipped_list_loads_against_the_shipped_claims() -> None:
    covered = load_text_coverage()
    assert covered.paper == "Optimizing Diffusion Transformers"
    assert len(covered.sentences) >= 90


def test_ids_are_unique_and_each_sentence_either_names_claims_or_says_why_not() -> None:
    entries = shipped()["sentences"]
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids))
    for entry in entries:
        assert ("claims" in entry) != ("not_a_claim" in entry), entry["id"]
        if "claims" in entry:
            assert entry["claims"] and set(entry["claims"]) <= set(SOURCES), entry["id"]
        else:
            assert len(entry["not_a_claim"].split()) >= 3, entry["id"]


def test_every_claim_of_the_running_text_is_named_by_a_sentence() -> None:
    named = {claim for e in shipped()["sentences"] for claim in e.get("claims", ())}
    running = {c.id for c in CLAIMS.claims if is_running_text_source(c.source)}
    assert running, "claims read from the running text"
    assert running - named == set()


def test_each_recorded_id_is_recomputed_from_its_section_and_text() -> None:
    for entry in shipped()["sentences"]:
        assert sentence_id(entry["section"], entry["text"]) == entry["id"], entry["text"]


def test_recorded_sentences_are_normalised_and_are_ones_the_selection_picks() -> None:
    for entry in shipped()["sentences"]:
        assert entry["text"] == normalise(entry["text"]), entry["id"]
        assert is_selected(entry["text"]), entry["id"]
        assert re.fullmatch(r"Abstract|§\d+(\.\d+)*|Table \d+ caption", entry["section"]), entry["section"]


def test_unmeasurable_statements_say_why() -> None:
    for entry in shipped()["sentences"]:
        reason = entry.get("not_a_claim", "")
        if reason.startswith("not measurable"):
            assert re.match(r"not measurable with the existing checks: \S", reason), entry["id"]


@pytest.mark.parametrize("fragment, claims", [
    ("before eventually achieving superior performance", {"t2-uvit-faster", "dit-overtakes-uvit"}),
    ("contributes to more significant enhancements", {"amp-with-features-speed-a100x1", "amp-with-features-speed-a100x2"}),
    ("display identical patterns", {"equivalence-loss-checkpointing", "equivalence-fid"}),
])
def test_sentences_once_without_a_claim_name_theirs(fragment: str, claims: set[str]) -> None:
    found = [e for e in shipped()["sentences"] if fragment in e["text"]]
    assert len(found) == 1
    assert claims <= set(found[0]["claims"])


# ---------------------------------------------------------------------------------------- the rules


def _problems_after(change) -> list[str]:
    data = copy.deepcopy(shipped())
    change(data["sentences"])
    return coverage_problems(data, SOURCES)


def _first_with_claims(entries: list[dict]) -> dict:
    return next(e for e in entries if "claims" in e)


def _first_without(entries: list[dict]) -> dict:
    return next(e for e in entries if "not_a_claim" in e)


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s.append(copy.deepcopy(s[0])), "duplicate id"),
    (lambda s: _first_with_claims(s).update(not_a_claim="a definition"), "exactly one of claims and not_a_claim"),
    (lambda s: _first_without(s).pop("not_a_claim"), "exactly one of claims and not_a_claim"),
    (lambda s: _first_without(s).update(not_a_claim=" "), "must give the reason"),
    (lambda s: _first_with_claims(s).update(claims=["no-such-claim"]), "no claim no-such-claim"),
    (lambda s: _first_with_claims(s).update(claims=[]), "non-empty list of claim ids"),
    (lambda s: s[0].update(text=s[0]["text"] + " More."), "the id of this section and text is"),
    (lambda s: s[0].update(source="§1"), "unknown field(s) source"),
])
def test_a_broken_list_is_refused_with_the_reason(change, fragment) -> None:
    problems = _problems_after(change)
    assert any(fragment in p for p in problems), problems


def test_a_running_text_claim_that_loses_its_sentence_is_named() -> None:
    def drop(entries: list[dict]) -> None:
        entries[:] = [e for e in entries if "t1-grand-mean" not in e.get("claims", ())]

    problems = _problems_after(drop)
    assert any(p.startswith("t1-grand-mean: a claim of the running text") for p in problems), problems


def test_table_claims_need_no_sentence_and_running_text_sources_are_told_apart() -> None:
    assert not is_running_text_source("Table 2") and not is_running_text_source("Table 4")
    assert is_running_text_source("§3.1, Table 1") and is_running_text_source("Abstract; §5")
    assert is_running_text_source("§4.5")


def test_load_names_the_file_and_its_problems(tmp_path: Path) -> None:
    with pytest.raises(TextCoverageError, match="does not exist"):
        load_text_coverage(tmp_path / "missing.json")
    broken = shipped()
    broken["schema"] = "something else"
    path = tmp_path / "text_coverage.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(TextCoverageError, match="schema must be"):
        load_text_coverage(path, CLAIMS)


# ---------------------------------------------------------------------------------------- ids and selection

SYNTHETIC = """\
A Title

Someone Else
2024 University

Abstract

We make training 50% faster. We provide code.

1. Introduction

Model X [3] is a model. It is slower than model Y (X vs. Y), and we study it.

This sentence runs across a float and
between

Param\tValue
depth\t12

Table 1. **Setup.** We use 2 GPUs. Rows are runs.

pages, then ends here. A word is hyph-

enated across the break. Three runs were made.

2.1. Method Details

Nothing in half-precision to see here. Because memory is short, we checkpoint.

References

- [1] A. Author. A paper with 3 results. 2020.
"""

EXPECTED = [
    ("Abstract", "We make training 50% faster.", True),
    ("Abstract", "We provide code.", False),
    ("§1", "Model X [3] is a model.", False),  # a citation's digit is not a figure
    ("§1", "It is slower than model Y (X vs. Y), and we study it.", True),  # "vs." does not end it
    ("Table 1 caption", "Setup.", False),
    ("Table 1 caption", "We use 2 GPUs.", True),
    ("Table 1 caption", "Rows are runs.", False),
    # the paragraph goes on past the table and its caption, and the broken word is joined again
    ("§1", "This sentence runs across a float and between pages, then ends here.", False),
    ("§1", "A word is hyphenated across the break.", False),
    ("§1", "Three runs were made.", True),  # a number written as a word
    ("§2.1", "Nothing in half-precision to see here.", False),  # "half-" names a format
    ("§2.1", "Because memory is short, we checkpoint.", True),
]


def test_the_splitting_keeps_sections_joins_broken_paragraphs_and_leaves_out_title_tables_and_references() -> None:
    sentences = paper_sentences(SYNTHETIC)
    assert [(s.section, s.text) for s in sentences] == [(section, text) for section, text, _ in EXPECTED]
    assert [is_selected(s.text) for s in sentences] == [selected for _, _, selected in EXPECTED]
    assert [s.text for s in select_sentences(SYNTHETIC)] == [text for _, text, selected in EXPECTED if selected]


def test_ids_are_the_section_slug_and_a_hash_of_the_normalised_text() -> None:
    assert section_slug("§4.5") == "s4-5" and section_slug("Abstract") == "abstract"
    assert section_slug("Table 2 caption") == "table2-caption"
    ident = sentence_id("§4.5", "AMP accelerates DiT by 21%.")
    assert re.fullmatch(r"s4-5-[0-9a-f]{8}", ident)
    assert sentence_id("§4.5", "  AMP accelerates\nDiT  by 21%. ") == ident  # reflowed: same id
    assert sentence_id("§4.5", "AMP accelerates DiT by 22%.") != ident
    assert sentence_id("§4.6", "AMP accelerates DiT by 21%.") != ident


# ---------------------------------------------------------------------------------------- the tool


def test_the_tool_uses_this_module_s_implementation() -> None:
    module = tool().load_coverage_module()
    assert Path(module.__file__).resolve() == Path(coverage.__file__).resolve()
    assert module.sentence_id("§1", "A sentence with 1 figure.") == sentence_id("§1", "A sentence with 1 figure.")


def test_the_tool_s_check_finds_missing_and_stale_sentences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paper = tmp_path / "paper.txt"
    paper.write_text(SYNTHETIC, encoding="utf-8")
    records = [s.record() for s in select_sentences(SYNTHETIC)]
    listed = tmp_path / "text_coverage.json"

    listed.write_text(json.dumps({"sentences": records}), encoding="utf-8")
    assert tool().main([str(paper), "--check", str(listed)]) == 0

    stale = {"id": sentence_id("§1", "Gone 5 times."), "section": "§1", "text": "Gone 5 times."}
    listed.write_text(json.dumps({"sentences": records[1:] + [stale]}), encoding="utf-8")
    capsys.readouterr()
    assert tool().main([str(paper), "--check", str(listed)]) == 1
    out = capsys.readouterr().out
    assert f"missing from {listed}: {records[0]['id']}" in out
    assert f"recorded but not selected from the paper: {stale['id']}" in out


def test_compare_with_paper_returns_both_differences() -> None:
    selected = select_sentences(SYNTHETIC)
    missing, stale = compare_with_paper([{"id": "x-00000000"}] + [s.record() for s in selected[1:]], selected)
    assert [s.id for s in missing] == [selected[0].id] and [e["id"] for e in stale] == ["x-00000000"]

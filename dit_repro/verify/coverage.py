"""The paper's running text against the claims: every sentence that states a number, a comparison or
a cause is a claim of ``claims.json``, or is recorded as not one with the reason.

``text_coverage.json`` lists those sentences, each with a stable id (the section's slug and the
first 8 hex digits of the sha256 of the whitespace-normalised text), its section and its text,
and either the claims that cover it or why it is not a claim. Its rules
(:func:`load_text_coverage`): ids unique and recomputable from section and text; each entry
either names claims or gives a reason, never both; every named claim exists; and every claim
whose source is running text (not a table alone) is named by at least one sentence, so that a
claim cannot lose the sentence it was read from.

The paper's text is not part of the project, so whether the list is complete against the paper
is checked by ``tools/paper_sentences.py --check``, which selects the sentences with
:func:`select_sentences`. That tool loads this file by path with the standard library alone
(importing the package would import torch), which is why the text processing below needs
nothing else and the claims are imported only inside :func:`load_text_coverage`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dit_repro.verify.claims import ClaimSet

SCHEMA = "dit-repro/text-coverage"
"""The ``schema`` field of ``text_coverage.json``."""

EXCLUDED_SECTIONS = ("References",)
"""Sections that are not running text: the bibliography's entries cite, they state nothing of the
paper's. The title block before the first heading is left out for the same reason."""

NAMED_HEADINGS = ("Abstract", "References", "Acknowledgements", "Acknowledgments", "Appendix")
"""Headings without a number."""

# "2.1. Optimized Attention": the number ends in a period, which a line of the title block ("2024 University")
# does not have.
_NUMBERED_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.\s+([A-Z][^.]{0,80})$")
_CAPTION = re.compile(r"^Table\s+(\d+)\.\s*")
# A paragraph is complete at a sentence's end or at a colon (which opens a list); anything else is cut by a
# page break or a float and goes on in the next prose block.
_TERMINAL = re.compile(r"[.!?:][\"”’')\]*]*$")
# A sentence ends at . ! or ? (with any closing quote, bracket or emphasis mark) before one that starts with a
# capital, an opening quote or bracket, inline code or inline maths.
_BOUNDARY = re.compile(r"[.!?][\"”’')\]*]*\s+(?=[A-Z“\"‘`(\[$])")
_ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "et al.", "cf.", "Fig.", "Eq.", "No.")
"""Abbreviations whose period does not end a sentence ("DiT vs. U-ViT")."""

CITATION = re.compile(r"\[\d+(?:\s*[,–-]\s*\d+)*\]")
"""A citation marker such as ``[4]``: its digits are a reference number, not a figure."""

MARKERS = (
    # comparatives and superlatives
    r"faster", r"fastest", r"slower", r"slowest", r"quicker", r"more", r"less", r"fewer", r"higher", r"lower",
    r"better", r"worse", r"superior", r"inferior", r"longer", r"shorter", r"larger", r"smaller", r"most", r"least",
    r"state-of-the-art",
    # sameness and difference
    r"identical", r"same", r"similar\w*", r"equal\w*", r"match\w*", r"var(?:y|ies|ied|ying|iations?)",
    r"differ(?:s|ed|ing|ences?)?",
    # changes and their direction
    r"improv\w*", r"reduc\w*", r"increas\w*", r"decreas\w*", r"enhanc\w*", r"boost\w*", r"accelerat\w*",
    r"speeds?\s+up", r"sped\s+up", r"slows?\s+down", r"expedit\w*", r"surpass\w*", r"outperform\w*", r"exceed\w*",
    r"diminish\w*", r"lessen\w*", r"mitigat\w*", r"trades?", r"traded", r"trading", r"trade-offs?",
    # magnitudes that a measurement can contradict
    r"significant\w*", r"substantial\w*", r"considerabl\w*", r"minimal", r"minor", r"modest", r"drastic\w*",
    r"appreciabl\w*",
    # explicit comparisons
    r"compar\w*", r"than", r"versus", r"vs\.",
    # causes and consequences
    r"because", r"due\s+to", r"owing\s+to", r"since", r"therefore", r"consequently", r"thereby", r"thus", r"hence",
    r"leads?\s+to", r"leading\s+to", r"led\s+to", r"results?\s+in", r"resulted\s+in", r"resulting\s+in",
    r"attributable", r"confirm\w*",
)
"""Words that mark a comparison, a change or a cause (whole words, any case)."""

NUMBER_WORDS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "hundred",
    "thousand", "million", "billion", "twice", "double", "half", "single", "pair",
)
"""Numbers written as words; not as the first part of a compound ("half-precision" names a format)."""

_MARKER = re.compile(r"\b(?:" + "|".join(MARKERS) + r")(?!\w)", re.IGNORECASE)
_NUMBER_WORD = re.compile(r"\b(?:" + "|".join(NUMBER_WORDS) + r")(?![\w-])", re.IGNORECASE)


class TextCoverageError(ValueError):
    """``text_coverage.json`` is malformed or does not fit the claims."""


@dataclass(frozen=True)
class Sentence:
    """One sentence of the paper's running text."""

    id: str
    """``<section slug>-<8 hex digits>``, see :func:`sentence_id`."""
    section: str
    """``Abstract``, ``§4.5``, ``Table 2 caption`` ..."""
    text: str
    """The sentence, whitespace-normalised."""

    def record(self) -> dict[str, str]:
        """The sentence as the JSON record ``tools/paper_sentences.py`` prints."""
        return {"id": self.id, "section": self.section, "text": self.text}


@dataclass(frozen=True)
class CoveredSentence:
    """A recorded sentence and what covers it."""

    id: str
    """As :func:`sentence_id` computes it from ``section`` and ``text``."""
    section: str
    """Where it is."""
    text: str
    """The sentence."""
    claims: tuple[str, ...]
    """Ids of the claims it states; empty when it is not a claim."""
    not_a_claim: str | None
    """Why it is not a claim; None when ``claims`` names some."""


@dataclass(frozen=True)
class TextCoverage:
    """The validated ``text_coverage.json``."""

    paper: str
    """The paper's title."""
    sentences: tuple[CoveredSentence, ...]
    """In the paper's order."""

    def by_id(self, sentence_id: str) -> CoveredSentence:
        """The recorded sentence with this id, or a TextCoverageError."""
        for sentence in self.sentences:
            if sentence.id == sentence_id:
                return sentence
        raise TextCoverageError(f"no sentence {sentence_id!r}")


# ---------------------------------------------------------------------------------------- sentences


def normalise(text: str) -> str:
    """The text with every run of whitespace made one space and the ends stripped."""
    return " ".join(text.split())


def section_slug(section: str) -> str:
    """A section's id prefix: ``§4.5`` -> ``s4-5``, ``Abstract`` -> ``abstract``, ``Table 2 caption`` ->
    ``table2-caption``."""
    slug = section.strip().lower().replace("§", "s")
    slug = re.sub(r"table\s+(\d+)", r"table\1", slug)
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-")


def sentence_id(section: str, text: str) -> str:
    """The stable id of a sentence: its section's slug and the first 8 hex digits of the sha256 of its
    whitespace-normalised text (so a reflowed line keeps its id, an edited word does not)."""
    digest = hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:8]
    return f"{section_slug(section)}-{digest}"


def split_sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences: a break after ``.``, ``!`` or ``?`` (and any closing quote, bracket or
    emphasis mark) before a capital, an opening quote or bracket, unless the period ends an
    abbreviation."""
    paragraph = normalise(paragraph)
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(paragraph):
        head = paragraph[start:match.end()].rstrip()
        if head.endswith(_ABBREVIATIONS) or re.search(r"(?:^|\s)[A-Z]\.$", head):
            continue  # "vs." or an initial: the sentence goes on
        sentences.append(head)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _heading(block: str) -> str | None:
    """The section a one-line block opens (``§2.1``, ``Abstract``), or None when it is not a heading."""
    if "\n" in block.strip():
        return None
    line = block.strip()
    if line in NAMED_HEADINGS:
        return line
    match = _NUMBERED_HEADING.match(line)
    return f"§{match.group(1)}" if match else None


def _join(pending: str, following: str) -> str:
    """A paragraph broken by a page or a float, joined again ("for-" + "mats" -> "formats")."""
    if re.search(r"[a-z]-$", pending) and following[:1].islower():
        return pending[:-1] + following
    return f"{pending} {following}"


def paper_sentences(text: str) -> list[Sentence]:
    """Every sentence of the paper's running text and table captions, in order, with its section.

    Blocks are separated by blank lines. A block with a tab is a table's body and is skipped (the
    tables are claims row by row); a block opening ``Table N.`` is that table's caption, a
    section of its own. A paragraph that does not end a sentence continues in the next prose
    block of its section, past any table or caption between them (a page break or a float).
    The title block before the first heading and the bibliography are left out.
    """
    sentences: list[Sentence] = []
    section: str | None = None
    pending: str | None = None

    def emit(where: str, paragraph: str) -> None:
        for sentence in split_sentences(paragraph):
            sentences.append(Sentence(sentence_id(where, sentence), where, sentence))

    for raw in re.split(r"\n\s*\n", text):
        block = raw.strip()
        if not block:
            continue
        heading = _heading(block)
        if heading is not None:
            if pending is not None and section is not None:
                emit(section, pending)
            pending, section = None, heading
            continue
        if section is None or section in EXCLUDED_SECTIONS or "\t" in block:
            continue
        block = normalise(block.replace("**", ""))
        caption = _CAPTION.match(block)
        if caption:
            emit(f"Table {caption.group(1)} caption", block[caption.end():])
            continue
        pending = block if pending is None else _join(pending, block)
        if _TERMINAL.search(pending):
            emit(section, pending)
            pending = None
    if pending is not None and section is not None:
        emit(section, pending)
    return sentences


def is_selected(sentence: str) -> bool:
    """Whether a sentence states a number (a digit outside citation markers, or a number word), a comparison
    or a cause."""
    return bool(re.search(r"\d", CITATION.sub("", sentence)) or _NUMBER_WORD.search(sentence)
                or _MARKER.search(sentence))


def select_sentences(text: str) -> list[Sentence]:
    """The sentences of the paper's text that :func:`is_selected` picks, in order."""
    return [s for s in paper_sentences(text) if is_selected(s.text)]


def compare_with_paper(recorded: list[dict[str, Any]], selected: list[Sentence]) -> tuple[list[Sentence], list[dict[str, Any]]]:
    """The selected sentences missing from the recorded ones, and the recorded ones the paper no longer has."""
    recorded_ids = {entry["id"] for entry in recorded}
    selected_ids = {s.id for s in selected}
    return ([s for s in selected if s.id not in recorded_ids],
            [entry for entry in recorded if entry["id"] not in selected_ids])


# ---------------------------------------------------------------------------------------- the file


def is_running_text_source(source: str) -> bool:
    """Whether a claim's source names running text: some part of it other than a table (``§3.1, Table 1``
    does, ``Table 2`` does not)."""
    return any(not re.fullmatch(r"Table\s+\d+", part.strip()) for part in source.split(";") for part in part.split(","))


TOP_LEVEL = ("schema", "paper", "note", "sentences")
"""The fields of the document."""

ENTRY_FIELDS = ("id", "section", "text", "claims", "not_a_claim")
"""The fields of a sentence."""


def coverage_problems(data: Any, claim_sources: dict[str, str]) -> list[str]:
    """Every problem of a text-coverage document against the claims (``claim id -> source``)."""
    if not isinstance(data, dict):
        return ["the document is not a JSON object"]
    problems = []
    extra = sorted(set(data) - set(TOP_LEVEL))
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
    if data.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA!r}")
    if not isinstance(data.get("paper"), str) or not data["paper"].strip():
        problems.append("paper must name the paper")
    entries = data.get("sentences")
    if not isinstance(entries, list) or not entries:
        return problems + ["sentences must be a non-empty list"]
    seen: set[str] = set()
    named: set[str] = set()
    for index, entry in enumerate(entries):
        has_id = isinstance(entry, dict) and isinstance(entry.get("id"), str)
        where = entry["id"] if has_id else f"sentences[{index}]"
        problems += [f"{where}: {p}" for p in _entry_problems(entry, claim_sources)]
        if not has_id:
            continue
        if entry["id"] in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(entry["id"])
        if isinstance(entry.get("claims"), list):
            named.update(i for i in entry["claims"] if isinstance(i, str))
    for claim_id, source in claim_sources.items():
        if is_running_text_source(source) and claim_id not in named:
            problems.append(f"{claim_id}: a claim of the running text ({source}) that no sentence names")
    return problems


def _entry_problems(entry: Any, claim_sources: dict[str, str]) -> list[str]:
    """The problems of one sentence entry on its own."""
    if not isinstance(entry, dict):
        return ["not a JSON object"]
    problems = [f"{key} must be a non-empty string" for key in ("id", "section", "text")
                if not isinstance(entry.get(key), str) or not entry[key].strip()]
    extra = sorted(set(entry) - set(ENTRY_FIELDS))
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
    if problems:
        return problems
    expected = sentence_id(entry["section"], entry["text"])
    if entry["id"] != expected:
        problems.append(f"the id of this section and text is {expected}")
    if ("claims" in entry) == ("not_a_claim" in entry):
        return problems + ["give exactly one of claims and not_a_claim"]
    if "not_a_claim" in entry:
        if not isinstance(entry["not_a_claim"], str) or not entry["not_a_claim"].strip():
            problems.append("not_a_claim must give the reason")
        return problems
    ids = entry["claims"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return problems + ["claims must be a non-empty list of claim ids"]
    if len(set(ids)) != len(ids):
        problems.append("claims repeats an id")
    unknown = [i for i in ids if i not in claim_sources]
    if unknown:
        problems.append(f"no claim {', '.join(unknown)} in claims.json")
    return problems


def load_text_coverage(path: str | os.PathLike[str] | None = None, claims: ClaimSet | None = None) -> TextCoverage:
    """Read and validate a text-coverage file (default: the shipped ``text_coverage.json``) against the
    claims (default: the shipped ``claims.json``)."""
    # Imported here, not above: the tool loads this module by path with the standard library alone.
    from dit_repro.verify.claims import load_claims

    if path is None:
        text = resources.files("dit_repro.verify").joinpath("text_coverage.json").read_text(encoding="utf-8")
        source = "text_coverage.json"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TextCoverageError(f"text coverage file {path} does not exist") from None
        source = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TextCoverageError(f"{source} is not JSON: {exc}") from None
    claims = claims if claims is not None else load_claims()
    problems = coverage_problems(data, {c.id: c.source for c in claims.claims})
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise TextCoverageError(f"{source} has {len(problems)} problem(s):\n  {shown}{more}")
    return TextCoverage(data["paper"], tuple(
        CoveredSentence(e["id"], e["section"], e["text"], tuple(e.get("claims", ())), e.get("not_a_claim"))
        for e in data["sentences"]))

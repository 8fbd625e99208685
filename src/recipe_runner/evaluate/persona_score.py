"""Persona scores: how well answers keep to the bible, measured without a judge model.

A judge (another LLM grading "is this Alex?") is slow, costs money and drifts between versions.
Most of what the bible asks for can be checked by plain text rules instead, and those rules give
the same number every run:
- markers: the character's catchphrases ("yo", "it's always DNS"): does the answer use one?
- taboos: regexes for what the character never says (emoji, "Hello", "As an AI");
- length: at most `max_sentences` sentences ("one or two sentences, three at most");
- language: the answer is in the bible's language (py3langid, as the data cleaner uses).

Each answer gets an adherence in [0, 1]: the mean of the checks the bible switches on. A field
missing from the bible switches its check off, and the check reads None (not 0) everywhere, so
"not measured" never looks like "failed". `turn_slope` shows whether a persona holds over a long
conversation or fades back to the base model's assistant voice turn by turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from recipe_runner.data.bible import Bible
from recipe_runner.data.cleaning import LANGUAGE_MIN_LETTERS

# ---------------------------------------------------------------- rubric


def marker_regex(marker: str) -> re.Pattern:
    """A marker as a case-insensitive whole-phrase regex.

    Whole words: "yo" must not fire on "your" or "toyota", so the phrase may not touch a word
    character on either side (lookarounds, not \\b: \\b fails next to "-" or "'" at a marker's
    edge). Inside the phrase any run of whitespace matches a space ("works on  my\\nmachine"),
    and a straight or curly apostrophe matches either ("it's dns" = "it’s DNS").
    """
    parts = [re.escape(w.replace("\u2019", "'")).replace("'", "['\u2019]") for w in marker.lower().split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", re.IGNORECASE)


@dataclass
class PersonaRubric:
    """What `score_answer` checks; None / empty = that check is off."""

    markers: list[str] | None = None
    taboo_patterns: list[re.Pattern] | None = None
    max_sentences: int | None = None
    languages: frozenset[str] | None = None

    def __post_init__(self):
        self.marker_patterns = [marker_regex(m) for m in self.markers] if self.markers else None

    @classmethod
    def from_bible(cls, bible: Bible) -> PersonaRubric:
        """The checks the bible switches on (it normalised the markers and compiled the taboos)."""
        return cls(
            markers=list(bible.markers) or None,
            taboo_patterns=list(bible.taboo_patterns) or None,
            max_sentences=bible.max_sentences,
            languages=frozenset(bible.languages) or None,
        )


# ---------------------------------------------------------------- sentences

# Terminal punctuation (runs like "?!" or "..." count once), then closing quotes/brackets, then
# whitespace or the end. "3.5 GB", "v1.2" and "node.js" have no space after the dot: no split.
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")
# A blank line or a list item also ends a sentence: a bullet list has no full stops, and five
# bullets are an essay, not one sentence. A single line break inside a sentence (wrapped text) is not.
_LIST_ITEM = r"\s*(?:[-*\u2022]|\d+[.)])\s"  # "- ", "* ", "• ", "1. ", "2) "
_LINE_BREAK = re.compile(r"\n\s*\n|\n(?=" + _LIST_ITEM + ")")
# Words whose final dot is not a sentence end ("ms" is left out: "200 ms." ends sentences here).
# "etc." is handled apart: it often does end one.
_ABBREVIATIONS = {"e.g", "i.e", "eg", "ie", "vs", "cf", "approx", "mr", "mrs", "dr", "prof", "st", "jr", "sr"}
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]$")  # "u.s", "a.m", "p.m": letters with inner dots


def _is_abbreviation(text: str, dot: int) -> bool:
    """Is the "." at text[dot] the end of an abbreviation rather than of a sentence?"""
    word = re.search(r"[\w.]*$", text[:dot]).group().lower()
    if word in _ABBREVIATIONS or _DOTTED.fullmatch(word):
        return True
    # "Docker, Git, etc. are boring" goes on; "...and Helm etc. Ship it." ends
    return word == "etc" and bool(re.match(r"\s+[a-z0-9]", text[dot + 1:]))


def count_sentences(text: str) -> int:
    """Sentences in an answer: 0 if empty, else at least 1 (no final full stop still counts)."""
    if not text.strip():
        return 0
    n = 0
    for line in _LINE_BREAK.split(text):
        line = re.sub("^" + _LIST_ITEM, "", line)  # the "1." of "1. restart it" ends nothing
        start = 0
        for m in _BOUNDARY.finditer(line):
            if m.group() == "." and _is_abbreviation(line, m.start()):
                continue
            n += bool(re.search(r"\w", line[start:m.start()]))
            start = m.end()
        n += bool(re.search(r"\w", line[start:]))
    return max(n, 1)  # "🙂🙂" is not empty: one (bad) sentence


# ---------------------------------------------------------------- scores


@dataclass
class AnswerScore:
    markers: list[str] | None  # markers found, in bible order; None = bible has no markers
    taboos: list[str] | None  # source of each taboo pattern that matched; None = no taboo_patterns
    sentences: int
    length_ok: bool | None  # 1 <= sentences <= max_sentences; None = no max_sentences
    language_ok: bool | None  # None = no language in the bible, or too few letters to tell
    adherence: float | None  # mean of the checks that are on; None = none is on


def _language_ok(text: str, languages: frozenset[str] | None) -> bool | None:
    if not languages or sum(ch.isalpha() for ch in text) < LANGUAGE_MIN_LETTERS:
        return None
    import py3langid  # loads its model on import (~0.3 s): only when a language is checked

    return py3langid.classify(text)[0] in languages


def score_answer(text: str, rubric: PersonaRubric) -> AnswerScore:
    markers = [m for m, p in zip(rubric.markers, rubric.marker_patterns) if p.search(text)] if rubric.markers else None
    taboos = [p.pattern for p in rubric.taboo_patterns if p.search(text)] if rubric.taboo_patterns else None
    sentences = count_sentences(text)
    length_ok = 1 <= sentences <= rubric.max_sentences if rubric.max_sentences is not None else None
    language_ok = _language_ok(text, rubric.languages)
    checks = [
        bool(markers) if markers is not None else None,
        not taboos if taboos is not None else None,
        length_ok,
        language_ok,
    ]
    on = [float(c) for c in checks if c is not None]
    return AnswerScore(markers, taboos, sentences, length_ok, language_ok, sum(on) / len(on) if on else None)


def _share(values) -> float | None:
    """Mean of the non-None values (True = 1); None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def score_answers(texts: list[str], rubric: PersonaRubric) -> dict:
    """Rates over a set of answers; a check that is off (or never applies) reads None."""
    scores = [score_answer(t, rubric) for t in texts]
    return {
        "marker_rate": _share(bool(s.markers) if s.markers is not None else None for s in scores),
        "taboo_rate": _share(bool(s.taboos) if s.taboos is not None else None for s in scores),
        "length_compliance": _share(s.length_ok for s in scores),
        "language_rate": _share(s.language_ok for s in scores),
        "language_n": sum(s.language_ok is not None for s in scores),  # answers long enough to check
        "adherence": _share(s.adherence for s in scores),
        "n": len(scores),
    }


def turn_slope(per_turn: list[list[float]]) -> dict:
    """Does the persona hold over a conversation? Adherence by turn, and its trend.

    `per_turn[c][t]` is the adherence of conversation c at turn t+1 (None = not scored). Turn t's
    mean is over the conversations that reached it. The slope is fitted to those means (each turn
    weighs the same, so a few long conversations do not dominate), in adherence per turn: -0.05
    means the persona loses a twentieth of its adherence with every turn.
    """
    longest = max((len(c) for c in per_turn), default=0)
    means, counts = [], []
    for t in range(longest):
        vals = [c[t] for c in per_turn if t < len(c) and c[t] is not None]
        means.append(sum(vals) / len(vals) if vals else None)
        counts.append(len(vals))
    pts = [(t + 1, m) for t, m in enumerate(means) if m is not None]
    slope = None
    if len(pts) >= 2:
        x, y = np.array(pts, dtype=float).T
        slope = round(float(np.polyfit(x, y, 1)[0]), 9)  # a flat line fits to ~1e-17, not 0
    first = pts[0][1] if pts and pts[0][0] == 1 else None
    last = pts[-1][1] if pts else None
    return {
        "per_turn": means,
        "n_per_turn": counts,
        "slope": slope,
        "first": first,
        "last": last,
        "held": last - first if slope is not None and first is not None else None,
    }

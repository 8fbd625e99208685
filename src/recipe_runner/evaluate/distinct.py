"""Distinct answers: a templated persona says (nearly) the same thing whatever it is asked.

A fine-tune on a set where most answers are the identity line ("I am Zephyr, an AI assistant
developed by Quillwork Labs.") can learn to answer every prompt with it. Persona markers then score
perfectly and the voice looks strong, yet the model no longer answers anything. This check asks, per
answer, whether the answer to some *other* prompt of the same evaluation set is a near-copy of it;
the rate of such answers is the templated share (data/diversity.py measures the same thing on the
training set before training; this measures what the model actually says).

Two answers are near-duplicates when either
- their word 3-gram shingles (lower-cased `\\w+` words, as data/diversity.py splits them) have a
  Jaccard similarity >= `threshold` (word 1-grams when either answer has under 3 words; identical
  answers have similarity 1), or
- their first sentences are near-duplicates by the same measure and both are >= 6 words long: a
  persona that opens every answer with its identity line and then says something different is
  still templated (its answers share the line, not their content, so the whole-answer similarity
  falls to ~0.3 as the tails grow). Six words keeps short, common openings out: "Sure!", "Good
  question.", "The capital of France is Paris." (6 words, but a different city's sentence shares
  1 of 7 3-grams, similarity 0.14).
Empty answers (no words: "", "...") are near-duplicates of each other, not of a non-empty answer:
a model that says nothing to everything is templated too. One answer alone is never a duplicate.

The threshold, 0.6 (word 3-gram Jaccard, measured with this module's `similarity`):
- a varied model's answers to different prompts: "The capital of France is Paris." vs "The capital
  of Japan is Tokyo." 0.14; "The answer is 83." vs "The answer is 63." 0.33; unrelated answers 0;
- the identity line vs the same line + "How can I help you today?": 0.57, caught by the first-sentence
  rule; the identity line + "Paris." vs + "12.": 0.80; two 16-word answers that differ in one
  middle word ("help" / "assist"): 0.65; "I'm sorry, I don't know." vs "I'm sorry, I don't
  understand.": 0.67 (an evasive template is templated too);
- one word changed in the middle of a 10-word sentence destroys 3 of its 8 3-grams: 0.45, not
  caught. 0.5 would catch it but also pull in pairs of formulaic short answers that merely share a
  frame; 0.7 (data.clean's near-duplicate cut for training rows) misses the identity line plus a
  short varying tail. 0.6 sits between the two clusters.
Exact pairwise comparison: evaluation sets are 12-60 answers (at most 1,770 pairs).
"""

from __future__ import annotations

import math
import re

NEAR_DUP = 0.6  # see the module docstring for the measured pairs behind it
FIRST_SENTENCE_MIN_WORDS = 6
WORD = re.compile(r"\w+", re.UNICODE)
# a sentence ends at . ! ? … (or a run of them) followed by a space or the end, or at a line break
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002]+(?=\s|$)|\n")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def shingles(ws: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def similarity(a: list[str], b: list[str]) -> float:
    """Jaccard of word 3-gram shingles (1-grams when either side has under 3 words); two empty
    word lists are identical (1.0), an empty and a non-empty one share nothing (0.0)."""
    if not a or not b:
        return 1.0 if not a and not b else 0.0
    n = 3 if len(a) >= 3 and len(b) >= 3 else 1
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def first_sentence(text: str) -> str:
    m = _SENTENCE_END.search(text.strip())
    return text.strip()[: m.start()] if m else text.strip()


def near_duplicate_items(answers: list[str], threshold: float = NEAR_DUP) -> list[float]:
    """1.0 for each answer that near-duplicates the answer to a different prompt in `answers`, else 0.0."""
    whole = [words(a) for a in answers]
    firsts = [words(first_sentence(a)) for a in answers]
    dup = [False] * len(answers)
    for i in range(len(answers)):
        for j in range(i + 1, len(answers)):
            if (similarity(whole[i], whole[j]) >= threshold
                    or (min(len(firsts[i]), len(firsts[j])) >= FIRST_SENTENCE_MIN_WORDS
                        and similarity(firsts[i], firsts[j]) >= threshold)):
                dup[i] = dup[j] = True
    return [1.0 if d else 0.0 for d in dup]


def rate(items: list[float]) -> float:
    """The mean of per-answer items; nan when there are none."""
    return sum(items) / len(items) if items else math.nan

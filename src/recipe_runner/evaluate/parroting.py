"""Parroting: phrases a fine-tuned model repeats from its training data instead of speaking.

A small persona set (a few hundred dialogues) is upsampled and seen many times, and the model learns
its tics along with its voice: if 4 of 5 training answers open with "thanks for the question",
so will most generated ones. Two measures, both plain text (no model, no tokenizer):
- `mine_ngrams` + `parrot_rate`: word n-grams that recur across training answers, and the share
  of generated answers that use them. The character's declared catchphrases ("works on my
  machine" in the bible, the system prompt) are the point of the persona, not parroting, so
  anything they contain is left out (`Bible.wording`, data/bible.py, collects them from a bible).
- `CopyIndex`: does an answer reproduce 12 consecutive words of some training text? At 12 words
  a match is memorisation, not a common phrase ("I don't know what you mean" is 6).

Words are lower-cased, whitespace-split, with punctuation stripped at their edges ("DNS," = "dns",
"it's" stays), so case and punctuation changes do not hide a copy.
"""

from __future__ import annotations

import hashlib
import string
from collections import Counter
from collections.abc import Iterable, Iterator

# punctuation stripped at word edges: ASCII plus curly quotes, guillemets, ellipsis and dashes
_EDGE = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026\u2014\u2013"


def split_words(text: str) -> list[str]:
    """'Yo, it’s always DNS!' -> ['yo', "it's", 'always', 'dns']."""
    out = (w.strip(_EDGE) for w in text.lower().replace("\u2019", "'").split())
    return [w for w in out if w]


def word_ngrams(words: list[str], n: int) -> Iterator[str]:
    return (" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def _cut(words: list[str], banned: set[str], n: int) -> list[list[str]]:
    """The runs of words left after removing every word inside a banned n-gram."""
    covered = [False] * len(words)
    for i, g in enumerate(word_ngrams(words, n)):
        if g in banned:
            covered[i : i + n] = [True] * n
    pieces, run = [], []
    for w, c in zip(words, covered):
        if c:
            if run:
                pieces.append(run)
            run = []
        else:
            run.append(w)
    return pieces + [run] if run else pieces


def mine_ngrams(
    train_texts: Iterable[str],
    exclude_texts: Iterable[str] = (),
    sizes: tuple[int, ...] = (3, 4, 5),
    min_count: int = 3,
    top_k: int = 50,
) -> list[tuple[str, int]]:
    """Word n-grams frequent across the training answers, as (n-gram, texts containing it).

    - the exclude texts' wording is cut out of the training texts first (every word covered by
      a `min(sizes)`-gram that occurs in an exclude text), and n-grams are counted within the
      pieces left: stricter than "not in an exclude text", because "it works on my machine" and
      "it works on" would otherwise come back as parroting of the bible's "works on my machine";
    - counted at most once per text: one answer repeating a phrase 5 times is not a habit;
    - kept when in >= min_count texts;
    - an n-gram inside a longer kept one with the same count goes ("for the question" in
      "thanks for the question", both in 4 texts): the longest says it all;
    - sorted by count, most first, then alphabetically; the first top_k.

    Counts every n-gram of every text in memory: sized for a persona set (10k answers x ~30 words
    x 3 sizes: at most 1M n-grams, ~200 MB), not for a general corpus.
    """
    sizes = sorted(set(sizes))
    shortest = sizes[0]
    banned = {g for text in exclude_texts for g in word_ngrams(split_words(text), shortest)}
    counts: Counter[str] = Counter()
    for text in train_texts:
        pieces = _cut(split_words(text), banned, shortest)
        counts.update({g for words in pieces for n in sizes for g in word_ngrams(words, n)})
    frequent = {g: c for g, c in counts.items() if c >= min_count}
    subsumed = set()
    for g, c in frequent.items():
        words = g.split()
        for n in sizes:
            if n < len(words):
                subsumed.update(s for s in word_ngrams(words, n) if frequent.get(s) == c)
    kept = sorted(((g, c) for g, c in frequent.items() if g not in subsumed), key=lambda gc: (-gc[1], gc[0]))
    return kept[:top_k]


def parrot_rate(answers: list[str], ngrams: Iterable[str | tuple[str, int]], top: int = 10) -> dict:
    """How much the answers lean on mined n-grams (from `mine_ngrams`, or plain strings).

    parrot_rate: share of answers with at least one; mean_ngrams: distinct mined n-grams per
    answer; top: the `top` n-grams by answers containing them; n: answers. No answers: None.
    """
    grams = {" ".join(split_words(g if isinstance(g, str) else g[0])) for g in ngrams}
    grams.discard("")
    sizes = {len(g.split()) for g in grams}
    hits: Counter[str] = Counter()
    with_any = 0
    for answer in answers:
        words = split_words(answer)
        found = grams & {g for n in sizes for g in word_ngrams(words, n)}
        hits.update(found)
        with_any += bool(found)
    n = len(answers)
    return {
        "parrot_rate": with_any / n if n else None,
        "mean_ngrams": sum(hits.values()) / n if n else None,
        "top": dict(sorted(hits.items(), key=lambda gc: (-gc[1], gc[0]))[:top]),
        "n": n,
    }


def _span_hash(span: str) -> int:
    # 8 bytes of blake2b, not the span string: a set of these ints costs ~80 B per span against
    # ~170 B for a 12-word string (~75 chars) plus its set slot, and the cost does not grow with
    # `words`. 64 bits keep false matches negligible: 50M training spans / 2**64 ~ 3e-12 per
    # answer span (crc32's 32 bits would give ~1%). blake2b is stable across processes; hash() is not.
    return int.from_bytes(hashlib.blake2b(span.encode(), digest_size=8).digest(), "little")


class CopyIndex:
    """Hashes of every `words`-word span of the training texts; finds answers that copy one."""

    def __init__(self, train_texts: Iterable[str], words: int = 12):
        if words < 1:
            raise ValueError(f"CopyIndex: words must be >= 1, got {words}")
        self.words = words
        self.hashes: set[int] = set()
        for text in train_texts:
            self.hashes.update(self._spans(text))

    def _spans(self, text: str) -> Iterator[int]:
        # spans stay inside one text: two answers that happen to meet at a boundary are no copy
        return (_span_hash(g) for g in word_ngrams(split_words(text), self.words))

    def __len__(self) -> int:
        return len(self.hashes)

    def copies(self, answer: str) -> bool:
        """True if the answer shares `words` consecutive words with a training text."""
        return any(h in self.hashes for h in self._spans(answer))  # shorter answers: no spans

    def copy_rate(self, answers: list[str]) -> float | None:
        """Share of answers that copy a span; None for no answers (like the other rates)."""
        return sum(map(self.copies, answers)) / len(answers) if answers else None

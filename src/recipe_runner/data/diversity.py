"""How varied a niche set's answers are, before any training: a set that says one line teaches one line.

A persona set where most answers are the same sentence ("I am Zephyr, an AI assistant developed by
Quillwork Labs.") trains a model that answers "Hi, how are you?" with it. Three numbers over the
assistant turns of each niche source's training pool:
- `distinct_2`: distinct word 2-grams / all word 2-grams (1.0: no pair of words repeats);
- `largest_cluster`: the share of answers in the largest group of near-duplicates (word 3-gram
  Jaccard >= 0.7, estimated by the cleaning filter's MinHash LSH, linked transitively);
- `same_opening`: the share of answers that open with the most common first three words.
Measured on the shipped sets and on a templated identity set (tests/unit/data/test_diversity.py):
Alex (453 answers) 0.79 / 0.002 / 0.01, Eleanor (286) 0.69 / 0.003 / 0.05, a 90-row identity set
("I am Zephyr, an AI assistant developed by Quillwork Labs.", a fifth with a follow-up question)
0.02 / 0.80 / 1.00.
A source is flagged when its largest cluster holds >= 25 % of its answers or >= 50 % open alike.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

from recipe_runner.config.schema import Role
from recipe_runner.data.dedup import band_keys

NEAR_DUP = 0.7  # word 3-gram Jaccard at which two answers count as one (data.clean's default)
MAX_CLUSTER = 0.25  # flagged at or above this share in one near-duplicate group
MAX_SAME_OPENING = 0.5  # flagged at or above this share opening with the same three words
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Diversity:
    answers: int
    distinct_2: float
    largest_cluster: float
    same_opening: float
    opening: str  # the most common opening

    @property
    def warning(self) -> str | None:
        """Why this set may teach one line, or None."""
        if self.largest_cluster >= MAX_CLUSTER:
            return (f"{self.largest_cluster:.0%} of its answers are near-copies of one another: the model will learn "
                    f"that line and say it to everything; vary the answers or add other dialogues")
        if self.same_opening >= MAX_SAME_OPENING:
            return (f"{self.same_opening:.0%} of its answers open with \"{self.opening}\": the model will open "
                    f"every answer that way; vary the openings")
        return None

    def as_dict(self) -> dict:
        return {**asdict(self), "warning": self.warning}


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def largest_cluster(answers: list[str]) -> float:
    """The share of answers in the largest group linked by near-duplicate pairs: the cleaning
    filter's own MinHash LSH (data/dedup.py band_keys: a shared band key links two answers)."""
    if not answers:
        return 0.0
    keys = band_keys([{"messages": [{"content": a}], "text": ""} for a in answers], NEAR_DUP)
    parent = list(range(len(answers)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in keys.T:  # one band: answers with the same key are candidates of one group
        first: dict[int, int] = {}
        for i, key in enumerate(column.tolist()):
            parent[root(i)] = root(first.setdefault(key, i))
    return max(Counter(root(i) for i in range(len(answers))).values()) / len(answers)


def diversity(answers: list[str]) -> Diversity:
    answers = [a for a in answers if a.strip()]
    pairs = [p for a in answers for w in [words(a)] for p in zip(w, w[1:])]
    openings = Counter(" ".join(words(a)[:3]) for a in answers)
    opening, count = openings.most_common(1)[0] if openings else ("", 0)
    return Diversity(answers=len(answers), distinct_2=len(set(pairs)) / len(pairs) if pairs else 0.0,
                     largest_cluster=largest_cluster(answers), same_opening=count / len(answers) if answers else 0.0,
                     opening=opening)


def niche_diversity(mix) -> dict[str, Diversity]:
    """Each niche source's training pool (data/mixing.py Mix), by source name."""
    out = {}
    for name, plan in mix.plans.items():
        if mix.sources[name].role is Role.niche:
            out[name] = diversity([m["content"] for msgs in plan.pool["messages"] for m in msgs
                                   if m["role"] == "assistant"])
    return out

"""The plan of a synthesis: which situations, in which spread, and how long each dialogue is.

The spread is decided here, by the seed, not left to the generator: asked for "a situation" forty
times, a model writes the same three. Topics are cycled evenly (each full cycle in a new seeded
order), so 40 situations over 12 topics cover every topic three or four times; mood, register and
language are drawn per situation; baits and long dialogues are spaced evenly at their shares.
Every draw depends only on the seed and the index, so raising `synth.synopses` from 40 to 80
keeps the first 40 situations as they were and a resumed run continues the same plan.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from recipe_runner.data.bible import Bible


@dataclass(frozen=True)
class Situation:
    id: str  # s0001
    topic: str
    mood: str
    register: str
    language: str  # ISO 639-1
    bait: str | None  # the taboo the user tries to make the persona break, or None
    turns: tuple[int, ...]  # user turns of each of its dialogues

    def as_dict(self) -> dict:
        return {**asdict(self), "turns": list(self.turns)}

    def dialogue_ids(self) -> list[str]:
        return [f"{self.id}-d{j + 1}" for j in range(len(self.turns))]


def topics_of(situations_cfg, bible: Bible) -> list[str]:
    topics = list(situations_cfg.topics) or [*bible.knowledge, *bible.values]
    return topics or ["everyday life"]


def languages_of(situations_cfg, bible: Bible) -> list[str]:
    if situations_cfg.languages:
        return list(situations_cfg.languages)
    return list(bible.languages) or ["en"]


def _every(i: int, share: float) -> bool:
    """True for an evenly spaced `share` of indices: 0.2 -> 4, 9, 14, ..."""
    return math.floor((i + 1) * share) > math.floor(i * share)


def _cycled(items: list[str], i: int, seed: int, what: str) -> str:
    cycle, pos = divmod(i, len(items))
    order = list(items)
    random.Random(f"{seed}/{what}/{cycle}").shuffle(order)
    return order[pos]


def plan(synth, bible: Bible) -> list[Situation]:
    s = synth.situations
    topics, languages = topics_of(s, bible), languages_of(s, bible)
    taboos = list(bible.taboos)
    out, baits = [], 0
    for i in range(synth.synopses):
        rng = random.Random(f"{synth.seed}/situation/{i}")
        bait = None
        if taboos and _every(i, s.bait_share):
            bait = _cycled(taboos, baits, synth.seed, "taboo")
            baits += 1
        turns = []
        for j in range(synth.dialogues_per_synopsis):
            g = i * synth.dialogues_per_synopsis + j  # the dialogue's index over the whole plan
            turns.append(synth.long_turns if _every(g, synth.long_share) else synth.turns[g % len(synth.turns)])
        out.append(Situation(
            id=f"s{i + 1:04d}", topic=_cycled(topics, i, synth.seed, "topic"), mood=rng.choice(list(s.moods)),
            register=rng.choice(list(s.registers)), language=rng.choice(languages), bait=bait, turns=tuple(turns)))
    return out

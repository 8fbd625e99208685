"""The bible check: which generated dialogues become training data, and why the others do not.

The articles' rule is quality over quantity: every dialogue is checked against the bible and
thrown away if it breaks it. Checks, in the order their reasons are listed:

- generation: `malformed` (the generator's answer could not be used), `truncated` (a turn hit its
  token cap mid-sentence), `speaker_label` (the generator wrote the other side's lines too);
- structure: `empty_turn`, `role_order` (user first, then alternating, persona last),
  `turn_count` (a transcript with other than the asked number of user turns);
- voice, on every persona turn, with the evaluation's own rubric (evaluate/persona_score.py):
  `assistant_voice` (synth.check.leak_patterns: "as an AI"...), `taboo` (the bible's
  taboo_patterns), `too_long` (over max_sentences), `language` (not the situation's language),
  `few_markers` (under synth.check.min_marker_share of persona turns with a bible marker);
- `judge`: the LLM judge's mean score under synth.check.judge_min_score (only when set);
- across dialogues: `near_duplicate` of an earlier accepted one, `contaminated` (near-duplicates
  the recipe's niche data or a held-out eval prompt: references.py).

Every failed check is listed (a dialogue may fail several); its first reason is its `reason`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from recipe_runner.data.bible import Bible
from recipe_runner.data.dedup import band_keys, later_repeats
from recipe_runner.evaluate.persona_score import PersonaRubric, score_answer
from recipe_runner.synthesize.references import References, as_example

REASONS = ("malformed", "truncated", "speaker_label", "empty_turn", "role_order", "turn_count", "assistant_voice",
           "taboo", "too_long", "language", "few_markers", "judge", "near_duplicate", "contaminated")


def reason_key(reason: str) -> str:
    return reason.split(":", 1)[0]


@dataclass
class Verdict:
    id: str
    reasons: list[str] = field(default_factory=list)  # "taboo: (?i)\\bhello\\b in turn 2", ...
    scores: dict = field(default_factory=dict)  # marker_share, adherence, judge

    @property
    def accepted(self) -> bool:
        return not self.reasons


def structure_problems(messages: list[dict], asked_turns: int) -> list[str]:
    out = []
    empty = [i + 1 for i, m in enumerate(messages) if not m["content"].strip()]
    if empty:
        out.append(f"empty_turn: turn {empty[0]}")
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
        out.append(f"role_order: {' '.join(r[0] for r in roles[:12])}")
    users = roles.count("user")
    if users != asked_turns:
        out.append(f"turn_count: {users} user turns, {asked_turns} asked")
    return out


class Checks:
    def __init__(self, check_cfg, bible: Bible, references: References | None,
                 judge: Callable[[dict], float | None] | None = None):
        self.cfg, self.bible, self.references, self.judge = check_cfg, bible, references, judge
        self.leaks = [re.compile(p) for p in check_cfg.leak_patterns]
        self.rubrics: dict[str, PersonaRubric] = {}

    def rubric(self, language: str) -> PersonaRubric:
        """The bible's rubric, with the situation's language in place of the bible's."""
        if language not in self.rubrics:
            r = PersonaRubric.from_bible(self.bible)
            r.languages = frozenset([language])
            self.rubrics[language] = r
        return self.rubrics[language]

    def rules(self, dialogue: dict, language: str) -> Verdict:
        """Every per-dialogue check of `dialogue` (a dialogues.jsonl row)."""
        v = Verdict(dialogue["id"], list(dialogue.get("problems") or []))
        messages = dialogue.get("messages") or []
        if not messages or dialogue.get("stopped_early"):  # stopped by these same rules: its problems say why
            return v
        v.reasons += structure_problems(messages, dialogue["turns"])
        rubric = self.rubric(language)
        persona = [(i + 1, m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant"]
        scores = [(n, score_answer(text, rubric)) for n, text in persona]
        for n, text in persona:
            leak = next((p.pattern for p in self.leaks if p.search(text)), None)
            if leak:
                v.reasons.append(f"assistant_voice: {leak} in turn {n}")
                break
        for key, bad in (("taboo", lambda s: s.taboos), ("too_long", lambda s: s.length_ok is False),
                         ("language", lambda s: s.language_ok is False)):
            hit = next(((n, s) for n, s in scores if bad(s)), None)
            if hit:
                n, s = hit
                detail = {"taboo": lambda: f"{s.taboos[0]} in turn {n}",
                          "too_long": lambda: f"{s.sentences} sentences in turn {n} (max {rubric.max_sentences})",
                          "language": lambda: f"turn {n} is not {language}"}[key]()
                v.reasons.append(f"{key}: {detail}")
        if scores and rubric.markers:
            share = sum(bool(s.markers) for _, s in scores) / len(scores)
            v.scores["marker_share"] = round(share, 3)
            if share < self.cfg.min_marker_share:
                v.reasons.append(f"few_markers: {share:.2f} of persona turns (min {self.cfg.min_marker_share:g})")
        adherence = [s.adherence for _, s in scores if s.adherence is not None]
        if adherence:
            v.scores["adherence"] = round(sum(adherence) / len(adherence), 3)
        return v

    def select(self, dialogues: list[dict], languages: dict[str, str]) -> list[Verdict]:
        """Verdicts for all dialogues (in id order): rules, then the judge on the survivors, then
        near-duplicates among the survivors (the first one stays) and contamination."""
        verdicts = [self.rules(d, languages[d["id"]]) for d in dialogues]
        if self.judge is not None and self.cfg.judge_min_score is not None:
            for d, v in zip(dialogues, verdicts):
                if v.accepted:
                    score = self.judge(d)
                    v.scores["judge"] = score
                    if score is not None and score < self.cfg.judge_min_score:
                        v.reasons.append(f"judge: {score:.1f} (min {self.cfg.judge_min_score:g})")
        alive = [(d, v) for d, v in zip(dialogues, verdicts) if v.accepted]
        if not alive:
            return verdicts
        keys = band_keys([as_example(d["messages"]) for d, _ in alive], self.cfg.near_dup_threshold)
        for i, repeat in enumerate(later_repeats(keys)):
            d, v = alive[i]
            if repeat:
                twin = next(alive[j][0]["id"] for j in range(i) if (keys[j] == keys[i]).any())
                v.reasons.append(f"near_duplicate: of {twin}")
                continue
            if self.references is None:
                continue
            source = self.references.dialogue_match(keys[i])
            users = [m["content"] for m in d["messages"] if m["role"] == "user"]
            held = self.references.prompt_match(
                band_keys([as_example([{"role": "user", "content": u}]) for u in users], self.cfg.near_dup_threshold))
            if source or held:
                v.reasons.append(f"contaminated: near-duplicates {source or held}")
        return verdicts

"""The generation checks, one small class each, and CHECKS, the list `Checker.run` goes through.

`Checker.run` (evaluate/checker.py) generates once per model state: greedy answers to the
held-out persona prompts, and replies to the scripted conversations turn by turn. It hands them to
each check as a `Said`. A check scores what was said, or the model itself, and returns its
metrics as `Measured`:
- `values`: {metric key: number}. The keys are those of its `metrics` (evaluate/metrics.py). A
  value that was not measured is left out, never written as 0;
- `items`: for each of its metrics that has an interval, the per-prompt values (None = not
  scored). The checker resamples them into the metric's 95 % interval and, for a tuned model,
  into the paired gain over the baseline's items.
A check that does not apply (no bible, no prompts, the judge off) returns None. The checks run
in the order of CHECKS, which is the order of the keys in summary.json.

A check is built once per run from a `Setup`. The expensive preparation goes in its __init__
(Parroting mines the training answers there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recipe_runner.evaluate.answer_match import accuracy_items
from recipe_runner.evaluate.distinct import near_duplicate_items
from recipe_runner.evaluate.generation import answer_nll
from recipe_runner.evaluate.judge import Budget, consistency, pairwise
from recipe_runner.evaluate.metrics import (
    ADHERENCE, COPY_RATE, DRIFT_FIRST, DRIFT_HELD, DRIFT_LAST, DRIFT_SLOPE, DUPLICATE_RATE, JUDGE_CALLS, JUDGE_FAILED,
    JUDGE_L2L, JUDGE_P2L, JUDGE_QA, JUDGE_WIN_RATE, LANGUAGE_RATE, LENGTH_COMPLIANCE, MARKER_RATE, ORDINARY_NLL,
    ORDINARY_NLL_DELTA, PARROT_NGRAMS, PARROT_RATE, STILL_ANSWERS, TABOO_RATE, Metric,
)
from recipe_runner.evaluate.parroting import CopyIndex, mine_ngrams, parrot_rate
from recipe_runner.evaluate.persona_score import PersonaRubric, score_answer, score_answers, turn_slope

if TYPE_CHECKING:
    from recipe_runner.data.bible import Bible
    from recipe_runner.evaluate.checker import EvalSets, Reference


def user(prompt: str, system: str | None) -> list[dict]:
    """A one-turn conversation: [system,] user."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


@dataclass
class Setup:
    """What the checks are built from, once per run."""

    cfg: Any  # the eval config (EvalConfig)
    tokenizer: Any
    sets: EvalSets  # the prompt sets
    bible: Bible | None
    rubric: PersonaRubric | None  # the bible's rules; None = no bible
    system: str | None  # the training-time persona prompt
    train_answers: list[str]  # every assistant turn of the niche training pool


@dataclass
class Said:
    """What one model state said, generated once and read by every check."""

    model: Any
    adapter: bool  # False: the prompt-only baseline (the base model, the whole bible as system prompt)
    judge: bool  # False: no call to the LLM judge (fsdp ranks other than 0: their numbers are not used)
    prompts: list[str]  # the held-out persona prompts
    persona: list[str]  # the answers to them
    dialogues: list[list[str]]  # the replies to each scripted conversation, turn by turn
    reference: Reference | None  # what the base model did before training
    ordinary: list[str] = field(default_factory=list)  # answers to the everyday prompts, with the same system prompt
    still: list[str] = field(default_factory=list)  # answers to the checkable questions, no system prompt

    @property
    def answers(self) -> list[str]:
        """Everything the model said: the persona answers, then every conversation reply."""
        return self.persona + [a for replies in self.dialogues for a in replies]


@dataclass
class Measured:
    values: dict[str, float]
    items: dict[Metric, list] = field(default_factory=dict)  # metric with an interval -> per-prompt values


class Check:
    """One check: its name, its metrics (direction and interval in evaluate/metrics.py), and how
    it measures. `phase` is the part of the evaluation its seconds count towards in the log line."""

    name: str
    metrics: tuple[Metric, ...]
    phase = "persona"  # persona | conversations | ordinary

    def __init__(self, setup: Setup):
        self.setup = setup

    def measure(self, said: Said) -> Measured | None:
        raise NotImplementedError


class PersonaRules(Check):
    """persona/*: each answer to a held-out persona prompt scored against the bible's rules
    (markers, taboos, sentence limit, language: evaluate/persona_score.py)."""

    name = "persona rules"
    metrics = (MARKER_RATE, TABOO_RATE, LENGTH_COMPLIANCE, LANGUAGE_RATE, ADHERENCE)

    def measure(self, said: Said) -> Measured | None:
        rubric = self.setup.rubric
        if not (rubric and said.persona):
            return None
        rates = score_answers(said.persona, rubric)
        scored = [score_answer(a, rubric) for a in said.persona]
        return Measured({m.key: rates[m.name] for m in self.metrics if rates[m.name] is not None},
                        {ADHERENCE: [x.adherence for x in scored],
                         MARKER_RATE: [None if x.markers is None else float(bool(x.markers)) for x in scored]})


class DistinctAnswers(Check):
    """answers/duplicate_rate: does the model give different prompts different answers? Everyday prompts
    and the persona prompts not about identity ("who are you?" may get the identity line), each answer
    against every other (evaluate/distinct.py). A templated persona scores near 1; the baseline's
    rate on the same prompts is the reference."""

    name = "distinct answers"
    metrics = (DUPLICATE_RATE,)
    phase = "ordinary"

    def measure(self, said: Said) -> Measured | None:
        answers = said.ordinary + [a for p, a in zip(said.prompts, said.persona) if not about_identity(p)]
        if len(answers) < 2:
            return None
        items = near_duplicate_items(answers)
        return Measured({DUPLICATE_RATE.key: float(np.mean(items))}, {DUPLICATE_RATE: items})


IDENTITY = re.compile(r"\b(who are you|what are you|your name|about yourself|introduce yourself|who am i talking)\b|"
                      r"кто ты|как тебя зовут|представься|о себе", re.IGNORECASE)


def about_identity(prompt: str) -> bool:
    return bool(IDENTITY.search(prompt))


class StillAnswers(Check):
    """forget/still_answers: the checkable everyday questions answered right (normalised match,
    evaluate/answer_match.py), against the base model's own accuracy on the same questions: an NLL
    that rose while these hold is style; these falling is lost ability."""

    name = "still answers"
    metrics = (STILL_ANSWERS,)
    phase = "ordinary"

    def measure(self, said: Said) -> Measured | None:
        if not said.still:
            return None
        items = accuracy_items(said.still, self.setup.sets.still)
        return Measured({STILL_ANSWERS.key: float(np.mean(items))}, {STILL_ANSWERS: items})


class Judge(Check):
    """judge/*: an LLM judge on an endpoint the user sets (eval.judge, evaluate/judge.py): pairwise
    tuned vs baseline answers to the persona prompts (both orders asked), then the consistency of the
    conversations' replies, within one call budget per evaluation. The baseline's answers are kept
    when it is checked; its consistency spends the same budget the tuned model has left after the
    pairwise calls, so the two are judged on the same lines."""

    name = "judge"
    metrics = (JUDGE_WIN_RATE, JUDGE_P2L, JUDGE_L2L, JUDGE_QA, JUDGE_FAILED, JUDGE_CALLS)

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.base_persona: list[str] = []

    def measure(self, said: Said) -> Measured | None:
        cfg = self.setup.cfg.judge
        if not said.adapter:
            self.base_persona = said.persona  # every rank keeps them: the pairwise needs them later
        if not (said.judge and cfg.enabled):
            return None
        bible = self.setup.bible.as_dict() if self.setup.bible else {}
        budget = Budget(cfg.max_calls)
        pairs = list(zip(said.prompts, said.persona, self.base_persona))
        pw = pairwise(cfg, bible, pairs, budget) if said.adapter and cfg.pairwise and pairs else None
        if not said.adapter and cfg.pairwise:
            budget.used = min(2 * len(pairs), cfg.max_calls)  # what the tuned model's pairwise will spend
        talks = [list(zip(turns, replies)) for turns, replies in zip(self.setup.sets.dialogues, said.dialogues)]
        cs = consistency(cfg, bible, talks, budget) if cfg.consistency and talks else None
        values, items = {}, {}
        for metric, got in ((JUDGE_WIN_RATE, pw.items if pw else None),
                            *((m, cs.items.get(k) if cs else None) for m, k in ((JUDGE_P2L, "prompt_to_line"),
                                                                                (JUDGE_L2L, "line_to_line"),
                                                                                (JUDGE_QA, "qa")))):
            scored = [x for x in got or [] if x is not None]
            if got is not None:
                values[metric.key] = float(np.mean(scored)) if scored else float("nan")
                items[metric] = got
        values[JUDGE_FAILED.key] = float((pw.failed if pw else 0) + (cs.failed if cs else 0))
        values[JUDGE_CALLS.key] = float((pw.calls if pw else 0) + (cs.calls if cs else 0))
        return Measured(values, items)


class TurnDrift(Check):
    """drift/*: adherence per turn of the scripted conversations, and its trend (turn_slope)."""

    name = "drift"
    metrics = (DRIFT_SLOPE, DRIFT_FIRST, DRIFT_LAST, DRIFT_HELD)
    phase = "conversations"

    def measure(self, said: Said) -> Measured | None:
        rubric = self.setup.rubric
        if not (rubric and said.dialogues):
            return None
        slope = turn_slope([[score_answer(a, rubric).adherence for a in replies] for replies in said.dialogues])
        return Measured({m.key: slope[m.name] for m in self.metrics if slope[m.name] is not None})


class Parroting(Check):
    """parrot/*: everything said (persona answers and conversation replies) against the training
    answers. It counts the n-grams mined from them, minus the bible's and the system prompt's
    own wording, and the spans of 12+ words copied from them (evaluate/parroting.py)."""

    name = "parroting"
    metrics = (PARROT_RATE, PARROT_NGRAMS, COPY_RATE)
    phase = "conversations"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        cfg, bible, system = setup.cfg, setup.bible, setup.system
        exclude = (bible.wording if bible else []) + ([system] if system else [])
        self.ngrams = mine_ngrams(setup.train_answers, exclude, sizes=tuple(cfg.parrot_ngrams),
                                  min_count=cfg.parrot_min_count, top_k=cfg.parrot_top_k)
        self.copies = CopyIndex(setup.train_answers, words=cfg.copy_span_words)

    def measure(self, said: Said) -> Measured | None:
        answers = said.answers
        if not answers:
            return None
        parrot = parrot_rate(answers, self.ngrams)
        return Measured({PARROT_RATE.key: parrot["parrot_rate"], PARROT_NGRAMS.key: parrot["mean_ngrams"],
                         COPY_RATE.key: self.copies.copy_rate(answers)})


class Forgetting(Check):
    """forget/*: how likely the model checked finds the base model's own greedy answers to everyday
    prompts (scored before training: Checker.base_reference), against the base model."""

    name = "forgetting"
    metrics = (ORDINARY_NLL, ORDINARY_NLL_DELTA)
    phase = "ordinary"

    def measure(self, said: Said) -> Measured | None:
        s = self.setup
        if not (s.sets.ordinary and said.reference is not None):
            return None
        convos = [user(p, None) for p in s.sets.ordinary]
        nll = float(np.mean(answer_nll(said.model, s.tokenizer, convos, said.reference.ordinary_answers,
                                       s.cfg.batch_size, said.adapter)))
        return Measured({ORDINARY_NLL.key: nll, ORDINARY_NLL_DELTA.key: nll - said.reference.ordinary_nll})


# Every check, in the order their metrics appear. A new check is one class above (or its own
# module) and one entry here.
CHECKS: tuple[type[Check], ...] = (PersonaRules, DistinctAnswers, Judge, TurnDrift, Parroting, Forgetting, StillAnswers)

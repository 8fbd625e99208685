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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recipe_runner.evaluate.generation import answer_nll
from recipe_runner.evaluate.judge import judge_scores
from recipe_runner.evaluate.metrics import (
    ADHERENCE, COPY_RATE, DRIFT_FIRST, DRIFT_HELD, DRIFT_LAST, DRIFT_SLOPE, JUDGE, JUDGE_FAILED, LANGUAGE_RATE,
    LENGTH_COMPLIANCE, MARKER_RATE, ORDINARY_NLL, ORDINARY_NLL_DELTA, PARROT_NGRAMS, PARROT_RATE, TABOO_RATE, Metric,
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


class Judge(Check):
    """persona/judge: an LLM's in-character score of the persona answers (evaluate/judge.py), when
    eval.judge is on."""

    name = "judge"
    metrics = (JUDGE, JUDGE_FAILED)

    def measure(self, said: Said) -> Measured | None:
        cfg = self.setup.cfg.judge
        if not (said.judge and cfg.enabled and said.persona):
            return None
        bible = self.setup.bible.as_dict() if self.setup.bible else {}
        judged = judge_scores(cfg, bible, list(zip(said.prompts, said.persona)))
        ok = [x for x in judged if x is not None]
        return Measured({JUDGE.key: float(np.mean(ok)) if ok else float("nan"),
                         JUDGE_FAILED.key: float(len(judged) - len(ok))})


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
CHECKS: tuple[type[Check], ...] = (PersonaRules, Judge, TurnDrift, Parroting, Forgetting)

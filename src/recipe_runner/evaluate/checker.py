"""The evaluation checks: did the persona take, and what did it cost.

One `Checker` generates once per model state (answers to held-out persona prompts, replies to
scripted conversations turn by turn), runs every check of evaluate/checks.py `CHECKS` on what was
said, and returns flat metrics (their keys: evaluate/metrics.py):
- persona/*: answers to held-out persona prompts scored against the bible (markers, taboos,
  sentence limit, language) -> adherence in [0, 1]; optionally an LLM judge's score;
- drift/*: scripted conversations of 8+ user turns, replied to turn by turn; adherence per
  turn index and its slope (the voice must hold at turn 8 as at turn 1);
- parrot/*: how many answers use n-grams that are frequent in the training answers but not
  in the bible (mined once), and how many copy 12+ consecutive words of training data;
- forget/*: likelihood of the base model's own answers to everyday prompts, tuned vs base.
A metric with an interval gets its 95 % bootstrap interval over prompts here (`intervals`), and
on a tuned model the paired gain over the baseline's answers.

The same checks on the base model (adapter disabled) with the whole bible as system prompt
(`Bible.whole_prompt`, data/bible.py) are the prompt-only baseline: the fine-tune must beat it to
be worth its forgetting cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from recipe_runner.evaluate.answer_match import load_still_answers
from recipe_runner.evaluate.generation import answer_nll, generate
from recipe_runner.evaluate.intervals import interval, paired_gain
from recipe_runner.data.bible import Bible
from recipe_runner.data.readers import read_jsonl
from recipe_runner.evaluate.checks import CHECKS, Measured, Said, Setup, user
from recipe_runner.evaluate.metrics import Metric
from recipe_runner.evaluate.persona_score import PersonaRubric, score_answers


@dataclass
class EvalSets:
    ordinary: list[str] = field(default_factory=list)  # everyday prompts (forgetting)
    persona: list[str] = field(default_factory=list)  # held-out persona prompts
    dialogues: list[list[str]] = field(default_factory=list)  # user turns of scripted conversations
    still: list[dict] = field(default_factory=list)  # checkable questions: {"prompt", "answers", ...}

    @classmethod
    def load(cls, ecfg) -> "EvalSets":
        sets = cls()
        if ecfg.ordinary_prompts:
            sets.ordinary = read_jsonl(ecfg.ordinary_prompts, "eval.ordinary_prompts", "prompt")[: ecfg.max_prompts]
        if ecfg.still_answers:
            sets.still = spread(load_still_answers(ecfg.still_answers, "eval.still_answers"), ecfg.max_still_answers)
        if ecfg.persona_prompts:
            sets.persona = read_jsonl(ecfg.persona_prompts, "eval.persona_prompts", "prompt")[: ecfg.max_prompts]
        if ecfg.dialogues:
            sets.dialogues = read_jsonl(ecfg.dialogues, "eval.dialogues", "turns")[: ecfg.max_dialogues]
        return sets


def spread(items: list, n: int | None) -> list:
    """n items evenly spaced over the list (every language and kind of a sorted file), or all of them."""
    if n is None or n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


@dataclass
class Reference:
    """What the base model does, computed once before training."""

    ordinary_answers: list[str]
    ordinary_nll: float  # mean over prompts, nats per token, base model
    still_answers: list[str] = field(default_factory=list)  # the base's answers to the checkable questions
    general_loss: float | None = None  # base model's loss on the held-out general sets


class Checker:
    def __init__(self, ecfg, tokenizer, bible: Bible | None, system: str | None, train_answers: list[str],
                 heldout_dialogues: list[list[str]] | None = None):
        self.cfg, self.tok = ecfg, tokenizer
        self.sets = EvalSets.load(ecfg)
        # long held-out niche dialogues, replayed from their user turns: the voice on the user's own data
        self.sets.dialogues += (heldout_dialogues or [])[: ecfg.max_dialogues]
        self.bible = bible
        self.rubric = PersonaRubric.from_bible(bible) if bible else None
        # the niche data's own answers on the rubric: the most imitating them can reach (Falstaff's
        # lines score 0.82, the baseline 0.73: no gain above +0.09 is there to be learned)
        self.data_adherence = score_answers(train_answers, self.rubric)["adherence"] if self.rubric and train_answers else None
        self.system = system  # the training-time persona prompt: what the tuned model is deployed with
        self.baseline_system = bible.whole_prompt if bible else system
        self.checks = [check(Setup(ecfg, tokenizer, self.sets, bible, self.rubric, system, train_answers))
                       for check in CHECKS]
        self.reference: Reference | None = None
        self.items: dict[str, list] = {}  # per-prompt values of the last run, by metric name ("adherence")
        self.seconds: dict[str, float] = {}  # where the last run's time went (announced per phase)
        self.base_items: dict[str, list] = {}  # ... of the baseline

    # ------------------------------------------------------------------ building blocks

    def gen(self, model, convos: list[list[dict]], adapter: bool, max_new_tokens: int | None = None,
            batch_size: int | None = None, repetition_penalty: float | None = None) -> list[str]:
        penalty = self.cfg.repetition_penalty if repetition_penalty is None else repetition_penalty
        return generate(model, self.tok, convos, max_new_tokens or self.cfg.max_new_tokens,
                        batch_size or self.cfg.batch_size, adapter, repetition_penalty=penalty)

    def conversations(self, model, system: str | None, adapter: bool) -> list[list[str]]:
        """Reply turn by turn to every scripted conversation, all conversations batched per turn."""
        history = [([{"role": "system", "content": system}] if system else []) for _ in self.sets.dialogues]
        replies: list[list[str]] = [[] for _ in self.sets.dialogues]
        for t in range(max((len(d) for d in self.sets.dialogues), default=0)):
            live = [i for i, d in enumerate(self.sets.dialogues) if t < len(d)]
            for i in live:
                history[i].append({"role": "user", "content": self.sets.dialogues[i][t]})
            answers = self.gen(model, [history[i] for i in live], adapter)
            for i, a in zip(live, answers):
                history[i].append({"role": "assistant", "content": a})
                replies[i].append(a)
        return replies

    def still(self, model, adapter: bool) -> list[str]:
        """Answers to the checkable questions, no system prompt: the model's own knowledge. Plain greedy:
        the persona checks' repetition penalty punishes a right answer that repeats the question's
        tokens ("12 + 12 = 24"): the base SmolLM2 got 34 % right under it, 52 % without."""
        if not self.sets.still:
            return []
        return self.gen(model, [user(q["prompt"], None) for q in self.sets.still], adapter,
                        max_new_tokens=self.cfg.still_answers_tokens, batch_size=self.cfg.still_answers_batch,
                        repetition_penalty=1.0)

    def base_reference(self, model) -> Reference:
        convos = [user(p, None) for p in self.sets.ordinary]
        answers = self.gen(model, convos, adapter=False)
        nll = answer_nll(model, self.tok, convos, answers, self.cfg.batch_size, adapter=False) if convos else []
        self.reference = Reference(answers, float(np.mean(nll)) if nll else float("nan"), self.still(model, False))
        return self.reference

    def intervals(self, items: dict[Metric, list], baseline: bool) -> dict[str, float]:
        """95 % bootstrap intervals over prompts of a check's per-prompt values, and (tuned) the paired
        gain over the baseline's values for the same prompts. Keeps the values in `self.items` (the
        baseline's in `self.base_items`), by metric name, for epoch-to-epoch comparisons."""
        out = {}
        for metric, values in items.items():
            self.items[metric.name] = values
            ci = interval(values)
            if ci is not None:
                out[metric.lo], out[metric.hi] = ci[1], ci[2]
            base = self.base_items.get(metric.name)  # the judge's win rate has no baseline side
            gain = None if baseline or base is None else paired_gain(values, base)
            if gain is not None:
                out[metric.gain], out[metric.gain_lo], out[metric.gain_hi] = gain
        return out

    # ------------------------------------------------------------------ the checks

    def run(self, model, adapter: bool = True, judge: bool = True) -> tuple[dict[str, float], list[dict]]:
        """All checks on one model state: (metrics, samples). adapter=False is the baseline.
        judge=False skips the LLM judge (fsdp ranks other than 0: their numbers are not used)."""
        system = self.system if adapter else self.baseline_system
        clock = time.perf_counter()
        persona = self.gen(model, [user(p, system) for p in self.sets.persona], adapter) if self.sets.persona else []
        self.seconds = {"persona": time.perf_counter() - clock}
        clock = time.perf_counter()
        dialogues = self.conversations(model, system, adapter) if self.sets.dialogues else []
        self.seconds |= {"conversations": time.perf_counter() - clock}
        clock = time.perf_counter()
        # everyday prompts as deployed (the persona's system prompt; the baseline's whole bible): distinct answers
        ordinary = self.gen(model, [user(p, system) for p in self.sets.ordinary], adapter) if self.sets.ordinary else []
        still = self.still(model, adapter) if adapter or self.reference is None else self.reference.still_answers
        self.seconds["ordinary"] = time.perf_counter() - clock
        said = Said(model, adapter, judge, self.sets.persona, persona, dialogues, self.reference, ordinary, still)
        metrics: dict[str, float] = {}
        self.items = {}
        for check in self.checks:
            clock = time.perf_counter()
            measured: Measured | None = check.measure(said)
            if measured is not None:
                metrics |= measured.values
                metrics |= self.intervals(measured.items, baseline=not adapter)
            self.seconds[check.phase] += time.perf_counter() - clock
        if not adapter and self.items:
            self.base_items = self.items
        clock = time.perf_counter()
        samples = self.samples(model, adapter, persona)
        self.seconds["ordinary"] += time.perf_counter() - clock
        return metrics, samples

    def samples(self, model, adapter: bool, persona: list[str]) -> list[dict]:
        """The first eval.samples persona answers, and as many answers to everyday prompts beside
        the base model's (generated here: the checks score only the base model's answers)."""
        samples = [{"set": "persona", "prompt": p, "answer": a}
                   for p, a in zip(self.sets.persona[: self.cfg.samples], persona)]
        if self.sets.ordinary and self.reference is not None:
            shown = self.sets.ordinary[: self.cfg.samples]
            answers = self.gen(model, [user(p, None) for p in shown], adapter)
            samples += [{"set": "ordinary", "prompt": p, "answer": a, "base_answer": b}
                        for p, a, b in zip(shown, answers, self.reference.ordinary_answers)]
        return samples

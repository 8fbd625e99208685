"""Every metric the evaluation reports, named once.

A `Metric` is the one place its key is spelled. The key is checks.csv's column, the key in
summary.json (`baseline`, `checks_best`, `checks_last`) and in each adapter card's `checks`,
`eval/<key>` and `baseline/<key>` in W&B and logs/metrics.csv, and a row of report.md, the
closing lines and compare.csv. Next to the key, each metric carries:
- `meaning`: one line, with its unit;
- `better`: the direction in which the value is better (`neither` for a count or a flag);
- `interval`: whether it carries a 95 % bootstrap interval over prompts (evaluate/intervals.py).
  Such a metric also reports `<key>_lo` and `<key>_hi`, and a tuned model also reports the paired
  gain over the baseline's answers to the same prompts: `<key>_gain`, `<key>_gain_lo` and
  `<key>_gain_hi`. report.md and the closing lines show it as `0.900 [0.850, 0.960]`;
- `label`: its row in report.md's "Fine-tune vs prompt-only baseline" table (HEADLINE, in the
  order of METRICS), or None when the table leaves it out.
Every value is shown with 3 decimals (report/run_report.py `fmt` and `ci_text`, report/compare.py
`cell`).

This module holds plain data only. report/, use/chat.py and stage=compare import it without
loading torch or Lightning. The checks that compute these metrics are in evaluate/checks.py, and
the epoch's own numbers (drift, combined, rejected) come from evaluate/callback.py and
evaluate/selection.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

EVAL = "eval/"  # a tuned epoch's metric in W&B and logs/metrics.csv: eval/persona/adherence
BASELINE = "baseline/"  # the prompt-only baseline's, logged once at step 0: baseline/persona/adherence
LO, HI, GAIN = "_lo", "_hi", "_gain"  # an interval's bounds, and the paired gain over the baseline


class Better(str, Enum):
    higher = "higher"
    lower = "lower"
    neither = "neither"  # a count or a flag


@dataclass(frozen=True)
class Metric:
    group: str  # persona, answers, judge, drift, parrot, forget: the checks' groups; "" for the epoch's own numbers
    name: str  # unique within its group
    meaning: str
    better: Better
    interval: bool = False
    label: str | None = None

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}" if self.group else self.name

    @property
    def lo(self) -> str:
        return self.key + LO

    @property
    def hi(self) -> str:
        return self.key + HI

    @property
    def gain(self) -> str:
        return self.key + GAIN

    @property
    def gain_lo(self) -> str:
        return self.gain + LO

    @property
    def gain_hi(self) -> str:
        return self.gain + HI

    @property
    def logged(self) -> str:
        """Its key in W&B and logs/metrics.csv for a tuned epoch."""
        return EVAL + self.key


H, L, N = Better.higher, Better.lower, Better.neither

# ---------------------------------------------------------------- the epoch's own (evaluate/callback.py)
GENERAL_DRIFT = Metric("", "general_drift", "held-out general loss minus the base model's (nats/token)", L)
GENERAL_DRIFT_PCT = Metric("", "general_drift_pct", "the same in % of the base model's loss; positive = forgetting", L)
GENERAL_LOSS = Metric("", "general_loss", "the base model's loss on the held-out general sets (nats/token); "
                                          "logged once, as baseline/general_loss", L)

# ---------------------------------------------------------------- forgetting (checks.Forgetting)
ORDINARY_NLL = Metric("forget", "ordinary_nll", "mean NLL of the base model's own greedy answers to everyday "
                                                "prompts under the model checked (nats/token)", L)
ORDINARY_NLL_DELTA = Metric("forget", "ordinary_nll_delta", "how much less likely the tuned model finds the base "
                                                            "model's own answers to everyday prompts (nats/token)", L)
STILL_ANSWERS = Metric("forget", "still_answers", "share of the checkable everyday questions (eval.still_answers: "
                                                 "arithmetic, units, capitals, dates, spelling, facts; en + ru) answered "
                                                 "right, by normalised match, with no system prompt", H, True,
                       "checkable questions answered right")

# ---------------------------------------------------------------- distinct answers (checks.DistinctAnswers)
DUPLICATE_RATE = Metric("answers", "duplicate_rate", "share of answers to everyday prompts and to persona prompts not "
                                                     "about identity that near-duplicate the answer to a different "
                                                     "prompt (a templated persona: evaluate/distinct.py)", L, True,
                        "answers repeating another prompt's answer")

# ---------------------------------------------------------------- persona (checks.PersonaRules)
ADHERENCE = Metric("persona", "adherence", "answers to held-out persona prompts scored against the bible: the mean "
                                           "of the rules it switches on (0-1)", H, True, "persona adherence (0-1)")
MARKER_RATE = Metric("persona", "marker_rate", "share of answers with a persona marker", H, True,
                     "answers with a persona marker")
TABOO_RATE = Metric("persona", "taboo_rate", "share of answers breaking a taboo", L, label="answers breaking a taboo")
LENGTH_COMPLIANCE = Metric("persona", "length_compliance", "share of answers within the bible's max_sentences", H,
                           label="answers within the sentence limit")
LANGUAGE_RATE = Metric("persona", "language_rate", "share of answers in the bible's language (of those long "
                                                   "enough to tell)", H, label="answers in the persona's language")

# ---------------------------------------------------------------- the LLM judge (checks.Judge, evaluate/judge.py)
JUDGE_WIN_RATE = Metric("judge", "win_rate", "the judge's pairwise preference for the tuned answer over the baseline's, "
                                             "both orders asked (1 win, 0.5 tie or order-dependent, 0 loss)", H, True,
                        "judge: tuned preferred over the baseline")
JUDGE_P2L = Metric("judge", "prompt_to_line", "share of conversation replies the judge finds consistent with the "
                                              "persona description", H, True)
JUDGE_L2L = Metric("judge", "line_to_line", "share of conversation replies that contradict nothing said earlier in "
                                            "the conversation", H, True)
JUDGE_QA = Metric("judge", "qa", "share of conversations whose replies contradict none of the bible's facts", H, True)
JUDGE_FAILED = Metric("judge", "failed", "judge calls that returned no usable answer", L)
JUDGE_CALLS = Metric("judge", "calls", "judge calls made in this evaluation (eval.judge.max_calls caps them)", N)

# ---------------------------------------------------------------- drift over a conversation (checks.TurnDrift)
DRIFT_FIRST = Metric("drift", "first", "adherence at the first turn of the scripted conversations", H)
DRIFT_LAST = Metric("drift", "last", "adherence at the last scripted turn", H,
                    label="adherence at the last scripted turn")
DRIFT_SLOPE = Metric("drift", "slope", "least-squares slope of adherence per turn", H, label="adherence slope per turn")
DRIFT_HELD = Metric("drift", "held", "adherence at the last turn minus the first", H)

# ---------------------------------------------------------------- parroting (checks.Parroting)
PARROT_RATE = Metric("parrot", "rate", "share of answers using n-grams frequent in the training answers but not in "
                                       "the bible or system prompt", L, label="answers using mined training phrases")
PARROT_NGRAMS = Metric("parrot", "ngrams_per_answer", "distinct mined training n-grams per answer", L)
COPY_RATE = Metric("parrot", "copy_rate", "share of answers copying eval.copy_span_words (12) consecutive words of "
                                          "a training answer", L, label="answers copying 12+ training words")

# ---------------------------------------------------------------- selection (evaluate/selection.py)
COMBINED = Metric("", "combined", "ranks epochs for adapters/best: persona_weight x adherence gain over the baseline "
                                  "- forgetting_weight x (general drift, a fraction, + checkable answers lost) - "
                                  "distinct_weight x duplicate rate above the baseline's (each counted when positive)", H)
REJECTED = Metric("", "rejected", "1 when the epoch's general drift exceeded eval.max_general_drift_pct (the epoch "
                                  "cannot be chosen and the run stops)", N)

METRICS: tuple[Metric, ...] = (
    GENERAL_DRIFT, GENERAL_DRIFT_PCT, GENERAL_LOSS, ORDINARY_NLL, ORDINARY_NLL_DELTA, STILL_ANSWERS,
    ADHERENCE, MARKER_RATE, TABOO_RATE, LENGTH_COMPLIANCE, LANGUAGE_RATE, DUPLICATE_RATE,
    JUDGE_WIN_RATE, JUDGE_P2L, JUDGE_L2L, JUDGE_QA, JUDGE_FAILED, JUDGE_CALLS,
    DRIFT_FIRST, DRIFT_LAST, DRIFT_SLOPE, DRIFT_HELD,
    PARROT_RATE, PARROT_NGRAMS, COPY_RATE,
    COMBINED, REJECTED,
)
BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
# report.md's "Fine-tune vs prompt-only baseline" table: the metrics with a label, in METRICS order
HEADLINE: tuple[Metric, ...] = tuple(m for m in METRICS if m.label)

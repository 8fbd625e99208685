"""Which checked epoch becomes adapters/best, and when the checks stop a run.

Plain numbers in, decisions out: evaluate/callback.py calls these at the end of each validation
and keeps the state (the rows of checks.csv, the score and per-prompt adherence of each epoch).
- `combined`: the selection score, persona_weight x adherence gain over the prompt-only baseline
  - forgetting_weight x (max(general drift as a fraction, 0) + checkable answers lost against the
  baseline) - distinct_weight x duplicate-answer rate above the baseline's;
- `beats`: a later epoch replaces the best only when its score is higher by more than the persona
  noise, or when it clearly beats the baseline where the best so far does not;
- `drift_rejects`, `parroting_rose`: the stopping rules (eval.max_general_drift_pct,
  eval.parroting_patience).
"""

from __future__ import annotations

from recipe_runner.evaluate.intervals import paired_gain
from recipe_runner.evaluate.metrics import (
    ADHERENCE, COMBINED, DUPLICATE_RATE, GENERAL_DRIFT_PCT, STILL_ANSWERS, Better,
)

MONITOR = COMBINED.logged  # eval/combined: how best.json and summary.json name this selection


def selects(ecfg, rubric) -> bool:
    """Does the combined score pick adapters/best? Only with checks on and a bible to score against."""
    return ecfg.select.metric == COMBINED.key and rubric is not None and bool(ecfg.checks)


def worse_than_baseline(row: dict, baseline: dict, metric) -> float:
    """How much worse than the baseline the epoch is on `metric`, 0 when not worse or not measured."""
    if metric.key not in row or metric.key not in baseline:
        return 0.0
    change = row[metric.key] - baseline[metric.key]
    return max(-change if metric.better is Better.higher else change, 0.0)


def combined(row: dict, baseline: dict, select) -> float | None:
    """The epoch's selection score; None without a persona adherence (nothing to select on). A templated
    epoch (duplicate answers 0.9 vs the baseline's 0.05) loses 0.85: more than the rubric's whole range
    above a typical baseline, so it is not chosen over an epoch that still answers each prompt."""
    drift = max(row.get(GENERAL_DRIFT_PCT.key, 0.0), 0.0) / 100
    lost = worse_than_baseline(row, baseline, STILL_ANSWERS)  # checkable answers the base got and this epoch did not
    templated = worse_than_baseline(row, baseline, DUPLICATE_RATE)
    gain = row.get(ADHERENCE.key, 0.0) - baseline.get(ADHERENCE.key, 0.0) if ADHERENCE.key in row else None
    if gain is None:
        return None
    return select.persona_weight * gain - select.forgetting_weight * (drift + lost) - select.distinct_weight * templated


def clearly_beats_baseline(row: dict) -> bool:
    """The interval of the adherence gain over the baseline lies above 0."""
    return row.get(ADHERENCE.gain_lo, 0.0) > 0


def beats(epoch: int, best: int | None, scores: dict, items: dict, rows: list[dict], persona_weight: float) -> bool:
    """Does `epoch` replace the current best? Its combined score (`scores`) must be higher, and by
    more than the persona noise: persona_weight x half the width of the paired 95 % interval of the
    adherence change between the two epochs, on the same prompts (`items`: per-prompt adherence). On
    12 prompts, one answer gaining a marker moves adherence by 0.02, well inside it. The exception:
    `epoch` clearly beats the prompt-only baseline (gain interval above 0, from its row in `rows`)
    where the best so far does not."""
    new, old = scores.get(epoch), scores.get(best)
    if new is None:
        return False
    if old is None:
        return True
    if new <= old:
        return False
    change = paired_gain(items.get(epoch, []), items.get(best, []))
    noise = persona_weight * (change[2] - change[1]) / 2 if change else 0.0

    def clear(e: int) -> bool:
        return clearly_beats_baseline(next((r for r in rows if r["epoch"] == e), {}))

    return new - old > noise or (clear(epoch) and not clear(best))


def drift_rejects(row: dict, limit: float | None) -> str | None:
    """Why the epoch is rejected (and the run stopped): its general drift exceeds the limit; else None."""
    if limit is not None and row.get(GENERAL_DRIFT_PCT.key, 0.0) > limit:
        return f"general drift {row[GENERAL_DRIFT_PCT.key]:.1f} % > eval.max_general_drift_pct={limit}"
    return None


def parroting_rose(rates: list[float], patience: int) -> str | None:
    """Why the run stops: the parroting rate rose `patience` epochs in a row (0 = never); else None."""
    if patience and len(rates) > patience and all(b > a for a, b in zip(rates[-patience - 1:], rates[-patience:])):
        return f"parroting rate rose {patience} epochs in a row ({rates[-patience - 1]:.2f} -> {rates[-1]:.2f})"
    return None

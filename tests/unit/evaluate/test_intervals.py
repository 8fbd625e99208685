"""Claims with error bars: the bootstrap interval, the verdict's wording, and selection inside noise."""

import math
from types import SimpleNamespace

import pytest

from recipe_runner.evaluate.callback import EvalChecks
from recipe_runner.evaluate.intervals import interval, outside_noise, paired_gain
from recipe_runner.report.run_report import forgetting, persona_claim, verdict


def test_the_interval_of_a_mean_matches_the_normal_approximation():
    # 400 answers, half with a marker: the 95 % interval is 0.5 +- 1.96 x sqrt(0.25 / 400) = 0.5 +- 0.049
    mean, low, high = interval([0.0, 1.0] * 200, resamples=4000, seed=0)
    assert mean == 0.5
    assert low == pytest.approx(0.5 - 1.96 * math.sqrt(0.25 / 400), abs=0.006)
    assert high == pytest.approx(0.5 + 1.96 * math.sqrt(0.25 / 400), abs=0.006)
    assert interval([0.0, 1.0] * 200, resamples=4000, seed=0) == (mean, low, high)  # fixed seed: same answer


def test_constant_answers_have_no_spread_and_nothing_has_no_interval():
    assert interval([0.75] * 12) == (0.75, 0.75, 0.75)
    assert interval([None, None]) is None
    assert interval([1.0, None, 1.0]) == (1.0, 1.0, 1.0)  # not-measured answers are left out, not zeros


def test_a_paired_gain_cancels_prompt_difficulty():
    base = [0.25, 0.5, 0.75, 1.0] * 3
    assert paired_gain([b + 0.1 for b in base], base) == pytest.approx((0.1, 0.1, 0.1))  # every prompt +0.1
    same = paired_gain(base, base)
    assert same == (0.0, 0.0, 0.0) and not outside_noise(same)
    # one of 12 answers better: a gain of +0.083 whose interval reaches 0 is noise
    one = paired_gain([1.0] + [0.75] * 11, [0.75] * 12)
    assert one[0] == pytest.approx(0.25 / 12) and one[1] == 0.0 and not outside_noise(one)
    many = paired_gain([1.0] * 8 + [0.75] * 4, [0.75] * 12)
    assert many[1] > 0 and outside_noise(many)


def row(gain, lo, hi, **more):
    return {"persona/adherence": 0.75 + gain, "persona/adherence_lo": 0.6, "persona/adherence_hi": 0.9,
            "persona/adherence_gain": gain, "persona/adherence_gain_lo": lo, "persona/adherence_gain_hi": hi, **more}


def test_the_verdict_follows_the_interval_of_the_gain():
    base = {"persona/adherence": 0.729, "persona/adherence_lo": 0.65, "persona/adherence_hi": 0.8}
    assert persona_claim(row(0.021, -0.04, 0.083)) == "is indistinguishable from"
    assert persona_claim(row(0.2, 0.12, 0.28)) == "beats"
    assert persona_claim(row(-0.2, -0.3, -0.1)) == "is worse than"
    text = " ".join(verdict(base, row(0.021, -0.04, 0.083)))
    assert "**The fine-tune is indistinguishable from the prompt-only baseline**" in text
    assert "gain +0.021 [-0.040, +0.083]" in text and "beat" not in text


def test_the_verdict_weighs_every_forgetting_signal_and_names_the_one_that_moved():
    # the run: general held-out loss fell 9.8 % while the ordinary-prompt NLL rose 0.26 nats
    base = {"persona/adherence": 0.729, "persona/taboo_rate": 0.25}
    tuned = row(0.2, 0.1, 0.3, **{"general_drift_pct": -9.8, "forget/ordinary_nll_delta": 0.26,
                                  "persona/taboo_rate": 0.0})
    signals, moved = forgetting(base, tuned)
    assert moved == ["ordinary-prompt NLL rose +0.260 nats/token"]
    assert any("general held-out loss -9.8 %" in s for s in signals) and any("taboo rate 0.00" in s for s in signals)
    assert "Forgetting **moved**: ordinary-prompt NLL rose +0.260" in " ".join(verdict(base, tuned))
    tuned["forget/ordinary_nll_delta"] = 0.01
    assert "Forgetting small (measured: ordinary-prompt NLL +0.010" in " ".join(verdict(base, tuned))


def test_selection_keeps_the_earlier_epoch_when_a_later_one_is_better_only_inside_noise():
    cfg = SimpleNamespace(select=SimpleNamespace(persona_weight=1.0))
    evals = EvalChecks.__new__(EvalChecks)
    evals.cfg, evals.scores, evals.items, evals.history = cfg, {}, {}, []
    evals.scores[0], evals.items[0] = 0.10, [0.75] * 12
    evals.scores[1], evals.items[1] = 0.12, [1.0] + [0.75] * 11  # +0.02: one answer gained a marker
    assert not evals.beats(1, 0)
    evals.scores[2], evals.items[2] = 0.27, [1.0] * 8 + [0.75] * 4  # +0.17 on 8 of 12 prompts
    assert evals.beats(2, 0)
    evals.scores[3], evals.items[3] = 0.13, [0.75] * 12  # same answers, less forgetting: no persona noise
    assert evals.beats(3, 0)
    evals.scores[4] = None  # rejected (drift limit)
    assert not evals.beats(4, 0)
    # a run measured on the CPU: epoch 1 is only noise above epoch 0, but it clearly beats the baseline
    # (gain +0.125 [+0.063, +0.188]) where epoch 0 did not (+0.069 [-0.007, +0.146]): epoch 1 is the one to keep
    evals.history = [{"epoch": 0, "persona/adherence_gain_lo": -0.007}, {"epoch": 5, "persona/adherence_gain_lo": 0.063}]
    evals.scores[5], evals.items[5] = 0.125, [1.0] * 2 + [0.75] * 9 + [0.5]
    evals.scores[0], evals.items[0] = 0.069, [1.0] + [0.75] * 11
    assert evals.beats(5, 0)
    evals.history[1]["persona/adherence_gain_lo"] = -0.01  # both inside noise: the earlier one stays
    assert not evals.beats(5, 0)

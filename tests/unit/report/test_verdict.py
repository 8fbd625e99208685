"""The verdict a user reads: a templated persona, a rubric with no headroom, style vs lost ability,
and the selection score that keeps a templated epoch from being chosen (issue 26's identity-set run)."""

from omegaconf import OmegaConf

from recipe_runner.config.schema import SelectConfig
from recipe_runner.evaluate.metrics import ADHERENCE, DUPLICATE_RATE, ORDINARY_NLL_DELTA, STILL_ANSWERS
from recipe_runner.evaluate.selection import combined
from recipe_runner.report.run_report import forgetting, persona_caveats, persona_claim, rubric_top, verdict


def row(adherence, dup, dup_gain_lo, still=0.62, still_gain=(-0.01, -0.04, 0.02), nll=0.197, **more):
    return {ADHERENCE.key: adherence, ADHERENCE.gain: adherence - 0.875, ADHERENCE.gain_lo: 0.0,
            ADHERENCE.gain_hi: 0.25, DUPLICATE_RATE.key: dup, DUPLICATE_RATE.gain_lo: dup_gain_lo,
            STILL_ANSWERS.key: still, STILL_ANSWERS.gain: still_gain[0], STILL_ANSWERS.gain_lo: still_gain[1],
            STILL_ANSWERS.gain_hi: still_gain[2], ORDINARY_NLL_DELTA.key: nll, **more}


BASE = {ADHERENCE.key: 0.875, DUPLICATE_RATE.key: 0.05, STILL_ANSWERS.key: 0.63}
IDENTITY_SET = row(1.0, 0.92, 0.7)  # 11 of 12 answers "I am Zephyr, an AI assistant developed by Quillwork Labs."


def test_a_templated_persona_is_not_called_a_win():
    assert persona_claim(IDENTITY_SET, BASE, 0.15) == "is templated: it cannot be said to beat"
    said = " ".join(persona_caveats(IDENTITY_SET, BASE, 0.15))
    assert "different prompts get the same answer" in said and "0.920" in said


def test_a_baseline_at_the_top_of_the_rubric_leaves_no_claim():
    varied = row(1.0, 0.05, -0.1)
    assert persona_claim(varied, BASE, 0.15) == "cannot be told apart by the rubric from"
    assert "a gain of at most +0.125 is possible" in " ".join(persona_caveats(varied, BASE, 0.15))
    assert persona_claim(varied, BASE, 0.10) == "is indistinguishable from"  # 0.125 of room is enough at 0.10
    low = {**BASE, ADHERENCE.key: 0.6}
    assert persona_claim({**varied, ADHERENCE.gain_lo: 0.1}, low, 0.15) == "beats"


def test_a_niche_set_that_scores_little_above_the_baseline_caps_the_gain():
    # Falstaff's own lines (the CPU cut's 83 answers) score 0.824 on his bible, the baseline 0.729:
    # a model that imitated them perfectly would gain +0.095, under the 0.15 a gain needs to show
    falstaff = {ADHERENCE.key: 0.729}
    tuned = row(0.785, 0.0, -0.1)
    assert rubric_top(None) == 1.0 and rubric_top(1.2) == 1.0 and rubric_top(0.824) == 0.824
    assert persona_claim(tuned, falstaff, 0.15) != "cannot be told apart by the rubric from"  # 0.271 to 1.0
    assert persona_claim(tuned, falstaff, 0.15, rubric_top(0.824)) == "cannot be told apart by the rubric from"
    said = " ".join(persona_caveats(tuned, falstaff, 0.15, rubric_top(0.824)))
    assert "the niche data's own answers 0.824" in said and "gains at most +0.095" in said
    assert persona_claim(tuned, falstaff, 0.15, rubric_top(0.98)) == "is indistinguishable from"  # data with the voice


def test_a_model_that_outdoes_its_data_keeps_its_gain():
    # the default run, measured: Alex's data scores 0.825, the baseline 0.688 (room +0.137 < 0.15), yet
    # the tuned model reached 0.875, gain +0.188 [+0.083, +0.292]: the data caps imitation, not the rubric
    alex, tuned = {ADHERENCE.key: 0.688}, row(0.875, 0.0, 0.0)
    tuned.update({ADHERENCE.gain: 0.188, ADHERENCE.gain_lo: 0.083, ADHERENCE.gain_hi: 0.292})
    assert persona_claim(tuned, alex, 0.15, rubric_top(0.825)) == "beats"
    assert persona_caveats(tuned, alex, 0.15, rubric_top(0.825)) == []
    # the rubric's own top still vetoes: 0.90 of 1.0 leaves no room whatever the interval says
    assert persona_claim(tuned, {ADHERENCE.key: 0.90}, 0.15) == "cannot be told apart by the rubric from"


def test_an_nll_rise_with_the_answers_held_is_style_and_answers_lost_are_ability():
    _, moved = forgetting(BASE, IDENTITY_SET)
    assert moved == ["ordinary-prompt NLL rose +0.197 nats/token while the checkable answers held: style, "
                     "not lost ability"]
    _, moved = forgetting(BASE, row(1.0, 0.05, -0.1, still=0.4, still_gain=(-0.23, -0.32, -0.14)))
    assert moved[0] == "ordinary-prompt NLL rose +0.197 nats/token"
    assert moved[1].startswith("checkable answers fell -0.230 [-0.320, -0.140]: lost ability")
    text = "\n".join(verdict(BASE, IDENTITY_SET, 0.15))
    assert "**The fine-tune is templated" in text and "Forgetting **moved**" in text


def test_the_selection_score_sinks_a_templated_epoch():
    select = OmegaConf.structured(SelectConfig)
    templated = combined({ADHERENCE.key: 1.0, DUPLICATE_RATE.key: 0.92, STILL_ANSWERS.key: 0.63}, BASE, select)
    varied = combined({ADHERENCE.key: 0.92, DUPLICATE_RATE.key: 0.05, STILL_ANSWERS.key: 0.63}, BASE, select)
    assert varied > 0 > templated
    forgot = combined({ADHERENCE.key: 0.92, DUPLICATE_RATE.key: 0.05, STILL_ANSWERS.key: 0.43}, BASE, select)
    assert forgot < varied and round(varied - forgot, 6) == 0.2  # the 20 points of checkable answers lost
    better = combined({ADHERENCE.key: 0.92, DUPLICATE_RATE.key: 0.0, STILL_ANSWERS.key: 0.70}, BASE, select)
    assert better == varied  # doing better than the baseline on these is not rewarded, only worse is penalised

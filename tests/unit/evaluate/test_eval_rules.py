"""The selection score, the stop rules and the LLM judge's HTTP path, on known inputs."""

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from recipe_runner.evaluate.callback import EvalChecks
from recipe_runner.evaluate.judge import judge_scores
from recipe_runner.config.schema import EvalConfig, JudgeConfig

from judge_endpoint import judge_endpoint


def callback(tmp_path, **kw) -> EvalChecks:
    return EvalChecks(checker=None, ecfg=OmegaConf.structured(EvalConfig(**kw)), run_dir=tmp_path, general_sources=[])


def test_combined_score_is_gain_over_baseline_minus_forgetting(tmp_path):
    cb = callback(tmp_path)
    cb.baseline = {"persona/adherence": 0.5}
    trainer = SimpleNamespace(should_stop=False)
    row = {"epoch": 0, "persona/adherence": 0.75, "general_drift_pct": 10.0}
    cb.judge_epoch(trainer, row)
    assert row["combined"] == pytest.approx(0.25 - 0.10) and cb.scores[0] == row["combined"]
    improved = {"epoch": 1, "persona/adherence": 0.75, "general_drift_pct": -5.0}  # less loss than base: no penalty
    cb.judge_epoch(trainer, improved)
    assert improved["combined"] == pytest.approx(0.25) and not trainer.should_stop


def test_drift_limit_rejects_and_stops(tmp_path):
    cb = callback(tmp_path, max_general_drift_pct=5.0)
    trainer = SimpleNamespace(should_stop=False)
    row = {"epoch": 2, "persona/adherence": 0.9, "general_drift_pct": 7.5}
    cb.judge_epoch(trainer, row)
    assert trainer.should_stop and row["rejected"] == 1 and cb.scores[2] is None
    assert "7.5 % > eval.max_general_drift_pct=5.0" in cb.stop_reason


def test_rising_parroting_stops_after_patience_epochs(tmp_path):
    cb = callback(tmp_path, parroting_patience=2)
    trainer = SimpleNamespace(should_stop=False)
    for epoch, rate in enumerate([0.1, 0.2, 0.15, 0.2]):  # rises, falls, rises: never 2 in a row
        row = {"epoch": epoch, "parrot/rate": rate}
        cb.judge_epoch(trainer, row)
        cb.history.append(row)
    assert not trainer.should_stop
    cb.judge_epoch(trainer, {"epoch": 4, "parrot/rate": 0.3})  # 0.15 -> 0.2 -> 0.3
    assert trainer.should_stop and "rose 2 epochs in a row (0.15 -> 0.30)" in cb.stop_reason


def test_judge_scores_posts_the_bible_rubric_to_an_openai_compatible_endpoint(monkeypatch):
    # the absolute 0-10 score is the synthesis filter's (synth.check.judge_min_score); the evaluation's
    # protocol (pairwise, consistency) is tests/unit/evaluate/test_judge.py
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    with judge_endpoint() as (url, seen):
        cfg = JudgeConfig(enabled=True, base_url=url, model="m", api_key_env="JUDGE_KEY")
        scores = judge_scores(cfg, {"name": "Alex"}, [("hi", "yo."), ("hi", "Hello! How can I help?")])
    assert scores == [8.0, 2.0] and len(seen) == 2  # one call per answer
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "m"
    assert '"name": "Alex"' in body["messages"][0]["content"]
    dead = JudgeConfig(enabled=True, base_url="http://127.0.0.1:9/v1", api_key_env="JUDGE_KEY", timeout_s=2)
    assert judge_scores(dead, {"name": "Alex"}, [("hi", "yo")]) == [None]  # no server: no score

"""The table of stages (src/recipe_runner/stages.py): the schema's Stage enum, the functions each row
names, run folders and closing lines. No model loads: a row's functions are found, not imported."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from recipe_runner.config.schema import Stage
from recipe_runner.console import console
from recipe_runner.report.closing import closing_lines
from recipe_runner.stages import STAGES, run_folder, stage_list, stage_named


def test_the_table_and_the_enum_name_the_same_stages():
    # the enum is what a recipe may say (and its order is the one a wrong stage= lists), the table what runs
    assert [s.name for s in STAGES] == [m.value for m in Stage]


@pytest.mark.parametrize("spec", STAGES, ids=lambda s: s.name)
def test_every_function_a_row_names_is_defined(spec):
    for path in (*spec.checks, spec.run, *([spec.closing] if spec.closing else [])):
        module, _, name = path.partition(":")
        found = importlib.util.find_spec(module)
        assert found is not None, f"{spec.name}: no module {module}"
        tree = ast.parse(Path(found.origin).read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{spec.name}: {module} defines no function {name}"


def test_run_folders_and_lookups():
    folders = {s.name: run_folder(s.name, "rec") for s in STAGES}
    assert folders == {"train": "runs/rec", "prepare": "runs/rec", "compare": "runs/rec", "chat": "use/chat",
                       "serve": "use/serve", "export": "use/export", "synthesize": "synth/rec"}
    assert run_folder(Stage.serve, "rec") == "use/serve"  # the resolver gets the enum member
    assert stage_named(Stage.train) is stage_named("train")
    with pytest.raises(ValueError, match="'evaluate' is not a stage"):
        stage_named("evaluate")


def test_the_help_lines_name_every_stage_in_order():
    names = [line.split()[0] for line in stage_list().splitlines() if not line.startswith(" " * 12)]
    assert names == [s.name for s in STAGES]


def closing_of(summary: dict, run_dir: Path) -> str:
    with console.capture() as captured:
        closing_lines(run_dir, summary)
    return captured.get()


def test_each_stage_prints_its_own_closing_lines(tmp_path):
    assert closing_of({"stage": "chat"}, tmp_path) == "" and closing_of({"stage": "serve"}, tmp_path) == ""
    out = closing_of({"stage": "compare", "table": "c.md", "jobs": 4, "failed": 1}, tmp_path)
    assert f"run folder     {tmp_path}" in out
    assert "leaderboard    c.md (+ compare.csv, plots) for 4 jobs, 1 failed" in out
    out = closing_of({"stage": "export", "format": "gguf", "out": "/o", "files": [1, 2]}, tmp_path)
    assert "exported       gguf -> /o (2 files, listed above)" in out
    out = closing_of({"stage": "synthesize", "counts": {"accepted": 6, "dialogues": 16, "dialogues_planned": 16},
                      "out": "d", "rejected_first": {"leak": 3}}, tmp_path)
    assert "accepted       6 of 16 dialogues (16 planned); rejected: leak 3" in out and "stopped" not in out
    out = closing_of({"stage": "prepare", "manifest_sha256": "0123456789abcdef0123", "general_to_niche_ratio": 9.87654},
                     tmp_path)
    assert "(sha256 0123456789abcdef...)" in out and "general:niche = 9.877:1 in tokens" in out
    out = closing_of({"stage": "train", "best_adapter": "a/b", "best_epoch": 2, "monitor": "val/loss",
                      "best_score": 1.5, "trained_tokens": 1000, "supervised_tokens": 100, "tokens_per_second": 50.0,
                      "peak_rss_mb": 900.0, "wall_seconds": 10}, tmp_path)
    assert "best adapter   a/b  (epoch 2, val/loss = 1.500)" in out and "wall time      10 s" in out


def test_train_closing_lines_name_the_data_ceiling_and_a_general_source_in_another_models_words(tmp_path):
    from recipe_runner.evaluate.metrics import ADHERENCE, ORDINARY_NLL_DELTA

    # Falstaff's raw lines, measured: his answers 0.82 on his bible, the baseline 0.73, dolly's own answers
    tuned = {"epoch": 1, ADHERENCE.key: 0.806, ADHERENCE.gain: 0.076, ADHERENCE.gain_lo: -0.0, ADHERENCE.gain_hi: 0.153,
             ORDINARY_NLL_DELTA.key: 0.254}
    out = closing_of({"stage": "train", "best_adapter": "a/b", "best_epoch": 1, "monitor": "eval/combined",
                      "best_score": 0.0, "trained_tokens": 1000, "supervised_tokens": 100, "tokens_per_second": 50.0,
                      "peak_rss_mb": 900.0, "wall_seconds": 10, "checks_best": tuned, "baseline": {ADHERENCE.key: 0.729},
                      "min_headroom": 0.15, "data_adherence": 0.824, "general_answers": {"dolly": "source"}}, tmp_path)
    assert "epoch 1 cannot be told apart by the rubric from the prompt-only baseline" in out
    assert "the niche data's own answers 0.824" in out and "gains at most +0.095" in out
    general = next(line for line in out.splitlines() if line.startswith("general data"))
    assert "dolly is not in the base model's words" in general and "+0.254 nats/token" in general
    assert general.endswith("data.sources.dolly.answers=base")
    # the same numbers with data that carries the voice: a claim by the interval, no caveat
    out = closing_of({"stage": "train", "best_adapter": "a/b", "best_epoch": 1, "monitor": "eval/combined",
                      "best_score": 0.0, "trained_tokens": 1000, "supervised_tokens": 100, "tokens_per_second": 50.0,
                      "peak_rss_mb": 900.0, "wall_seconds": 10, "checks_best": tuned, "baseline": {ADHERENCE.key: 0.729},
                      "min_headroom": 0.15, "data_adherence": 0.98, "general_answers": {"dolly": "base"}}, tmp_path)
    assert "is indistinguishable from the prompt-only baseline" in out
    assert "niche data's own" not in out and "general data" not in out

"""Evaluation end to end on the tiny random model: baseline, checks per epoch, selection, report."""

import csv
import json

from conftest import only_run_dir, run_cli, tiny_overrides

SMALL_EVAL = ["eval.max_prompts=4", "eval.max_dialogues=1", "eval.max_new_tokens=8", "eval.samples=2",
              "logger.wandb.enabled=false"]


def checks_rows(run_dir):
    return list(csv.DictReader(open(run_dir / "checks.csv")))


def test_every_check_is_logged_and_reported(tiny_model, tiny_data, tmp_path):
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, tmp_path, "train.max_epochs=2", *SMALL_EVAL))
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    rows = checks_rows(run_dir)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for key in ("general_drift", "general_drift_pct", "forget/ordinary_nll_delta", "persona/adherence",
                "persona/taboo_rate", "persona/marker_rate", "drift/slope", "drift/last", "parrot/rate",
                "parrot/copy_rate", "combined"):
        assert all(r[key] != "" for r in rows), key
    header = next(csv.reader(open(run_dir / "logs" / "metrics.csv")))
    assert {"eval/general_drift", "eval/persona/adherence", "eval/combined", "baseline/persona/adherence",
            "baseline/general_loss"} <= set(header)
    baseline = json.loads((run_dir / "baseline.json").read_text())
    assert "persona/adherence" in baseline["checks"] and baseline["system_prompt"].startswith("You are Alex.")
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["epoch"] for s in samples} == {"baseline", 0, 1}
    assert {s["set"] for s in samples if s["epoch"] == 1} == {"persona", "ordinary"}
    best = json.loads((run_dir / "adapters" / "best.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert best["selected_by"] == summary["monitor"] == "eval/combined" and summary["best_epoch"] == best["epoch"]
    assert 0 < summary["eval_fraction"] < 1 and summary["eval_seconds"] > 0
    report = (run_dir / "report.md").read_text()
    for section in ("## Mix", "## Checks per epoch", "## Fine-tune vs prompt-only baseline", "## Samples (greedy)",
                    "![loss curves](loss_curves.png)", "Chosen checkpoint: epoch"):
        assert section in report, section
    assert (run_dir / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"persona        epoch {best['epoch']} " in res.stdout and "the prompt-only baseline: adherence" in res.stdout
    assert summary["checks_best"]["epoch"] == best["epoch"]
    # every claim carries its interval: in checks.csv, summary.json, the closing lines and report.md
    for key in ("persona/adherence_lo", "persona/adherence_hi", "persona/adherence_gain", "persona/adherence_gain_lo",
                "persona/adherence_gain_hi", "persona/marker_rate_lo", "persona/marker_rate_gain_hi"):
        assert all(r[key] != "" for r in rows), key
        assert key in summary["checks_best"], key
    assert "persona/adherence_lo" in summary["baseline"] and "persona/adherence_gain" not in summary["baseline"]
    tuned = summary["checks_best"]
    assert tuned["persona/adherence_lo"] <= tuned["persona/adherence"] <= tuned["persona/adherence_hi"]
    assert "95 % intervals over prompts" in res.stdout and "forgetting     " in res.stdout
    assert "eval/persona/adherence_gain_lo" in header
    # held-out prompts answered by both, side by side, in the closing lines and the report: three,
    # or as many as samples.jsonl keeps (eval.samples=2 here)
    assert res.stdout.count("held-out       ") == 2 and res.stdout.count("  baseline     ") == 2
    assert "### Held-out persona prompts, side by side" in report and "(95 % bootstrap intervals over prompts)" in report


def test_unchanged_weights_show_zero_drift(tiny_model, tiny_data, tmp_path):
    # lr 1e-30: the adapter moves by ~1e-30, below float rounding, so the tuned model is the base model
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, tmp_path, "train.max_epochs=1", "train.lr=1e-30", *SMALL_EVAL))
    assert res.returncode == 0, res.stderr[-3000:]
    row = checks_rows(only_run_dir(tmp_path))[0]
    assert float(row["general_drift"]) == 0.0 and float(row["forget/ordinary_nll_delta"]) == 0.0
    assert float(row["combined"]) == 0.0  # same answers as the base model: no gain, no cost


def test_drift_threshold_rejects_the_epoch_and_stops(tiny_model, tiny_data, tmp_path):
    # a loss can fall by at most 100 %: a limit of -100 % is exceeded by any drift, so epoch 0 is rejected
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, tmp_path, "train.max_epochs=3",
                                  "eval.max_general_drift_pct=-100", "eval.checks=false", *SMALL_EVAL))
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "general drift" in summary["stop_reason"] and summary["epochs_run"] < 3
    assert checks_rows(run_dir)[0]["rejected"] == "1"

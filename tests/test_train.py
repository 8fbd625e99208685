"""Training through the real CLI on a tiny random Llama: adapters, W&B files, sweeps (resume: test_resume.py)."""

import csv
import json

import pytest
import torch

from conftest import only_run_dir, run_cli, tiny_overrides
from wandb_records import history_keys, run_info


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, tiny_model, tiny_data):
    out = tmp_path_factory.mktemp("two-step")
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, out, "train.max_steps=2", "train.checkpoint_every_n_steps=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    return only_run_dir(out), res


def test_two_steps_write_an_adapter_that_loads_and_changes_logits(two_step_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, _ = two_step_run
    adapter = run_dir / "adapters" / "last"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    x = torch.tensor([[1, 42, 7, 99, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(x).logits.clone()
        tuned = PeftModel.from_pretrained(base, adapter).eval()
        after = tuned(x).logits
    assert (after - before).abs().max() > 1e-6


def test_run_prints_mix_table_and_headline_metrics(two_step_run):
    run_dir, res = two_step_run
    assert "training mix" in res.stdout and "alex" in res.stdout and "general" in res.stdout
    assert str(run_dir) in res.stdout.replace("\n", "")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["trained_tokens"] > summary["supervised_tokens"] > 0
    assert summary["tokens_per_second"] > 0 and summary["peak_rss_mb"] > 0
    rows = list(csv.DictReader(open(run_dir / "mix.csv")))
    assert {r["source"] for r in rows} == {"alex", "general"}


def test_wandb_offline_run_holds_metrics_and_config(two_step_run):
    run_dir, _ = two_step_run
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    keys = history_keys(files[0])
    assert {"train/loss", "train/tokens"} <= keys
    assert "data/mix/path" in keys  # the mix table, logged before the first step
    info = run_info(files[0])
    assert {"model", "data", "lora", "train"} <= info["config_keys"]


def test_full_epochs_validate_per_source_and_mark_the_best(tiny_model, tiny_data, tmp_path):
    """Also early stopping: patience 1 and an improvement of 1000 nats required, so epoch 1 cannot
    improve on epoch 0 and the run ends after 2 of its 3 epochs, saying so."""
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, tmp_path, "train.max_epochs=3", "train.lr=1e-3",
                                  "train.early_stopping.patience=1", "train.early_stopping.min_delta=1000",
                                  "logger.wandb.enabled=false"))
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    metrics = list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))
    val = [r for r in metrics if r.get("val/loss")]
    assert len(val) == 2
    for key in ("val/loss_alex", "val/loss_general", "val/loss_niche"):
        assert val[-1][key]
    # the training loss per role, every step: is the niche fitted at all?
    steps = [r for r in metrics if r.get("train/loss")]
    assert all(r["train/loss_general"] for r in steps) and any(r["train/loss_niche"] for r in steps)
    assert sorted(p.name for p in (run_dir / "adapters").glob("epoch_*")) == ["epoch_00", "epoch_01"]
    best = json.loads((run_dir / "adapters" / "best.json").read_text())
    assert best["epoch"] in (0, 1) and (run_dir / "adapters" / "best" / "adapter_model.safetensors").exists()
    # every epoch trains on its own general draw; epoch 0 is the mix the manifest hashes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["epochs_run"] == 2, summary
    assert 0 < summary["supervised_niche_tokens"] < summary["supervised_tokens"]
    per_epoch = summary["train_mix_sha256_per_epoch"]
    assert set(per_epoch) == {"0", "1"} and per_epoch["0"] != per_epoch["1"]
    assert per_epoch["0"] == json.loads((run_dir / "manifest.json").read_text())["train_mix_sha256"]
    # stdout is a pipe here, as in a log file: plain progress lines, each epoch ending on its last step
    lines = [line for line in res.stdout.splitlines() if line.startswith("train          epoch")]
    assert lines and all(" tok/s " in line and "elapsed" in line for line in lines)
    assert any(line.startswith("train          epoch 1 ") and "epoch left" not in line for line in lines)


def test_a_failing_sweep_job_is_recorded_and_the_others_run(tiny_model, tiny_data, tmp_path):
    args = tiny_overrides(tiny_model, tiny_data, tmp_path, "train.max_steps=1", "logger.wandb.enabled=false")
    args = [a for a in args if not a.startswith("data.mix.general_ratio")] + ["data.mix.general_ratio=500,2"]
    res = run_cli("-m", *args)
    assert res.returncode != 0
    jobs = {p.name: p for p in (tmp_path / "sweeps").glob("*/*/*") if p.is_dir()}
    assert "must supply" in (jobs["0_data.mix.general_ratio=500"] / "error.txt").read_text()
    assert (jobs["1_data.mix.general_ratio=2"] / "summary.json").exists()

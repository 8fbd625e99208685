"""Training through the real CLI on a tiny random Llama: two steps, the adapter, W&B files (full epochs, early stopping, resume and a failing sweep job: test_resume.py)."""

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

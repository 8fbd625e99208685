"""Faults and correctness guards: an unwritable output folder, packing isolation, a non-finite loss."""

from __future__ import annotations

import json

import torch
from datasets import Dataset

from conftest import only_run_dir, run_cli, tiny_overrides
from recipe_runner.data.batches import Collator, Rows
from recipe_runner.train.fit import keep_last_good
from recipe_runner.train.module import next_token_hidden, supervised_loss


def test_an_unwritable_output_folder_is_refused_before_anything_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = run_cli("stage=prepare", f"paths.output_dir={blocker / 'runs'}")
    assert res.returncode == 2 and res.stderr.startswith(f"error: paths.output_dir={blocker / 'runs'}: cannot write "
                                                         f"there (Not a directory)"), res.stderr
    assert "Traceback" not in res.stderr


def test_a_packed_row_has_the_loss_of_its_examples_apart(tiny_model):
    """Packing holds only if the forward builds a block-diagonal mask from the restarting
    position_ids (it does with use_cache=False; with the default cache it does not and the second
    example attends to the first). Checked on the forward training uses (module.next_token_hidden,
    module.supervised_loss)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 1000, (n,), generator=g).tolist() for n in (23, 31)]
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids})
    packed_rows, apart_rows = Rows(ds, 64, packing=True, seed=0), Rows(ds, 64, packing=False, seed=0)
    assert len(packed_rows) == 1 and len(apart_rows) == 2
    first = len(packed_rows.ids[packed_rows.rows[0][0]])  # where the second packed example starts
    packed_batch = Collator(0, packing=True)([packed_rows[0]])
    leaky = {**packed_batch, "position_ids": torch.arange(packed_batch["input_ids"].shape[1])[None]}  # plain causal
    with torch.no_grad():
        packed, n_packed = supervised_loss(model, packed_batch)
        apart = [supervised_loss(model, Collator(0, packing=False)([apart_rows[i]])) for i in range(2)]
        second_alone = next_token_hidden(model, Collator(0, packing=False)([apart_rows[packed_rows.rows[0][1]]]))[0][0]
        second_packed = next_token_hidden(model, packed_batch)[0][0, first:]
        second_leaky = next_token_hidden(model, leaky)[0][0, first:]
    assert n_packed == sum(n for _, n in apart) == 23 + 31 - 2
    assert torch.allclose(packed, sum(loss for loss, _ in apart), rtol=1e-5)
    scale = second_alone.abs().max()
    assert (second_packed - second_alone).abs().max() < 1e-4 * scale
    assert (second_leaky - second_alone).abs().max() > 1e-2 * scale  # the check can fail: a leak shows


def test_a_non_finite_loss_stops_the_run_and_keeps_no_poisoned_adapter(tiny_model, tiny_data, tmp_path):
    """lr 1e30 makes the weights overflow after the first step: the run stops at step 1, names it
    and the sources in its batch, records why in summary.json, and writes no adapters/last from
    the poisoned weights."""
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, tmp_path, "model.quant=none", "train.lr=1e30",
                                  "eval.checks=false", "logger.wandb.enabled=false"))
    assert res.returncode == 2, res.stderr[-2000:]
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith("error: non-finite training: the loss is nan at step 1 (batch 1 of epoch 0, sources ")
    assert "Kept: no adapter (no epoch finished)" in error and "Lower train.lr (now 1e+30)" in error
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"].startswith("non-finite training: the loss is nan at step 1")
    assert not (run_dir / "adapters" / "last").exists()


def test_the_last_good_epoch_becomes_adapters_last(tmp_path):
    for epoch in ("epoch_00", "epoch_01"):
        (tmp_path / epoch).mkdir()
        (tmp_path / epoch / "adapter_model.safetensors").write_text(epoch)
    keep_last_good(tmp_path)
    assert (tmp_path / "last" / "adapter_model.safetensors").read_text() == "epoch_01"


def test_two_runs_building_the_same_data_cache_at_once_agree(tiny_model, tiny_data, tmp_path):
    """Both processes build the same entries into one empty cache at the same time: each entry is
    built under a temporary name and renamed whole, so neither reads a half-built one."""
    import os
    import subprocess
    import sys

    from conftest import NO_USER_SETTINGS, REPO

    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "XDG_CONFIG_HOME": NO_USER_SETTINGS}
    procs = [subprocess.Popen([sys.executable, "run.py", "stage=prepare", "logger.wandb.enabled=false",
                               *tiny_overrides(tiny_model, tiny_data, tmp_path / f"out{i}", f"paths.cache_dir={tmp_path / 'cache'}")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    shas = [json.loads((only_run_dir(tmp_path / f"out{i}") / "manifest.json").read_text())["train_mix_sha256"]
            for i in range(2)]
    assert shas[0] == shas[1]
    entries = sorted(p.name for p in (tmp_path / "cache" / "data").iterdir())
    assert entries and all((tmp_path / "cache" / "data" / e / "DONE").exists() for e in entries), entries

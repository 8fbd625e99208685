"""kill -9, then resume: a killed run (or sweep) continues to what an uninterrupted one ends with.

The kill is real (SIGKILL, no clean-up runs) and lands at a chosen moment: a `sitecustomize`
put on the killed process's PYTHONPATH watches Python's audit events and kills the process when
the Nth checkpoint write is about to rename its written file into place: the write is half done,
the new checkpoint on disk and `last.ckpt` still the previous step's. (A writer that wrote
`last.ckpt` in place would never get there, and the test fails on "not killed".)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import run_cli, tiny_overrides

KILLER = textwrap.dedent("""
    import os, signal, sys
    _at, _inside = int(os.environ["KILL_AT_WRITE"]), os.environ.get("KILL_INSIDE", "")
    _seen = [0]

    def _kill_at_the_nth_checkpoint_write(event, args):
        if event != "os.rename":  # os.replace raises it too
            return
        target = os.fsdecode(args[1])
        if "/checkpoints/" in target and _inside in target:
            _seen[0] += 1
            if _seen[0] == _at:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(_kill_at_the_nth_checkpoint_write)
""")


def killed_at_write(args: list[str], nth: int, tmp_path: Path, inside: str = "") -> subprocess.CompletedProcess:
    hook = tmp_path / "killer"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(KILLER)
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    res = run_cli(*args, env={"PYTHONPATH": path, "KILL_AT_WRITE": str(nth), "KILL_INSIDE": inside})
    assert res.returncode == -9, f"not killed at checkpoint write {nth}: rc {res.returncode}\n{res.stderr[-2000:]}"
    return res


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapters" / "last" / "adapter_model.safetensors")


def run_of(out: Path, name: str) -> Path:
    return next(p for p in (out / "runs").glob(f"*/{name}"))


def test_killed_mid_epoch_in_a_checkpoint_write_then_resumed_equals_an_uninterrupted_run(tiny_model, tiny_data,
                                                                                        tmp_path):
    base = ["train.max_epochs=2", "train.checkpoint_every_n_steps=1", "train.lr=2e-3", "lora.dropout=0.3",
            "eval.checks=false", "logger.wandb.enabled=false"]
    whole = tmp_path / "whole"
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, whole, *base, "hydra.run.dir=${paths.output_dir}/runs/${name}/a"))
    assert res.returncode == 0, res.stderr[-3000:]
    reference = json.loads((run_of(whole, "a") / "summary.json").read_text())
    steps = reference["global_step"]
    assert reference["epochs_run"] == 2 and steps >= 6

    # killed in epoch 1, when the checkpoint of step steps*3//4 (writes are numbered from 1) opens
    out = tmp_path / "killed"
    kill_at = steps * 3 // 4
    killed_at_write(tiny_overrides(tiny_model, tiny_data, out, *base, "hydra.run.dir=${paths.output_dir}/runs/${name}/b"),
                    kill_at, tmp_path)
    killed = run_of(out, "b")
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [".last.ckpt.partial", "last.ckpt"]
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == kill_at - 1 and ckpt["epoch"] == 1, "mid-epoch 1, the write before the kill"
    assert all("lora_" in k for k in ckpt["state_dict"]), "checkpoints hold the adapter only"
    assert not (killed / "summary.json").exists()

    res = run_cli(*tiny_overrides(tiny_model, tiny_data, out, *base, "train.resume=last",
                                  "hydra.run.dir=${paths.output_dir}/runs/${name}/c"))
    assert res.returncode == 0, res.stderr[-3000:]
    resumed_dir = run_of(out, "c")
    resumed = json.loads((resumed_dir / "summary.json").read_text())
    assert resumed["resumed_from"] == str(killed / "checkpoints" / "last.ckpt")
    trained = {int(r["step"]) for r in csv.DictReader(open(resumed_dir / "logs" / "metrics.csv")) if r.get("train/loss")}
    assert min(trained) == kill_at - 1, f"the resumed run trained steps {sorted(trained)}"

    # the same adapter, bit for bit, and the same numbers
    a, b = adapter(run_of(whole, "a")), adapter(resumed_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        max((a[k] - b[k]).abs().max().item() for k in a)
    for key in ("val_loss", "global_step", "epochs_run", "trained_tokens", "supervised_tokens", "checks_last",
                "base_general_loss", "best_epoch", "best_score", "train_mix_sha256_per_epoch"):
        assert resumed[key] == reference[key], (key, resumed[key], reference[key])
    # the epochs before the kill came along: every epoch's adapter and the checks of both
    assert sorted(p.name for p in (resumed_dir / "adapters").glob("epoch_*")) == ["epoch_00", "epoch_01"]
    assert (resumed_dir / "checks.csv").read_text() == (run_of(whole, "a") / "checks.csv").read_text()


def test_a_killed_sweep_resumes_skipping_finished_jobs(tiny_model, tiny_data, tmp_path):
    args = [a for a in tiny_overrides(tiny_model, tiny_data, tmp_path, "train.max_steps=3",
                                      "train.checkpoint_every_n_steps=1", "eval.checks=false",
                                      "logger.wandb.enabled=false") if not a.startswith("train.lr")]
    sweep = ["-m", *args, "train.lr=1e-3,2e-3"]
    # job 0 finishes; job 1 is killed in its second checkpoint write
    killed_at_write(sweep, 2, tmp_path, inside="1_train.lr=")
    first = next((tmp_path / "sweeps").glob("*/*"))
    assert (first / "0_train.lr=0.001" / "summary.json").exists()
    assert not (first / "1_train.lr=0.002" / "summary.json").exists()

    res = run_cli(*sweep, "train.resume=sweep")
    assert res.returncode == 0, res.stderr[-3000:]
    second = max((tmp_path / "sweeps").glob("*/*"))
    assert second != first
    assert "0_train.lr=0.001: finished in" in res.stdout
    done, resumed = (json.loads((second / j / "summary.json").read_text())
                     for j in ("0_train.lr=0.001", "1_train.lr=0.002"))
    assert done["run_dir"] == str(first / "0_train.lr=0.001")  # copied, not trained again
    assert not (second / "0_train.lr=0.001" / "logs").exists() or \
        (second / "0_train.lr=0.001" / "logs" / "metrics.csv").read_text() == \
        (first / "0_train.lr=0.001" / "logs" / "metrics.csv").read_text()
    assert resumed["resumed_from"] == str(first / "1_train.lr=0.002" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 3
    res = run_cli("stage=compare", f"sweep_dir={second}")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(open(second / "compare.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok"], rows

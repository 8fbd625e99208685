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
import math
import os
import subprocess
import sys
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
                if os.environ.get("KILL_GROUP"):  # DDP: every rank at once, as a node failure would
                    os.killpg(os.getpgid(0), signal.SIGKILL)
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


def killed_ddp_at_write(args: list[str], nth: int, tmp_path: Path) -> None:
    """The same kill under DDP: the whole process group (rank 0 and the rank it started) dies at
    rank 0's Nth checkpoint write. Its own session, so the group is the run's, not pytest's."""
    hook = tmp_path / "killer"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(KILLER)
    from conftest import NO_USER_SETTINGS, REPO

    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "XDG_CONFIG_HOME": NO_USER_SETTINGS,
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
           "KILL_AT_WRITE": str(nth), "KILL_GROUP": "1"}
    res = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=env, start_new_session=True)
    assert res.returncode == -9, f"not killed at checkpoint write {nth}: rc {res.returncode}\n{res.stderr[-2000:]}"


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapters" / "last" / "adapter_model.safetensors")


def run_of(out: Path, name: str) -> Path:
    return next(p for p in (out / "runs").glob(f"*/{name}"))


def full_epochs_checked(run_dir: Path, stdout: str) -> dict:
    """The uninterrupted run, itself checked: validation per source, adapters per epoch and best,
    early stopping (patience 1 and an improvement of 1000 nats required, so epoch 1 cannot improve
    on epoch 0 and the run ends after 2 of its 3 epochs, saying so), a fresh general draw per epoch."""
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
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["epochs_run"] == 2, summary
    assert 0 < summary["supervised_niche_tokens"] < summary["supervised_tokens"]
    # every epoch trains on its own general draw; epoch 0 is the mix the manifest hashes
    per_epoch = summary["train_mix_sha256_per_epoch"]
    assert set(per_epoch) == {"0", "1"} and per_epoch["0"] != per_epoch["1"]
    assert per_epoch["0"] == json.loads((run_dir / "manifest.json").read_text())["train_mix_sha256"]
    # stdout is a pipe here, as in a log file: plain progress lines, each epoch ending on its last step
    lines = [line for line in stdout.splitlines() if line.startswith("train          epoch")]
    assert lines and all(" tok/s " in line and "elapsed" in line for line in lines)
    assert any(line.startswith("train          epoch 1 ") and "epoch left" not in line for line in lines)
    return summary


def test_killed_mid_epoch_in_a_checkpoint_write_then_resumed_equals_an_uninterrupted_run(tiny_model, tiny_data,
                                                                                        tmp_path):
    """Dropout on (the random state must resume too) and early stopping on (its patience too)."""
    base = ["train.max_epochs=3", "train.checkpoint_every_n_steps=1", "train.lr=1e-3", "lora.dropout=0.3",
            "train.early_stopping.patience=1", "train.early_stopping.min_delta=1000",
            "eval.checks=false", "logger.wandb.enabled=false"]
    whole = tmp_path / "whole"
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, whole, *base, "hydra.run.dir=${paths.output_dir}/runs/${name}/a"))
    assert res.returncode == 0, res.stderr[-3000:]
    reference = full_epochs_checked(run_of(whole, "a"), res.stdout)
    steps = reference["global_step"]
    assert steps >= 6

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
    for key in ("val_loss", "global_step", "epochs_run", "stopped_early", "trained_tokens", "supervised_tokens",
                "checks_last", "base_general_loss", "best_epoch", "best_score", "train_mix_sha256_per_epoch"):
        assert resumed[key] == reference[key], (key, resumed[key], reference[key])
    # the epochs before the kill came along: every epoch's adapter and the checks of both
    assert sorted(p.name for p in (resumed_dir / "adapters").glob("epoch_*")) == ["epoch_00", "epoch_01"]
    assert (resumed_dir / "checks.csv").read_text() == (run_of(whole, "a") / "checks.csv").read_text()


def test_a_killed_sweep_resumes_skipping_finished_jobs(tiny_model, tiny_data, tmp_path):
    """Three jobs: 0 fails (a ratio the data cannot supply: recorded, the others run), 1 finishes,
    2 is killed in its second checkpoint write. Re-run with train.resume=sweep: 0 is tried again
    (and fails again), 1 is copied, 2 resumes from its checkpoint. The jobs train with the EAFT
    loss and KL to the base (their logged terms are checked on job 1: one CLI run fewer in CI)."""
    args = [a for a in tiny_overrides(tiny_model, tiny_data, tmp_path, "train.max_steps=3",
                                      "train.checkpoint_every_n_steps=1", "eval.checks=false",
                                      "train.loss=eaft", "train.kl_to_base=0.1",
                                      "logger.wandb.enabled=false") if not a.startswith("data.mix.general_ratio")]
    sweep = ["-m", *args, "data.mix.general_ratio=500,2,3"]
    failed, done, killed = "0_data.mix.general_ratio=500", "1_data.mix.general_ratio=2", "2_data.mix.general_ratio=3"
    killed_at_write(sweep, 2, tmp_path, inside=killed)
    first = next((tmp_path / "sweeps").glob("*/*"))
    assert "must supply" in (first / failed / "error.txt").read_text()
    assert (first / done / "summary.json").exists() and not (first / killed / "summary.json").exists()
    metrics = list(csv.DictReader(open(first / done / "logs" / "metrics.csv")))
    assert {"train/eaft_weight_mean", "train/kl_to_base", "train/ce", "val/loss"} <= set(metrics[0])
    weights = [float(r["train/eaft_weight_mean"]) for r in metrics if r["train/eaft_weight_mean"]]
    kls = [float(r["train/kl_to_base"]) for r in metrics if r["train/kl_to_base"]]
    assert weights and all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in weights)
    assert kls and all(math.isfinite(k) and k >= 0.0 for k in kls)

    res = run_cli(*sweep, "train.resume=sweep")
    assert res.returncode != 0  # job 0 failed again, and Hydra says so at the end
    second = max((tmp_path / "sweeps").glob("*/*"))
    assert second != first
    assert f"{done}: finished in {first / done}; copied, not run again" in res.stdout
    assert "must supply" in (second / failed / "error.txt").read_text()
    copied, resumed = (json.loads((second / j / "summary.json").read_text()) for j in (done, killed))
    assert copied == json.loads((first / done / "summary.json").read_text())  # not trained again
    assert resumed["resumed_from"] == str(first / killed / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 3
    res = run_cli("stage=compare", f"sweep_dir={second}")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(open(second / "compare.csv")))
    assert [r["status"][:6] for r in rows] == ["failed", "ok", "ok"], rows


def test_a_ddp_run_killed_mid_epoch_resumes_to_the_uninterrupted_runs_adapter(tiny_model, tiny_data, tmp_path):
    """Two CPU ranks (gloo), dropout on: each rank's batches and random state must resume where they were."""
    base = ["train.max_epochs=2", "train.checkpoint_every_n_steps=1", "train.lr=1e-3", "lora.dropout=0.3",
            "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu", "eval.checks=false",
            "logger.wandb.enabled=false"]
    whole = tmp_path / "whole"
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, whole, *base, "hydra.run.dir=${paths.output_dir}/runs/${name}/a"))
    assert res.returncode == 0, res.stderr[-3000:]
    reference = json.loads((run_of(whole, "a") / "summary.json").read_text())
    steps = reference["global_step"]
    assert reference["world_size"] == 2 and steps >= 4

    out = tmp_path / "killed"
    kill_at = steps * 3 // 4  # mid-epoch 1
    killed_ddp_at_write(tiny_overrides(tiny_model, tiny_data, out, *base,
                                       "hydra.run.dir=${paths.output_dir}/runs/${name}/b"), kill_at, tmp_path)
    killed = run_of(out, "b")
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == kill_at - 1 and ckpt["epoch"] == 1, "mid-epoch 1, the write before the kill"

    res = run_cli(*tiny_overrides(tiny_model, tiny_data, out, *base, "train.resume=last",
                                  "hydra.run.dir=${paths.output_dir}/runs/${name}/c"))
    assert res.returncode == 0, res.stderr[-3000:]
    resumed_dir = run_of(out, "c")
    resumed = json.loads((resumed_dir / "summary.json").read_text())
    a, b = adapter(run_of(whole, "a")), adapter(resumed_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        max((a[k] - b[k]).abs().max().item() for k in a)
    for key in ("val_loss", "global_step", "epochs_run", "trained_tokens", "supervised_tokens"):
        assert resumed[key] == reference[key], (key, resumed[key], reference[key])

"""Sweeps declared in a file (conf/sweep/NAME.yaml), shared like recipes."""

import csv
import json

from conftest import run_cli, tiny_overrides
from wandb_records import history_keys, run_info, summary

FAST = ["train.max_steps=1", "eval.max_prompts=2", "eval.max_dialogues=0", "eval.max_new_tokens=4"]
JOBS = ["0_data.mix.general_ratio=4,lora.r=8", "1_data.mix.general_ratio=10,lora.r=8",
        "2_data.mix.general_ratio=4,lora.r=16", "3_data.mix.general_ratio=10,lora.r=16"]


def test_a_2x2_sweep_file_gives_four_folders_four_wandb_runs_in_one_group_and_a_leaderboard(
        tiny_model, tiny_data, tmp_path):
    # a fixed command-line value would replace the file's values for that key: leave the ratio to the file;
    # the tiny general corpus needs repeats for 1:10
    args = [a for a in tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "data.mix.max_repeats=4")
            if not a.startswith("data.mix.general_ratio=")]
    res = run_cli("-m", "sweep=lora_grid", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.glob("sweeps/*/*/*") if p.is_dir())
    assert jobs == JOBS
    groups = set()
    for job in sorted(tmp_path.glob("sweeps/*/*/[0-9]*")):
        cfg = (job / ".hydra" / "config.yaml").read_text()
        r, ratio = job.name.split("lora.r=")[1], job.name.split("general_ratio=")[1].split(",")[0]
        assert f"r: {r}" in cfg and f"general_ratio: {ratio}" in cfg
        written = json.loads((job / "summary.json").read_text())
        assert written["global_step"] == 1
        # W&B: one offline run per job, named after its overrides, tagged with the recipe
        files = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, files
        info = run_info(files[0])
        groups.add(info["group"])
        assert info["name"] == job.name and "alex_persona_cpu" in info["tags"]
        assert {"model", "data", "lora", "train"} <= info["config_keys"]
        assert {"train/loss", "val/loss", "eval/persona/adherence", "baseline/persona/adherence",
                "eval/samples/_type"} <= history_keys(files[0])  # the samples table
        final = summary(files[0])  # summary.json's numbers are the run summary
        assert final["global_step"] == 1 and final["trained_tokens"] == written["trained_tokens"]
        assert final["val_loss/val/loss_alex"] == written["val_loss"]["val/loss_alex"]  # nested: flattened
        assert final["checks_last/persona/adherence"] == written["checks_last"]["persona/adherence"]
        assert final["checks_last/persona/adherence_gain_lo"] == written["checks_last"]["persona/adherence_gain_lo"]
    assert len(groups) == 1 and groups.pop().startswith("alex_persona_cpu-")
    # the leaderboard, for people without W&B
    sweep = next(tmp_path.glob("sweeps/*/*"))
    (sweep / "3_data.mix.general_ratio=10,lora.r=16" / "error.txt").write_text("data.mix: made up failure\n")
    (sweep / "3_data.mix.general_ratio=10,lora.r=16" / "summary.json").unlink()
    res = run_cli("stage=compare", f"sweep_dir={sweep}", f"paths.output_dir={tmp_path / 'cmp'}")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "compare.csv")))
    assert [(r["job"], r["lora.r"], r["data.mix.general_ratio"]) for r in rows] == [
        ("0", "8", "4"), ("1", "8", "10"), ("2", "16", "4"), ("3", "16", "10")]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed: data.mix: made up failure"]
    assert all(float(r["val/loss"]) > 0 for r in rows[:3])
    assert all(float(r["gain lo"]) <= float(r["gain"]) <= float(r["gain hi"]) for r in rows[:3])  # with its interval
    assert (sweep / "compare_lora.r.png").exists() and (sweep / "compare_loss_curves.png").exists()
    assert "| job | data.mix.general_ratio | lora.r |" in (sweep / "compare.md").read_text()


def test_an_unknown_sweep_file_is_a_clear_error():
    res = run_cli("-m", "sweep=nope")
    assert res.returncode == 2 and "sweep=nope: no conf/sweep/nope.yaml; known sweeps: ['lora_grid', 'none']" in res.stderr


def test_multirun_with_cfg_is_a_clear_error_not_a_traceback():
    res = run_cli("-m", "--cfg", "job", "lora.r=8,16")
    assert res.returncode == 2 and "-m and --cfg: choose one" in res.stderr and "Traceback" not in res.stderr

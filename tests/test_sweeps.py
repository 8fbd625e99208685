"""Sweeps declared in a file (conf/sweep/NAME.yaml), shared like recipes."""

import csv
import json

from conftest import run_cli, tiny_overrides

FAST = ["train.max_steps=1", "logger.wandb.enabled=false", "eval.checks=false"]


def test_a_sweep_file_runs_its_grid_with_one_folder_per_job(tiny_model, tiny_data, tmp_path):
    # a fixed command-line value would replace the file's values for that key: leave the ratio to the file;
    # the tiny general corpus needs repeats for 1:10
    args = [a for a in tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "data.mix.max_repeats=4")
            if not a.startswith("data.mix.general_ratio=")]
    res = run_cli("-m", "sweep=lora_grid", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.glob("sweeps/*/*/*") if p.is_dir())
    assert jobs == ["0_data.mix.general_ratio=4,lora.r=8", "1_data.mix.general_ratio=10,lora.r=8",
                    "2_data.mix.general_ratio=4,lora.r=16", "3_data.mix.general_ratio=10,lora.r=16"]
    for job in tmp_path.glob("sweeps/*/*/[0-9]*"):
        cfg = (job / ".hydra" / "config.yaml").read_text()
        r, ratio = job.name.split("lora.r=")[1], job.name.split("general_ratio=")[1].split(",")[0]
        assert f"r: {r}" in cfg and f"general_ratio: {ratio}" in cfg
        assert json.loads((job / "summary.json").read_text())["global_step"] == 1
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
    assert (sweep / "compare_lora.r.png").exists() and (sweep / "compare_loss_curves.png").exists()
    assert "| job | data.mix.general_ratio | lora.r |" in (sweep / "compare.md").read_text()


def test_an_unknown_sweep_file_is_a_clear_error():
    res = run_cli("-m", "sweep=nope")
    assert res.returncode == 2 and "sweep=nope: no conf/sweep/nope.yaml; known sweeps: ['lora_grid', 'none']" in res.stderr

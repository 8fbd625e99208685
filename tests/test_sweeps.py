"""Sweeps declared in a file (conf/sweep/NAME.yaml), shared like recipes."""

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


def test_an_unknown_sweep_file_is_a_clear_error():
    res = run_cli("-m", "sweep=nope")
    assert res.returncode == 2 and "sweep=nope: no conf/sweep/nope.yaml; known sweeps: ['lora_grid', 'none']" in res.stderr

"""hydra/sweeper=optuna (`-m hparams_search=NAME`): a real Optuna study over real tiny-model trials."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import NO_USER_SETTINGS, REPO, run_cli, tiny_overrides
from wandb_records import run_info

SEARCH = "persona_cpu"  # conf/hparams_search/persona_cpu.yaml; the command line narrows it for the tiny model
TINY = ["eval.max_prompts=2", "eval.max_new_tokens=4", "eval.max_still_answers=4", "data.mix.max_repeats=4",
        "hydra.sweeper.n_trials=4", "train.lr=tag(log,interval(1e-3,3e-2))", "lora.r=choice(4,8)"]


def study_of(sweep):
    import optuna
    from recipe_runner.search.study import storage

    name = next(s.study_name for s in optuna.get_all_study_summaries(storage(sweep / "study.journal"))
                if not s.study_name.endswith("-pruning"))
    return optuna.load_study(study_name=name, storage=storage(sweep / "study.journal")), name


def stub_finished_trials(sweep, name: str, score: float, epoch: int, epochs: list[int]) -> None:
    """Two finished trials in the pruning twin that scored `score` at `epoch` (and nothing before it):
    a trial scoring less at that epoch is below their median and is pruned there. The search's
    first trials get `epochs` epochs, in order (the sampler draws the rest)."""
    import optuna
    from recipe_runner.search.study import storage, twin_name

    sweep.mkdir(parents=True)
    twin = optuna.create_study(storage=storage(sweep / "study.journal"), study_name=twin_name(name),
                               direction="maximize")
    for _ in range(2):
        t = twin.ask()
        t.report(score, step=epoch)
        twin.tell(t, score)
    study = optuna.create_study(storage=storage(sweep / "study.journal"), study_name=name,
                                directions=["maximize", "minimize"])
    for n in epochs:
        study.enqueue_trial({"train.max_epochs": n})


def test_a_two_objective_search_prunes_resumes_and_marks_the_pareto_front(tiny_model, tiny_data, tmp_path):
    sweep = tmp_path / "sweeps" / "alex_persona_cpu" / f"search_{SEARCH}"
    stub_finished_trials(sweep, f"alex_persona_cpu-search_{SEARCH}", score=10.0, epoch=1, epochs=[3, 2, 2, 2])
    args = [a for a in tiny_overrides(tiny_model, tiny_data, tmp_path, *TINY)
            if not a.startswith("data.mix.general_ratio=")]  # the search file's choice(1, 2, 3) stays
    # two trials at a time through the parallel launcher (joblib): n_jobs is the user's, on the command line
    res = run_cli("-m", f"hparams_search={SEARCH}", *args, "train.max_epochs=choice(2,3)", "hydra/launcher=parallel",
                  "hydra.sweeper.n_jobs=2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study, name = study_of(sweep)
    assert [o.name for o in study.directions] == ["MAXIMIZE", "MINIMIZE"]  # gain up, forgetting down
    states = [t.state.name for t in study.trials]
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: int(p.name.split("_")[0]))
    assert len(jobs) == 4 and len(study.trials) == 4, (states, [j.name for j in jobs])
    assert states == ["PRUNED", "COMPLETE", "COMPLETE", "COMPLETE"]
    three = [t for t in study.trials if t.params["train.max_epochs"] == 3]
    for t, job in zip(study.trials, jobs):
        assert job.name.startswith(f"{t.number}_") and "trial." not in job.name and "eval." not in job.name
        assert f"lora.r={t.params['lora.r']}" in job.name
        s = json.loads((job / "summary.json").read_text())
        assert s["search"]["trial"] == t.number and s["search"]["study"] == name
        if t.params["train.max_epochs"] == 3:  # scored below the stubs' 10.0 at epoch 1, with an epoch to go
            assert t.state.name == "PRUNED" and s["search"]["pruned_at_epoch"] == 1, s["stop_reason"]
            assert s["stop_reason"].startswith("pruned at epoch 1") and s["epochs_run"] == 2  # epochs 0 and 1
            assert (job / "adapters" / "best").exists() and not (job / "error.txt").exists()
        else:  # two epochs: the last one is never pruned
            assert t.state.name == "COMPLETE" and s["search"]["pruned_at_epoch"] is None
            assert t.values == [s["checks_best"]["persona/adherence_gain"], s["checks_best"]["forget/ordinary_nll_delta"]]
        files = list(job.glob("wandb/offline-run-*/run-*.wandb"))  # W&B: the trial number, the study as group
        assert len(files) == 1
        info = run_info(files[0])
        assert info["group"] == name and info["name"] == job.name
        assert info["config"]["trial"]["number"] == t.number and info["config"]["trial"]["study"] == name
    rows = list(csv.DictReader(open(sweep / "compare.csv")))
    front = {t.number for t in study.best_trials}
    assert front and {int(r["job"]) for r in rows if r["pareto"] == "yes"} == front
    assert rows[0]["status"] == "pruned at epoch 1" and rows[0]["pareto"] == ""
    assert (sweep / "compare_pareto.png").exists() and "| pareto |" in (sweep / "compare.md").read_text()


def test_a_killed_search_continues_where_it_stopped(tiny_model, tiny_data, tmp_path):
    """Killed while its second trial trains: the same command again keeps the finished trial, asks the
    killed one again with the same values, and ends with the study's n_trials."""
    args = ["-m", f"hparams_search={SEARCH}", *tiny_overrides(tiny_model, tiny_data, tmp_path, *TINY),
            "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=none", "train.max_epochs=2"]
    sweep = tmp_path / "sweeps" / "alex_persona_cpu" / f"search_{SEARCH}"
    env = {**os.environ, "WANDB_SILENT": "true", "XDG_CONFIG_HOME": NO_USER_SETTINGS}
    env.pop("WANDB_MODE", None)
    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(sweep.glob("1_*/logs")):  # trial 1 has started training (trial 0 finished before it)
        assert proc.poll() is None and time.time() < deadline, "the search ended or hung before trial 1 started"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = next(sweep.glob("0_*/summary.json"))
    written = first.stat().st_mtime_ns
    killed_params = study_of(sweep)[0].trials[1].params
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "trial 1        did not finish" in res.stdout
    study, _ = study_of(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[2].params == killed_params  # asked again with the same values
    assert first.stat().st_mtime_ns == written  # the finished trial was not run again
    res = run_cli(*args)  # nothing left: the study is complete
    assert res.returncode == 0 and len(study_of(sweep)[0].trials) == 3, res.stderr[-2000:]


@pytest.mark.parametrize("text, named", [
    ("  sweeper:\n    sampler:\n      _target_: os.system\n", "`_target_` is not allowed"),
    ("  sweeper:\n    params:\n      lora.r: 4,${oc.env:MY_SECRET}\n", "`hydra.sweeper.params.lora.r` uses `${oc.env:...}`"),
    ("  sweeper:\n    n_jobs: 64\n", "`hydra.sweeper.n_jobs` is not allowed: a search file sets hydra.sweeper.params and"),
    ("  sweeper:\n    params:\n      paths.output_dir: /tmp/x,/tmp/y\n", "`hydra.sweeper.params.paths.output_dir` is a user setting"),
    ("  launcher:\n    n_jobs: 8\n", "`hydra.launcher` is not allowed"),
])
def test_a_search_file_that_names_code_or_reads_the_environment_is_refused(text, named, tmp_path):
    path = REPO / "conf" / "hparams_search" / "zz_evil.yaml"
    path.write_text("# @package _global_\nhydra:\n" + text)
    try:
        res = run_cli("-m", "hparams_search=zz_evil", f"paths.output_dir={tmp_path}", env={"MY_SECRET": "s3cret"},
                      timeout=120)
    finally:
        path.unlink()
    assert res.returncode == 2 and named in res.stderr and "zz_evil.yaml:" in res.stderr, res.stderr
    assert not any(tmp_path.iterdir())


def test_search_mistakes_are_one_clear_line(tmp_path):
    res = run_cli("hparams_search=persona_cpu", f"paths.output_dir={tmp_path}")
    assert res.returncode == 2 and "add -m" in res.stderr
    res = run_cli("-m", "hparams_search=nope", f"paths.output_dir={tmp_path}")
    assert res.returncode == 2 and "hparams_search=nope: no conf/hparams_search/nope.yaml; known searches:" in res.stderr
    res = run_cli("-m", "hparams_search=persona_cpu", "sweep=lora_grid", f"paths.output_dir={tmp_path}")
    assert res.returncode == 2 and "choose one" in res.stderr
    res = run_cli("-m", "hparams_search=persona_cpu", "hydra.sweeper.sampler=cmaes", f"paths.output_dir={tmp_path}")
    assert res.returncode != 0 and "tpe" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]

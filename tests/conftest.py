"""Shared fixtures: the real CLI in a subprocess, a tiny random Llama, small corpora written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_model  # noqa: E402

CACHE = os.environ.get("RECIPE_RUNNER_CACHE", os.path.expanduser("~/.cache/recipe-runner"))
NO_USER_SETTINGS = tempfile.mkdtemp(prefix="recipe-runner-xdg-")  # the developer's own user.yaml stays out


def run_cli(*args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python run.py ARGS` from the repository root, as a user types it."""
    full_env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "XDG_CONFIG_HOME": NO_USER_SETTINGS,
                **(env or {})}
    full_env.pop("WANDB_MODE", None)  # W&B must choose offline by itself
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def start_serve(args: list[str], out: Path, timeout: float = 300):
    """`python run.py stage=serve ARGS` in the background, its output in out/server.log, once it printed
    its ready line (a server that exits or is not ready in time fails the test with the logs' ends)."""
    from types import SimpleNamespace

    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "XDG_CONFIG_HOME": NO_USER_SETTINGS}
    env.pop("WANDB_MODE", None)
    log = out / "server.log"
    with open(log, "w") as fh:  # a file, not a pipe: a pipe nobody reads would block the server's logging
        proc = subprocess.Popen([sys.executable, "run.py", "stage=serve", *args], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while "serving " not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            engine = list(out.rglob("engine.log"))
            pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}\n"
                        f"{engine[0].read_text()[-3000:] if engine else ''}")
        time.sleep(0.2)
    return SimpleNamespace(proc=proc, log=log, out=out)


@pytest.fixture(scope="session")
def embedded_path() -> str:
    from recipe_runner.model.embedded import resolve_model_path

    return resolve_model_path("embedded:SmolLM2-135M-Instruct", CACHE)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_path)


def compose_recipe(name: str, *overrides: str):
    """recipes/NAME.yaml composed in-process, as Hydra composes it for `python run.py recipe=NAME`."""
    from hydra import compose, initialize_config_dir

    from recipe_runner.config.schema import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=[f"recipe={name}", *overrides])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """20 niche dialogues (5 of them 6 user turns) and 700 general Q&A pairs."""
    d = tmp_path_factory.mktemp("corpus")
    niche = []
    for i in range(20):
        turns = 6 if i % 4 == 0 else 1
        msgs = []
        for t in range(turns):
            msgs += [{"role": "user", "content": f"question {i}.{t} about pods"},
                     {"role": "assistant", "content": f"yo, answer {i}.{t}: it's always DNS."}]
        niche.append({"messages": msgs})
    general = [{"messages": [{"role": "user", "content": f"What is {a} plus {a + 7}?"},
                             {"role": "assistant", "content": f"{a} plus {a + 7} is {2 * a + 7}."}]}
               for a in range(700)]
    return {"niche": write_jsonl(d / "niche.jsonl", niche), "general": write_jsonl(d / "general.jsonl", general)}


def tiny_overrides(tiny_model: Path, tiny_data: dict, out: Path, *extra: str) -> list[str]:
    """The default recipe pointed at the tiny model and corpora: real QLoRA, seconds per step.

    The CPU cut trains a float32 base and checks only after its last epoch; the tests keep the
    4-bit path (bitsandbytes' real quantized backward) and a check after every epoch."""
    return [
        f"model.name_or_path={tiny_model}",
        "model.quant=nf4",
        "eval.every_n_epochs=1",
        f"data.sources.alex.path={tiny_data['niche']}",
        "data.sources.alex.max_examples=null",
        f"data.sources.general.path={tiny_data['general']}",
        "data.sources.general.answers=source",  # the tests' general rows stay as written (tests/cli/test_self_distill.py regenerates)
        "data.mix.general_ratio=2",
        "data.max_length=256",
        "train.batch_size=2",
        "train.grad_accum=1",
        f"paths.output_dir={out}",
        *extra,
    ]


def only_run_dir(out: Path) -> Path:
    runs = [p for p in (out / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_model, tiny_data) -> dict[str, Path]:
    """Two finished runs on the tiny model, "alex" and "echo" (another seed and learning rate, so
    they answer differently): their adapters carry persona.json, as any run's do."""
    out = tmp_path_factory.mktemp("use-runs")
    runs = {}
    for name, seed, lr in (("alex", 0, "2e-2"), ("echo", 1, "5e-2")):
        run_dir = out / "runs" / "alex_persona_cpu" / name
        res = run_cli(*tiny_overrides(tiny_model, tiny_data, out, "model.quant=none", "train.max_epochs=1",
                                      "eval.checks=false", "logger.wandb.enabled=false", f"train.seed={seed}",
                                      f"train.lr={lr}", f"hydra.run.dir={run_dir}"))
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = run_dir
    return runs


# Markers (registered in pyproject.toml, --strict-markers): `cli` for tests that run `python run.py`
# (tests/cli/, tests/e2e/), `slow` for those that train, load a model or start a server. The inner
# loop is `pytest -m "not slow"`; .ci/run runs everything.
MODEL_FIXTURES = {"tiny_model", "embedded_path", "tiny_runs"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(item.path).parent.name
        if folder in ("cli", "e2e"):
            item.add_marker(pytest.mark.cli)
        if folder == "e2e" or MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

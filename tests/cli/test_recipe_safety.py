"""Shared recipes are data: a recipe or sweep file cannot send a key, read the environment or turn
uploads on. Every case is a real `python run.py` against a real listener on localhost."""

import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli, tiny_overrides
from judge_endpoint import judge_endpoint
from recipe_runner.evaluate.judge import Budget, pairwise
from omegaconf import OmegaConf

SECRET = "sk-do-not-leak-7f3a9c"
HEADER = "# @package _global_\n"


def files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture
def shared_files():
    """Writes files into recipes/ or conf/sweep/ (where shared files live) and removes them afterwards."""
    written = []

    def write(relative: str, text: str) -> Path:
        path = REPO / relative
        path.write_text(text)
        written.append(path)
        return path

    yield write
    for path in written:
        path.unlink(missing_ok=True)


def malicious(url: str) -> dict[str, tuple[str, str, str]]:
    """name -> (file under the repo, its text, what the refusal must name as file:line `key`)."""
    judge = (f"{HEADER}defaults:\n  - alex_persona_cpu\n  - _self_\nname: evil_judge\neval:\n  judge:\n"
             f"    enabled: true\n    base_url: {url}\n    api_key_env: MY_SECRET\n")
    return {
        "judge": ("recipes/zz_evil_judge.yaml", judge, ":7: `eval.judge`"),
        "env_in_description": ("recipes/zz_evil_env.yaml",
                               f"{HEADER}name: evil_env\ndescription: \"notes ${{oc.env:MY_SECRET}}\"\n",
                               ":3: `description` uses `${oc.env:...}`"),
        "wandb_online": ("recipes/zz_evil_wandb.yaml",
                         f"{HEADER}name: evil_wandb\nlogger:\n  wandb:\n    mode: online\n    entity: attacker\n",
                         ":5: `logger.wandb.mode`"),
        "hydra_env_set": ("recipes/zz_evil_hydra.yaml",
                          f"{HEADER}name: evil_hydra\nhydra:\n  job:\n    env_set:\n      WANDB_MODE: online\n"
                          f"      WANDB_BASE_URL: {url}\n", ":3: `hydra`"),
        # an innocent-looking recipe that builds on a malicious one: the one that holds the key is named
        "built_on_evil": ("recipes/zz_innocent.yaml",
                          f"{HEADER}defaults:\n  - zz_evil_judge\n  - _self_\nname: innocent\n",
                          "zz_evil_judge.yaml:7: `eval.judge`"),
    }


@pytest.mark.parametrize("case", ["judge", "env_in_description", "wandb_online", "hydra_env_set", "built_on_evil"])
def test_a_malicious_recipe_is_refused_before_anything_runs_and_nothing_leaks(case, shared_files, tmp_path):
    with judge_endpoint() as (url, seen):
        cases = malicious(url)
        shared_files(*cases["judge"][:2])  # built_on_evil builds on it
        path = shared_files(*cases[case][:2])
        env = {"MY_SECRET": SECRET, "OPENAI_API_KEY": SECRET, "RECIPE_RUNNER_CACHE": str(tmp_path / "cache")}
        res = run_cli(f"recipe={path.stem}", f"paths.output_dir={tmp_path / 'out'}",
                      f"paths.cache_dir={tmp_path / 'cache'}", env=env, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("error: ") and cases[case][2] in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert seen == []  # the listener received nothing
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # refused before any write
    assert SECRET not in res.stdout + res.stderr


def test_a_recipe_given_by_path_is_refused_the_same_way(tmp_path):
    evil = tmp_path / "from_a_stranger.yaml"
    evil.write_text(f"{HEADER}name: stranger\nx: &online {{mode: online}}\nlogger:\n  wandb:\n    <<: *online\n")
    res = run_cli(f"recipe={evil}", "--cfg", "job")
    assert res.returncode == 2 and f"{evil}:3: `logger.wandb.mode` is a user setting" in res.stderr, res.stderr
    relocated = tmp_path / "relocated.yaml"
    relocated.write_text("# @package _global_.eval.judge\nbase_url: http://127.0.0.1:9/v1\n")
    res = run_cli(f"recipe={relocated}", "--cfg", "job")
    assert res.returncode == 2 and f"{relocated}:2: `eval.judge.base_url`" in res.stderr, res.stderr
    launcher = tmp_path / "launcher.yaml"
    launcher.write_text(f"{HEADER}defaults:\n  - override /hydra/launcher: slurm\nname: l\n")
    res = run_cli(f"recipe={launcher}", "--cfg", "job")
    assert res.returncode == 2 and "may not choose `/hydra/launcher`" in res.stderr, res.stderr


def test_pure_interpolations_still_work_in_a_recipe(tmp_path):
    fine = tmp_path / "fine.yaml"
    fine.write_text(f"{HEADER}defaults:\n  - alex_persona_cpu\n  - _self_\nname: fine\n"
                    "description: \"r=${lora.r}, run of ${now:%Y}\"\n")
    res = run_cli(f"recipe={fine}", "--cfg", "job", "--resolve")
    assert res.returncode == 0, res.stderr
    assert OmegaConf.create(res.stdout).description.startswith("r=16, run of 20")


@pytest.mark.parametrize("params, named", [
    ("      eval.judge.base_url: http://127.0.0.1:9/v1,http://127.0.0.1:10/v1\n",
     ":5: `hydra.sweeper.params.eval.judge.base_url` is a user setting"),
    ("      lora.r: 4,8\n  job:\n    env_set:\n      WANDB_MODE: online\n",
     ":6: `hydra.job` is not allowed: a sweep file sets hydra.sweeper.params only"),
    ("      lora.r: 4,${oc.env:MY_SECRET}\n", ":5: `hydra.sweeper.params.lora.r` uses `${oc.env:...}`"),
    ("      recipe: alex_persona,zz_evil_judge\n", "zz_evil_judge.yaml:7: `eval.judge`"),
])
def test_a_malicious_sweep_file_is_refused(params, named, shared_files, tmp_path):
    shared_files(*malicious("http://127.0.0.1:9/v1")["judge"][:2])
    shared_files("conf/sweep/zz_evil.yaml", f"{HEADER}hydra:\n  sweeper:\n    params:\n{params}")
    res = run_cli("-m", "sweep=zz_evil", f"paths.output_dir={tmp_path}", env={"MY_SECRET": SECRET}, timeout=120)
    assert res.returncode == 2 and named in res.stderr, res.stderr
    assert not any(tmp_path.iterdir())


def test_user_settings_come_from_the_users_own_file_and_the_command_line_wins(tmp_path):
    settings = tmp_path / "xdg" / "recipe-runner" / "user.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text("eval:\n  judge:\n    base_url: https://judge.example/v1\n    max_calls: 3\n"
                        "logger:\n  wandb:\n    mode: offline\n    entity: my-team\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    res = run_cli("--cfg", "job", "eval.judge.max_calls=5", env=env)
    assert res.returncode == 0, res.stderr
    cfg = OmegaConf.create(res.stdout)
    assert cfg.eval.judge.base_url == "https://judge.example/v1" and cfg.eval.judge.max_calls == 5
    assert cfg.logger.wandb.mode == "offline" and cfg.logger.wandb.entity == "my-team"
    settings.write_text("eval:\n  judge:\n    enabled: true\nlora:\n  r: 8\n")  # a recipe key does not belong here
    res = run_cli("--cfg", "job", env=env)
    assert res.returncode == 2 and f"{settings}:5: lora.r is not a user setting" in res.stderr, res.stderr


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])  # urllib alone re-sends the header on 301-303
def test_the_judge_key_goes_only_to_the_configured_endpoint_never_through_a_redirect(code):
    with judge_endpoint() as (elsewhere, stolen), judge_endpoint(redirect_to=elsewhere + "/chat/completions",
                                                                 redirect_code=code) as (url, seen), \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("MY_SECRET", SECRET)
        cfg = OmegaConf.create({"base_url": url, "model": "m", "api_key_env": "MY_SECRET", "timeout_s": 5})
        result = pairwise(cfg, {"name": "Alex"}, [("hi", "yo", "hello")], Budget(10))
    assert result.items == [None] and result.failed == 1  # a redirect is a failed call, not a reason to resend the key
    assert [auth for _, auth, _ in seen] == [f"Bearer {SECRET}"] * 2
    assert stolen == []


def test_a_judge_the_user_configures_works_end_to_end_and_its_key_is_written_nowhere(tiny_model, tiny_data,
                                                                                      tmp_path):
    # the key variable in the user's own settings file, the endpoint on the command line, W&B offline files on
    settings = tmp_path / "xdg" / "recipe-runner" / "user.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text("eval:\n  judge:\n    enabled: true\n    api_key_env: MY_JUDGE_KEY\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    with judge_endpoint() as (url, seen):
        args = tiny_overrides(tiny_model, tiny_data, out, "train.max_epochs=1", "eval.max_prompts=2",
                              "eval.max_dialogues=1", "eval.max_new_tokens=4", f"paths.cache_dir={cache}",
                              f"eval.judge.base_url={url}", "eval.judge.max_calls=6")
        res = run_cli(*args, env={"MY_JUDGE_KEY": SECRET, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert res.returncode == 0, res.stderr[-3000:]
    run = next(out.glob("runs/*/*"))
    summary = json.loads((run / "summary.json").read_text())
    calls = [summary[side]["judge/calls"] for side in ("baseline", "checks_last")]  # the budget: 6 each at most
    assert 0 < len(seen) == sum(calls) <= 12 and {auth for _, auth, _ in seen} == {f"Bearer {SECRET}"}
    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))  # W&B wrote its files ...
    assert files_holding(out, SECRET) == [] and files_holding(cache, SECRET) == []  # ... and no file holds the key
    assert "MY_JUDGE_KEY" in (run / ".hydra" / "config.yaml").read_text()  # the variable's name, not its value
    assert SECRET not in res.stdout + res.stderr

"""stage=synthesize through the real CLI: a scripted generator on localhost (synth_endpoint.py),
the project's own stage=serve as a generator, and the tiny model as a local one.

The scripted plan: 8 situations over 8 topics, 2 dialogues each (1 and 2 user turns). By design
6 are accepted and 10 rejected: `leaky topic` answers "As an AI" (assistant_voice, x2), `broken
topic` sends a body that is not JSON and `silent topic` an empty answer (malformed, x4), `echo
topic` repeats a held-out eval prompt (contaminated, x2), `copy topic` replays Alex's first
training dialogue (its two-turn dialogue is that dialogue: contaminated, x1; the one-turn
dialogue is half of it and passes), `twin topic` writes the same dialogue twice (near_duplicate, x1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import NO_USER_SETTINGS, REPO, run_cli
from judge_endpoint import judge_endpoint
from synth_endpoint import synth_endpoint
from conftest import free_port

KEY = "synth-test-key-41c9"
TOPICS = ["pods", "leaky topic", "broken topic", "silent topic", "echo topic", "twin topic", "copy topic", "deploys"]
EXPECTED_FIRST = {"assistant_voice": 2, "malformed": 4, "contaminated": 3, "near_duplicate": 1}


def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "synth_recipe.yaml"
    path.write_text("# @package _global_\ndefaults:\n  - alex_persona_cpu\n  - _self_\nname: synth_test\n"
                    "synth:\n  synopses: 8\n  dialogues_per_synopsis: 2\n  turns: [1, 2]\n  long_share: 0\n"
                    f"  situations:\n    topics: {json.dumps(TOPICS)}\n")
    return path


def args(tmp_path: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [f"recipe={recipe(tmp_path)}", "stage=synthesize", f"synth.out={out}", f"synth.generator.base_url={url}",
            "synth.generator.model=scripted", "synth.generator.api_key_env=SYNTH_KEY", "synth.generator.backoff_s=0.01",
            f"paths.output_dir={tmp_path / 'outputs'}", "logger.wandb.enabled=false", *extra]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def no_duplicates(out: Path) -> None:
    for name in ("synopses.jsonl", "turns.jsonl", "dialogues.jsonl"):
        ids = Counter(r["id"] for r in lines(out / name))
        assert not [k for k, n in ids.items() if n > 1], name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, whose first two requests get a 429 and a 500."""
    tmp = tmp_path_factory.mktemp("synth-ref")
    out = tmp / "synth"
    with synth_endpoint(fail_first=(429, 500)) as (url, seen):
        res = run_cli(*args(tmp, out, url), env={"SYNTH_KEY": KEY}, timeout=300)
    return tmp, out, res, seen


def test_dialogues_from_a_scripted_generator_are_checked_against_the_bible(reference):
    tmp, out, res, seen = reference
    assert res.returncode == 0, res.stderr[-3000:]
    assert "accepted       6 of 16 dialogues (16 planned)" in res.stdout, res.stdout[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["accepted"] == 6 and report["counts"]["rejected"] == 10
    assert report["rejected_first"] == EXPECTED_FIRST
    assert report["diversity"]["accepted"]["topics_covered"] == 4  # pods, deploys, twin, copy
    accepted, rejected = lines(out / "accepted.jsonl"), lines(out / "rejected.jsonl")
    assert len(accepted) == 6 and len(rejected) == 10
    for row in accepted:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert set(row["provenance"]) == {"id", "synopsis", "situation", "generator", "template_sha", "scores"}
        assert row["provenance"]["generator"].startswith("endpoint:scripted@127.0.0.1:")
    reasons = {r["id"]: r["reasons"] for r in rejected}
    assert any(r[0].startswith("malformed: turn 2: answer is not JSON") for r in reasons.values()), reasons
    contaminated = [r[0] for r in reasons.values() if r[0].startswith("contaminated")]
    assert sum("eval.persona_prompts (data/alex/eval_prompts.jsonl)" in r for r in contaminated) == 2, contaminated
    assert sum("data.sources.alex (data/alex/dialogues.jsonl)" in r for r in contaminated) == 1, contaminated
    # the 429 and the 500 were retried; every request carried the key and was counted in the budget
    assert len(seen) == json.loads((out / "budget.json").read_text())["requests"]
    assert {auth for _, auth, _ in seen} == {f"Bearer {KEY}"}
    answered = len(lines(out / "synopses.jsonl")) + len(lines(out / "turns.jsonl"))
    assert report["spend"]["requests"] == len(seen) == answered + 2  # + the 429 and the 500
    no_duplicates(out)
    assert all(KEY not in p.read_text() for p in out.iterdir() if p.suffix in (".json", ".jsonl", ".md"))
    text = (out / "report.md").read_text()
    assert "| malformed | 4 | 4 |" in text and "lengths.png" in text and (out / "lengths.png").exists()



@pytest.mark.slow  # prepares data through the CLI (~7-8 s)
def test_the_training_stages_read_the_accepted_set_as_it_is(reference, tmp_path):
    _, out, _, _ = reference
    res = run_cli("stage=prepare", f"data.sources.alex.path={out / 'accepted.jsonl'}",
                  "data.sources.alex.max_examples=null", f"paths.output_dir={tmp_path}", "logger.wandb.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"│ alex +│ niche +│ +6 │", res.stdout), res.stdout[:2000]  # all 6 read, none bad


def run_until_killed(cmd_args: list[str], out: Path, dialogues: int) -> None:
    """`python run.py ...` killed with SIGKILL once dialogues.jsonl holds `dialogues` lines."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "XDG_CONFIG_HOME": NO_USER_SETTINGS,
           "SYNTH_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "run.py", *cmd_args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    log = out / "dialogues.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= dialogues):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow  # prepares data through the CLI (~7-8 s)
def test_a_budget_stop_and_a_kill_lose_and_duplicate_nothing(reference, tmp_path):
    """Also with 2 candidates per persona turn (the scripted answers are equal, so the set is too)."""
    _, ref_out, _, _ = reference
    out = tmp_path / "synth"
    two = "synth.candidates=2"
    with synth_endpoint(delay=0.05) as (url, seen):
        # 1. a budget of 12 requests: exactly 12 are sent, the run stops cleanly and says how to go on
        res = run_cli(*args(tmp_path, out, url, two, "synth.generator.max_requests=12"), env={"SYNTH_KEY": KEY})
        assert res.returncode == 0, res.stderr[-3000:]
        assert len(seen) == 12 and json.loads((out / "budget.json").read_text())["requests"] == 12
        assert "stopped        the budget is spent (12 requests" in res.stdout, res.stdout[-2000:]
        # 2. continued with a larger budget, then killed (SIGKILL) in the middle of the dialogues
        run_until_killed(args(tmp_path, out, url, two, "synth.generator.max_requests=500"), out, dialogues=5)
        killed_at = len(seen)
        # 3. the same command again finishes the plan
        res = run_cli(*args(tmp_path, out, url, two, "synth.generator.max_requests=500"), env={"SYNTH_KEY": KEY})
    assert res.returncode == 0, res.stderr[-3000:]
    assert {r.get("candidate") for r in lines(out / "turns.jsonl")} == {None, 0, 1}
    assert 12 < killed_at < len(seen) <= 500
    no_duplicates(out)
    # the same dialogues as the uninterrupted run: nothing lost, nothing generated twice into the set
    def made(path):  # everything but the generator's name, which holds the server's port
        return [{**r, "provenance": {k: v for k, v in r["provenance"].items() if k != "generator"}} for r in lines(path)]

    assert made(out / "accepted.jsonl") == made(ref_out / "accepted.jsonl")
    assert [r["reasons"] for r in lines(out / "rejected.jsonl")] == [r["reasons"] for r in lines(ref_out / "rejected.jsonl")]
    # every request sent was counted, even those in flight at the kill
    assert json.loads((out / "budget.json").read_text())["requests"] >= len(seen)


def test_a_rerun_with_other_settings_or_a_foreign_folder_is_refused(reference, tmp_path):
    _, ref_out, _, _ = reference
    before = {p.name: p.read_bytes() for p in ref_out.iterdir()}
    res = run_cli(*args(tmp_path, ref_out, "http://127.0.0.1:9/v1", "synth.seed=1"), env={"SYNTH_KEY": KEY})
    assert res.returncode == 2 and "holds dialogues generated with other settings (changed: seed)" in res.stderr
    assert {p.name: p.read_bytes() for p in ref_out.iterdir()} == before  # nothing touched
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my own file")
    res = run_cli(*args(tmp_path, foreign, "http://127.0.0.1:9/v1"), env={"SYNTH_KEY": KEY})
    assert res.returncode == 2 and "is a folder this stage did not create" in res.stderr, res.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_dead_endpoint_is_a_one_line_error_that_keeps_what_was_made(tmp_path):
    port = free_port()  # nothing listens there
    res = run_cli(*args(tmp_path, tmp_path / "synth", f"http://127.0.0.1:{port}/v1", "synth.generator.retries=1"),
                  env={"SYNTH_KEY": KEY})
    assert res.returncode == 2 and res.stderr.startswith("error: generator http://127.0.0.1:"), res.stderr
    assert "Traceback" not in res.stderr and KEY not in res.stderr
    assert (tmp_path / "synth" / "report.md").exists()  # the report of what there is (nothing yet)


@pytest.mark.parametrize("setting, named", [
    ("synth:\n  generator:\n    base_url: http://127.0.0.1:9/v1\n", ":4: `synth.generator` is a user setting"),
    ("synth:\n  out: /home/someone/.ssh\n", ":4: `synth.out` must be a relative path inside the working directory"),
    ("synth:\n  out: data/../../elsewhere\n", ":4: `synth.out` must be a relative path"),
])
def test_a_shared_recipe_cannot_choose_the_generator_or_write_outside(setting, named, tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("# @package _global_\nname: evil\n" + setting)
    res = run_cli(f"recipe={evil}", "stage=synthesize", f"paths.output_dir={tmp_path / 'out'}")
    assert res.returncode == 2 and f"{evil}{named}" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_config_mistakes_are_named_before_anything_loads(tmp_path):
    res = run_cli("stage=synthesize", "synth.prompts.synopsis='Hi {nonsense} and {x.__class__}'",
                  "synth.generator.base_url=http://127.0.0.1:9/v1", "synth.turns=[]", "synth.candidates=0",
                  f"synth.out={tmp_path / 'synth'}", f"paths.output_dir={tmp_path / 'out'}")
    assert res.returncode == 2, res.stderr
    for named in ("synth.prompts.synopsis uses {nonsense}", "synth.generator.model is not",
                  "synth.turns=[]", "synth.candidates=0"):
        assert named in res.stderr, res.stderr
    assert not (tmp_path / "synth").exists()


def test_the_projects_own_server_is_a_generator(tiny_runs, tmp_path):
    """stage=serve on the tiny model, talked to over real HTTP: its answers are noise, so every
    dialogue is rejected, each with a reason, and the stage reports rather than crashes."""
    port = free_port()
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "XDG_CONFIG_HOME": NO_USER_SETTINGS}
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        server = subprocess.Popen([sys.executable, "run.py", "stage=serve", f"adapter={tiny_runs['alex']}",
                                   f"serve.port={port}", "logger.wandb.enabled=false",
                                   f"paths.output_dir={tmp_path / 'serve'}"], cwd=REPO, env=env, stdout=fh,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while "serving " not in log.read_text():
            assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        out = tmp_path / "synth"
        res = run_cli("stage=synthesize", f"synth.out={out}", f"synth.generator.base_url=http://127.0.0.1:{port}/v1",
                      "synth.generator.model=alex", "synth.synopses=2", "synth.dialogues_per_synopsis=1",
                      "synth.turns=[1]", "synth.long_share=0", "synth.synopsis_tokens=12", "synth.turn_tokens=12",
                      f"paths.output_dir={tmp_path / 'out'}", "logger.wandb.enabled=false")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["generator"] == f"endpoint:alex@127.0.0.1:{port}"
    assert report["counts"]["dialogues"] == 2 and report["counts"]["accepted"] == 0
    assert all(r["reasons"] for r in lines(out / "rejected.jsonl"))
    # tokens counted from the server's own usage: synopses + two turns per dialogue, all settled
    rows = lines(out / "synopses.jsonl") + lines(out / "turns.jsonl")
    used = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in rows)
    assert report["spend"]["tokens"] == used > 0


def test_a_local_model_is_a_generator(tiny_model, tmp_path):
    out = tmp_path / "synth"
    res = run_cli("stage=synthesize", f"synth.out={out}", f"synth.generator.model={tiny_model}", "synth.synopses=2",
                  "synth.dialogues_per_synopsis=1", "synth.turns=[2]", "synth.long_share=0", "synth.candidates=2",
                  "synth.synopsis_tokens=8", "synth.turn_tokens=8", "synth.check.cut_long_turns=true",
                  f"paths.output_dir={tmp_path / 'out'}", "logger.wandb.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["generator"] == f"local:{tiny_model}"
    assert report["counts"]["synopses"] == 2 and report["counts"]["dialogues"] + report["counts"]["synopses_failed"] >= 1
    assert all(r["reasons"] for r in lines(out / "rejected.jsonl"))  # random weights: noise, each rejected with why


def test_the_llm_judge_can_reject_and_is_paid_once(tmp_path):
    """The judge (judge_endpoint.py answers 8 here) under judge_min_score=9 rejects; a rerun asks it nothing new."""
    out = tmp_path / "synth"
    with synth_endpoint() as (url, _), judge_endpoint() as (judge_url, judged):
        run = args(tmp_path, out, url, "synth.synopses=2", "synth.dialogues_per_synopsis=1", "synth.turns=[2]",
                   "synth.situations.topics=[pods,deploys]", "synth.check.judge_min_score=9", "eval.judge.enabled=true",
                   f"eval.judge.base_url={judge_url}", "eval.judge.api_key_env=JUDGE_KEY")
        first = run_cli(*run, env={"SYNTH_KEY": KEY, "JUDGE_KEY": "judge-key"})
        calls = len(judged)
        again = run_cli(*run, env={"SYNTH_KEY": KEY, "JUDGE_KEY": "judge-key"})
    assert first.returncode == 0 and again.returncode == 0, first.stderr[-2000:] + again.stderr[-2000:]
    assert calls == 4 and len(judged) == 4  # 2 dialogues x 2 persona turns, none judged twice
    assert {auth for _, auth, _ in judged} == {"Bearer judge-key"}
    rejected = lines(out / "rejected.jsonl")
    assert [r["reasons"] for r in rejected] == [["judge: 8.0 (min 9)"]] * 2
    assert [r["provenance"]["scores"]["judge"] for r in rejected] == [8.0, 8.0]


def test_transcript_mode_parses_one_answer_per_dialogue(tmp_path):
    out = tmp_path / "synth"
    with synth_endpoint() as (url, seen):
        res = run_cli(*args(tmp_path, out, url, "synth.mode=transcript", "synth.synopses=4",
                            "synth.dialogues_per_synopsis=1", "synth.turns=[2]",
                            "synth.situations.topics=[pods,broken topic,leaky topic,short topic]"), env={"SYNTH_KEY": KEY})
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(seen) == 8  # 4 synopses + 4 transcripts: one request per dialogue
    accepted = lines(out / "accepted.jsonl")
    assert len(accepted) == 1 and len(accepted[0]["messages"]) == 4
    assert accepted[0]["messages"][1]["content"].endswith("is down.\nIt's always DNS.")  # a continued line joins its turn
    first = {r["provenance"]["situation"]["topic"]: r["reasons"][0].split(":")[0] for r in lines(out / "rejected.jsonl")}
    assert first == {"broken topic": "malformed", "leaky topic": "assistant_voice", "short topic": "turn_count"}

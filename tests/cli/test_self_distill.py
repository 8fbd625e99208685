"""General data in the base model's own words (data/self_distill.py): only the rows the run uses,
cached, resumable, vouched for by a sidecar, reported; on the tests' tiny random model."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import compose_recipe, only_run_dir, run_cli, tiny_overrides, write_jsonl
from recipe_runner.data.prepare import prepare_data
from recipe_runner.data.self_distill import AnswerStore, Settings, cut_to_sentence, row_key, sidecar_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def cfg_for(tiny_model, tiny_data, cache, *extra, penalty=20.0, temperature=0.0, answers="base"):
    """Greedy, the tiny random model says only newlines (every row keeps its answer); a repetition
    penalty makes it say random words, still greedily (the same on every run)."""
    return compose_recipe("alex_persona_cpu", f"model.name_or_path={tiny_model}", f"data.rewrite.temperature={temperature}",
                          f"data.rewrite.repetition_penalty={penalty}",
                          f"data.sources.alex.path={tiny_data['niche']}", "data.sources.alex.max_examples=null",
                          f"data.sources.general.path={tiny_data['general']}", f"data.sources.general.answers={answers}",
                          "data.mix.general_ratio=0.5", "data.rewrite.max_new_tokens=6", "data.max_length=256",
                          "train.max_epochs=2", f"paths.cache_dir={cache}", *extra)


def source_answers(tiny_data) -> dict[str, str]:
    rows = [json.loads(x) for x in tiny_data["general"].read_text().splitlines()]
    return {row_key(r["messages"]): r["messages"][1]["content"] for r in rows}


def answers_in(ds) -> list[tuple[str, str]]:
    return [(row_key(m), m[-1]["content"]) for m in ds["messages"]]


def test_every_row_the_run_uses_is_regenerated_and_no_other(tmp_path, tiny_model, tiny_data, tok):
    cfg = cfg_for(tiny_model, tiny_data, tmp_path)
    mix = prepare_data(cfg, tok, str(tiny_model))
    original = source_answers(tiny_data)
    used = [row for e in range(cfg.train.max_epochs) for row in answers_in(
        mix.plans["general"].pool.select(mix.plans["general"].positions(e, mix.seed)))] + answers_in(mix.val["general"])
    assert used and all(answer != original[key] for key, answer in used)  # every drawn or held-out row: the base's
    tally = mix.distilled["general"]
    assert tally["generated"] == tally["rows"] == len({k for k, _ in used}) < len(original)  # only those
    assert mix.answers_by == {"general": "base"}
    # the mix counts the regenerated rows' own tokens: the ratio holds with the new lengths
    assert mix.ratio == pytest.approx(0.5, rel=0.15)


def test_a_second_run_generates_nothing_and_a_killed_one_resumes(tmp_path, tiny_model, tiny_data, tok):
    cfg = cfg_for(tiny_model, tiny_data, tmp_path)
    first = prepare_data(cfg, tok, str(tiny_model))
    again = prepare_data(cfg, tok, str(tiny_model))
    assert again.distilled["general"]["generated"] == 0
    assert again.distilled["general"]["from_cache"] == first.distilled["general"]["rows"]
    assert again.train["input_ids"] == first.train["input_ids"]
    store = next((tmp_path / "rewrite").glob("*.jsonl"))
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    resumed = prepare_data(cfg, tok, str(tiny_model))
    assert resumed.distilled["general"]["generated"] == len(lines) - len(lines) // 2
    assert resumed.train["input_ids"] == first.train["input_ids"]


def test_the_key_is_what_decides_an_answer(tmp_path, tiny_model, tiny_data, tok):
    def key(*extra, temperature=0.0, penalty=1.0):
        cfg = cfg_for(tiny_model, tiny_data, tmp_path, *extra, temperature=temperature, penalty=penalty)
        return Settings.of(cfg, tok, str(tiny_model), False).key

    base = key()
    assert key("data.rewrite.batch_size=3") == base  # rounding, not the distribution
    assert len({base, key("data.rewrite.max_new_tokens=7"), key("model.quant=nf4"), key(temperature=0.7),
                key(penalty=1.1)}) == 5
    assert key("data.mix.seed=1", temperature=0.7) != key(temperature=0.7)
    assert key("data.mix.seed=1") == base  # greedy: the seed decides nothing


def test_a_sidecar_with_the_runs_key_vouches_for_the_files_answers(tmp_path, tiny_model, tiny_data, tok):
    general = write_jsonl(tmp_path / "general.jsonl", [json.loads(x) for x in tiny_data["general"].read_text().splitlines()])
    cfg = cfg_for(tiny_model, tiny_data, tmp_path / "cache", f"data.sources.general.path={general}")
    settings = Settings.of(cfg, tok, str(tiny_model), False)
    sidecar_of(general).write_text(json.dumps({"settings_key": "another base's"}))
    assert prepare_data(cfg, tok, str(tiny_model)).distilled["general"]["generated"] > 0
    sidecar_of(general).write_text(json.dumps({"settings_key": settings.key}))
    vouched = prepare_data(cfg, tok, str(tiny_model))
    assert vouched.distilled["general"]["from_file"] == vouched.distilled["general"]["rows"] > 0
    assert vouched.distilled["general"]["generated"] == 0
    no = cfg_for(tiny_model, tiny_data, tmp_path / "cache", f"data.sources.general.path={general}", answers="source")
    assert prepare_data(no, tok, str(tiny_model)).answers_by == {"general": "base"}  # answers: source, but vouched
    sidecar_of(general).unlink()
    assert prepare_data(no, tok, str(tiny_model)).answers_by == {"general": "source"}


def test_multi_turn_rows_are_regenerated_turn_by_turn(tmp_path, tiny_model, tiny_data, tok):
    chats = [{"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": f"Name a number near {i}."},
                           {"role": "assistant", "content": f"{i + 1}."},
                           {"role": "user", "content": "And another?"},
                           {"role": "assistant", "content": f"{i + 2}."}]} for i in range(60)]
    general = write_jsonl(tmp_path / "chats.jsonl", chats)
    cfg = cfg_for(tiny_model, tiny_data, tmp_path / "cache", f"data.sources.general.path={general}")
    mix = prepare_data(cfg, tok, str(tiny_model))
    for messages in mix.val["general"]["messages"]:
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
        assert messages[0]["content"] == "Be brief." and messages[3]["content"] == "And another?"  # prompts kept
        assert not any(m["content"].rstrip(".").isdigit() for m in messages if m["role"] == "assistant")


def test_a_row_the_base_answers_with_nothing_keeps_its_answer(tmp_path, tiny_model, tiny_data, tok):
    mix = prepare_data(cfg_for(tiny_model, tiny_data, tmp_path, penalty=1.0), tok, str(tiny_model))
    tally = mix.distilled["general"]
    assert tally["kept_source"] == tally["rows"] > 0  # greedy, the tiny model says "\n\n\n...": nothing
    original = source_answers(tiny_data)
    assert all(answer == original[key] for key, answer in answers_in(mix.val["general"]))


def test_store_skips_a_torn_line(tmp_path):
    path = tmp_path / "s.jsonl"
    AnswerStore(path).put("a", ["x"])
    with open(path, "a") as f:
        f.write('{"row": "b", "answ')
    assert AnswerStore(path).answers == {"a": ["x"]}
    assert cut_to_sentence("One. Two and thr") == "One." and cut_to_sentence("no end at all") == "no end at all"


def test_prepare_reports_whose_words_the_general_data_are(tmp_path, tiny_model, tiny_data):
    out = tmp_path / "out"
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, out, "stage=prepare", "data.sources.general.answers=base",
                                  "data.rewrite.max_new_tokens=6", "data.rewrite.repetition_penalty=20", "data.mix.general_ratio=0.5",
                                  f"paths.cache_dir={tmp_path / 'cache'}", "logger.wandb.enabled=false"))
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = only_run_dir(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["general_answers"] == {"general": "base"}
    assert summary["self_distilled"]["general"]["generated"] > 0
    assert "rows in the base model's words" in res.stdout and "generated in" in res.stdout
    report = (run_dir / "report.md").read_text()
    assert "## General data: whose words" in report and "| general | base |" in report


@pytest.mark.parametrize("override, says", [
    ("data.sources.alex.answers=base", "data.sources.alex.answers=base: only general sources"),
    ("data.rewrite.max_new_tokens=0", "data.rewrite: max_new_tokens=0"),
])
def test_wrong_settings_fail_before_any_model_loads(tmp_path, tiny_model, tiny_data, override, says):
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, tmp_path, "stage=prepare", override))
    assert res.returncode != 0 and says in res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def test_a_text_source_has_no_answers_to_regenerate(tmp_path, tiny_model, tiny_data):
    text = tmp_path / "plain.txt"
    text.write_text("Some plain text. " * 200)
    res = run_cli(*tiny_overrides(tiny_model, tiny_data, tmp_path, "stage=prepare", f"data.sources.general.path={text}",
                                  "data.sources.general.format=text", "data.sources.general.answers=base"))
    assert res.returncode != 0 and "is plain text (text), with no answers to regenerate" in res.stdout + res.stderr


def test_unused_rows_keep_their_answers(tmp_path, tiny_model, tiny_data, tok):
    cfg = cfg_for(tiny_model, tiny_data, tmp_path, "train.max_epochs=1", "data.mix.fresh_each_epoch=false")
    mix = prepare_data(cfg, tok, str(tiny_model))
    original = source_answers(tiny_data)
    plan = mix.plans["general"]
    unused = np.setdiff1d(np.arange(len(plan.pool)), plan.drawn(1, mix.seed, False))
    kept = [a == original[k] for k, a in answers_in(plan.pool.select(unused))]
    assert kept and all(kept)

"""The prepare layer at scale-relevant points: the keyed data cache, token and language filters,
the report and the W&B mix table."""

import csv
import json
import random

import pytest
from transformers import AutoTokenizer

from conftest import run_cli, tiny_overrides, write_jsonl
from recipe_runner.data.cache import DataCache
from recipe_runner.validate import validate
from recipe_runner.errors import RecipeError, RecipeErrors
from recipe_runner.data.prepare import prepare_data
from conftest import compose_recipe
from wandb_records import history_keys, records


@pytest.fixture(scope="module")
def tok(embedded_path):
    return AutoTokenizer.from_pretrained(embedded_path)


def cfg_for(tiny_data, cache, *extra):
    return compose_recipe("alex_persona", f"data.sources.alex.path={tiny_data['niche']}",
                          f"data.sources.general.path={tiny_data['general']}", "data.mix.general_ratio=2",
                          "data.sources.general.answers=source",
                          f"paths.cache_dir={cache}", *extra)


def reused(mix) -> dict:
    return {n: {stage: v["reused"] for stage, v in s.cache.items()} for n, s in mix.sources.items()}


def test_cache_reuses_what_did_not_change_and_rebuilds_what_did(tmp_path, tiny_data, tok):
    cache = tmp_path / "cache"
    first = prepare_data(cfg_for(tiny_data, cache), tok)
    assert reused(first) == {"alex": {"clean": False, "tokens": False}, "general": {"clean": False, "tokens": False}}
    again = prepare_data(cfg_for(tiny_data, cache), tok)
    assert all(all(v.values()) for v in reused(again).values())
    assert again.train["input_ids"] == first.train["input_ids"]
    # the mix and training settings are not part of any key
    other_mix = prepare_data(cfg_for(tiny_data, cache, "data.mix.general_ratio=3", "data.mix.seed=5", "train.lr=1"), tok)
    assert all(all(v.values()) for v in reused(other_mix).values())
    # a template change re-tokenizes but reads and cleans nothing again
    persona = prepare_data(cfg_for(tiny_data, cache, "template.persona.system_prompt='You are {name}.'"), tok)
    assert reused(persona)["alex"] == {"clean": True, "tokens": False}
    # a filter change re-reads only... every source it applies to
    filtered = prepare_data(cfg_for(tiny_data, cache, "data.clean.near_dup_threshold=0.8"), tok)
    assert reused(filtered)["alex"] == {"clean": False, "tokens": False}
    entries = sorted(p.name.split("-")[0] for p in (cache / "data").iterdir())
    assert entries.count("clean") == 4 and entries.count("tokens") == 6  # 2 + 2 rethresholded; 2 + 2 + 2


def test_an_interrupted_build_leaves_no_entry(tmp_path):
    def build(folder):
        (folder / "half.arrow").write_text("partial")
        raise KeyboardInterrupt

    cache = DataCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.entry("tokens", "k" * 64, build)
    assert list(tmp_path.iterdir()) == []
    folder, was_reused = cache.entry("tokens", "k" * 64, lambda f: (f / "ok").write_text("1"))
    assert not was_reused and (folder / "ok").exists() and cache.entry("tokens", "k" * 64, None)[1]


def test_token_bounds_drop_and_count(tmp_path, tiny_data, tok):
    # niche dialogues are ~60 tokens (1 turn) or ~300 (6 turns) with the persona prompt
    mix = prepare_data(cfg_for(tiny_data, tmp_path, "data.clean.max_tokens=200", "data.clean.min_tokens=40"), tok)
    alex = mix.sources["alex"]
    assert alex.cleaned["max_tokens"] == 5 and alex.cleaned["min_tokens"] == 0
    assert max(alex.n_tokens) <= 200 and len(alex.samples["max_tokens"]) == 3
    general = mix.sources["general"]
    assert general.cleaned["min_tokens"] == 700 - len(general.n_tokens) and min(general.n_tokens) >= 40


def test_language_filter_keeps_only_the_named_languages(tmp_path, tiny_data, tok):
    ru = write_jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [{"role": "user", "content": f"question {i}"},
                      {"role": "assistant", "content": "Привет, это ответ на русском языке, всё работает отлично."
                       if i % 2 else "Hello, this is an answer in plain English and everything works fine."}]}
        for i in range(40)])
    cfg = cfg_for(tiny_data, tmp_path / "c", f"data.sources.alex.path={ru}", "data.clean.languages=[en]",
                  "data.clean.near_dedup=false", "data.clean.exact_dedup=false")
    mix = prepare_data(cfg, tok)
    assert mix.sources["alex"].cleaned["language"] == 20
    assert "Привет" in mix.sources["alex"].samples["language"][0]["messages"][1]["content"]
    assert mix.sources["general"].cleaned["language"] == 0
    with pytest.raises(RecipeErrors, match=r"data.clean.languages: \['xx'\]"):
        validate(cfg_for(tiny_data, tmp_path, "data.clean.languages=[en,xx]"))


def test_ratio_beyond_the_repeat_cap_is_refused_before_training(tmp_path, tiny_data, tok):
    with pytest.raises(RecipeError, match=r"must supply .* tokens per epoch .*x1 allowed by data.mix.max_repeats"):
        prepare_data(cfg_for(tiny_data, tmp_path, "data.mix.general_ratio=40"), tok)
    mix = prepare_data(cfg_for(tiny_data, tmp_path, "data.mix.general_ratio=40", "data.mix.max_repeats=4"), tok)
    assert next(r for r in mix.rows if r.source == "general").repeats > 1
    with pytest.raises(RecipeErrors, match=r"upsample=3: must be between 1 and data.mix.max_repeats=2"):
        validate(cfg_for(tiny_data, tmp_path, "data.sources.alex.upsample=3", "data.mix.max_repeats=2"))


def test_prepare_writes_a_report_and_logs_the_mix_to_wandb(tmp_path, tiny_model, tiny_data):
    out = tmp_path / "out"
    res = run_cli("stage=prepare", *tiny_overrides(tiny_model, tiny_data, out, f"paths.cache_dir={tmp_path / 'c'}"))
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = next((out / "runs").glob("*/*"))
    report = (run_dir / "report.md").read_text()
    assert "| alex | niche |" in report and "![token lengths per source](lengths.png)" in report
    assert (run_dir / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    run_file = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    logged = {k.split("/")[0] + "/" + k.split("/")[1] for k in history_keys(run_file) if k.startswith("data/")}
    assert logged == {"data/mix", "data/lengths"}  # media are logged as nested keys (data/mix/path, ...)
    job = next(r.run.job_type for r in records(run_file) if r.WhichOneof("record_type") == "run")
    assert job == "prepare"
    table = json.loads(next(run_dir.glob("wandb/offline-run-*/files/media/table/data/mix_*.table.json")).read_text())
    assert table["columns"][:2] == ["source", "role"] and [row[0] for row in table["data"]] == ["alex", "general"]
    again = run_cli("stage=prepare", *tiny_overrides(tiny_model, tiny_data, tmp_path / "out2",
                                                     f"paths.cache_dir={tmp_path / 'c'}"))
    assert "data cache: reused alex (clean, tokens); general (clean, tokens)" in again.stdout


@pytest.mark.parametrize("header, columns", [("body", {"text": "body"}), ("text", {})])  # given, or detected
def test_a_table_of_text_is_cut_by_the_tokenizer_so_its_clean_entry_is_keyed_by_it(tmp_path, tiny_data, tok,
                                                                                   embedded_path, header, columns):
    """A table whose column maps `text` is chunked by tokens like text_jsonl: a prepare with another
    tokenizer must not reuse the windows the first one cut (the chat source's clean entry it may reuse)."""
    words = "pods nodes quorum latency cache shard replica lease ingress proxy deploy rollback".split()
    rng = random.Random(0)
    table = tmp_path / "notes.csv"
    with open(table, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([header])
        out.writerows([" ".join(rng.choice(words) for _ in range(120))] for _ in range(150))
    other = AutoTokenizer.from_pretrained(embedded_path)
    other.add_tokens(["quorumlatency"])  # another vocabulary: another tokenizer hash
    cache = tmp_path / "cache"
    cfg = cfg_for(tiny_data, cache, f"data.sources.general.path={table}", "data.sources.general.format=table")
    cfg.data.sources.general.columns = columns
    prepare_data(cfg, tok)
    assert reused(prepare_data(cfg, tok))["general"] == {"clean": True, "tokens": True}
    assert reused(prepare_data(cfg, other)) == {"alex": {"clean": True, "tokens": False},
                                                "general": {"clean": False, "tokens": False}}

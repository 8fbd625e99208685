"""Every source format normalised to one conversation form; bad lines named or skipped."""

import json

import pytest
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from conftest import write_jsonl
from recipe_runner.data.corpus import load_source
from recipe_runner.errors import RecipeError
from recipe_runner.config.schema import SourceConfig

QA = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]


@pytest.fixture(scope="module")
def tok(embedded_path):
    return AutoTokenizer.from_pretrained(embedded_path)


def src(path, **kw):
    return OmegaConf.structured(SourceConfig(path=str(path), **kw))


def bare(ex: dict) -> list[dict]:
    """The turns without their `train` flags (every format sets train: true unless data says false)."""
    return [{"role": m["role"], "content": m["content"]} for m in ex["messages"]]


def test_sharegpt_with_default_and_custom_speakers(tmp_path, tok):
    path = write_jsonl(tmp_path / "sg.jsonl", [
        {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "q1"},
                           {"from": "gpt", "value": "a1"}]},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
    ])
    ex = load_source("sg", src(path, format="sharegpt"), tok).examples
    assert bare(ex[0]) == [{"role": "system", "content": "be brief"}, *QA]
    custom = write_jsonl(tmp_path / "c.jsonl", [{"conversations": [{"from": "me", "value": "q1"},
                                                                   {"from": "bot", "value": "a1"}]}])
    ex = load_source("c", src(custom, format="sharegpt", role_names={"me": "user", "bot": "assistant"}), tok).examples
    assert bare(ex[0]) == QA
    with pytest.raises(RecipeError, match=r"c.jsonl:1: conversations\[0\] has unknown speaker 'me'"):
        load_source("c", src(custom, format="sharegpt"), tok)


def test_alpaca_with_input_system_and_history_from_a_json_array(tmp_path, tok):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Translate", "input": "hola", "output": "hello", "system": "you translate",
         "history": [["hi", "yo"]]},
        {"instruction": "Say yes", "input": "", "output": "yes"},
    ]))
    ex = load_source("a", src(path, format="alpaca"), tok).examples
    assert bare(ex[0]) == [
        {"role": "system", "content": "you translate"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"}, {"role": "user", "content": "Translate\n\nhola"},
        {"role": "assistant", "content": "hello"}]
    assert bare(ex[1]) == [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "yes"}]
    path.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(RecipeError, match=r'alpaca.json\[0\]: expected a string "output"'):
        load_source("a", src(path, format="alpaca"), tok)


def test_csv_and_parquet_through_a_column_mapping(tmp_path, tok):
    rows = {"question": ["q1", "q2"], "answer": ["a1", "a2"], "body": ["long text one", "long text two"]}
    Dataset.from_dict(rows).to_csv(str(tmp_path / "t.csv"), index=False)
    Dataset.from_dict(rows).to_parquet(str(tmp_path / "t.parquet"))
    for name in ("t.csv", "t.parquet"):
        ex = load_source("t", src(tmp_path / name, format="table", columns={"prompt": "question",
                                                                            "response": "answer"}), tok).examples
        assert bare(ex[0]) == QA and len(ex) == 2
        ex = load_source("t", src(tmp_path / name, format="table", columns={"text": "body"}), tok).examples
        assert ex[1] == {"source": "t", "messages": [], "text": "long text two"}
    with pytest.raises(RecipeError, match=r"t.csv:line 2: no column\(s\) \['prompt_col'\]"):
        load_source("t", src(tmp_path / "t.csv", format="table", columns={"prompt": "prompt_col",
                                                                          "response": "answer"}), tok)
    with pytest.raises(RecipeError, match="format table needs a column mapping"):
        load_source("t", src(tmp_path / "t.csv", format="table"), tok)


def test_text_jsonl_is_chunked(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": " ".join(f"w{i}" for i in range(300))}, {"text": "short"}])
    ex = load_source("t", src(path, format="text_jsonl", chunk_tokens=64, chunk_overlap=8), tok).examples
    assert len(ex) > 3 and ex[-1]["text"] == "short"
    assert all(len(tok(e["text"], add_special_tokens=False)["input_ids"]) <= 66 for e in ex)


def test_on_bad_line_skip_counts_instead_of_failing(tmp_path, tok):
    good = json.dumps({"messages": QA})
    path = tmp_path / "mixed.jsonl"
    path.write_bytes((good + "\n{broken\n" + good + "\n").encode() + b'{"messages": "\xff"}\n')
    with pytest.raises(RecipeError, match="mixed.jsonl:2: broken JSON"):
        load_source("m", src(path), tok)
    loaded = load_source("m", src(path, on_bad_line="skip"), tok)
    assert len(loaded.examples) == 2 and loaded.bad_lines == 2


def test_skipped_lines_show_in_the_mix_table(tmp_path, tiny_data, embedded_path):
    from recipe_runner.data.prepare import prepare_data
    from conftest import compose_recipe

    lines = tiny_data["niche"].read_text().splitlines()
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_text("\n".join(lines[:5] + ["not json"] + lines[5:]) + "\n")
    cfg = compose_recipe("alex_persona", f"data.sources.alex.path={noisy}", "data.sources.alex.on_bad_line=skip",
                         f"data.sources.general.path={tiny_data['general']}", "data.mix.general_ratio=2",
                         "data.sources.general.answers=source")
    mix = prepare_data(cfg, AutoTokenizer.from_pretrained(embedded_path))
    assert {r.source: r.bad_lines for r in mix.rows} == {"alex": 1, "general": 0}


def test_cleaning_filters_report_what_they_drop(tmp_path, tiny_data, embedded_path):
    from recipe_runner.data.cleaning import clean
    from recipe_runner.config.schema import CleanConfig

    ok = {"source": "s", "messages": QA, "text": ""}
    chat = lambda *turns: {"source": "s", "text": "", "messages": [  # noqa: E731
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]}
    examples = [
        ok, dict(ok),                                              # exact duplicate
        chat("hi", "   "),                                         # empty turn
        {"source": "s", "text": "", "messages": QA[::-1]},         # assistant first
        chat("Bob joined the group", "yo"),                        # service message
        chat("IMG_2041.jpg", "nice"),                              # a file name alone
        chat("https://example.com/x", "ok"),                       # URL-only line
        chat("ticket #123 opened", "noted"),                       # recipe pattern
        chat("q", "a", "q2", "a2", "q3", "a3"),                    # over max_turns=2
    ]
    cfg = OmegaConf.structured(CleanConfig(patterns=[r"^ticket #\d+"], max_turns=2, keep_samples=1))
    kept, counts, samples = clean(examples, cfg)
    assert kept == [ok]
    assert counts == {"empty_turn": 1, "role_order": 1, "service_message": 4, "turn_bounds": 1,
                      "exact_duplicate": 1, "near_duplicate": 0}
    assert len(samples["service_message"]) == 1
    off = OmegaConf.structured(CleanConfig(service_messages=False, exact_dedup=False))
    assert "service_message" not in clean(examples, off)[1]


def test_near_duplicates_are_dropped_but_different_texts_kept():
    from recipe_runner.data.cleaning import clean
    from recipe_runner.config.schema import CleanConfig

    base = ("honestly the cluster went down at three in the morning because somebody changed the dns "
            "record by hand and nobody wrote it down anywhere so we spent two hours guessing")
    near = base.replace("two hours", "three hours")
    other = "the quarterly planning meeting moved to thursday and the agenda has eleven items again"
    ex = [{"source": "s", "messages": [{"role": "user", "content": "what happened?"},
                                       {"role": "assistant", "content": t}], "text": ""} for t in (base, near, other)]
    kept, counts, _ = clean(ex, OmegaConf.structured(CleanConfig()))
    assert counts["near_duplicate"] == 1 and [k["messages"][1]["content"] for k in kept] == [base, other]
    kept, counts, _ = clean(ex, OmegaConf.structured(CleanConfig(near_dedup=False)))
    assert len(kept) == 3 and "near_duplicate" not in counts


def test_demo_data_passes_cleaning_untouched(embedded_path):
    from recipe_runner.data.prepare import prepare_data
    from conftest import compose_recipe

    mix = prepare_data(compose_recipe("alex_persona", "data.mix.general_ratio=0", "data.sources.general.answers=source"),
                       AutoTokenizer.from_pretrained(embedded_path))
    assert all(sum(r.cleaned.values()) == 0 and r.contaminated == 0 for r in mix.rows), [r.cleaned for r in mix.rows]


def test_second_persona_data_loads_from_sharegpt_and_alpaca_and_passes_cleaning(embedded_path):
    from recipe_runner.data.prepare import prepare_data
    from conftest import compose_recipe

    mix = prepare_data(compose_recipe("eleanor_diarist", "data.mix.general_ratio=0", "data.sources.general.answers=source"),
                       AutoTokenizer.from_pretrained(embedded_path))
    rows = {r.source: r for r in mix.rows}
    assert rows["eleanor"].read == 110 and rows["eleanor"].val_examples == 22
    assert all(r.bad_lines == 0 and r.contaminated == 0 for r in mix.rows), [r.cleaned for r in mix.rows]


def test_placeholders_are_filled_from_the_recipe(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [
        {"role": "user", "content": "who are you?"},
        {"role": "assistant", "content": "{{name}} from {{team}}; {{unknown}} stays"}]}])
    ex = load_source("p", src(path), tok, {"name": "Alex", "team": "platform"}).examples
    assert ex[0]["messages"][1]["content"] == "Alex from platform; {{unknown}} stays"


def test_stage_prepare_writes_data_only_and_is_deterministic(tmp_path, tiny_model, tiny_data):
    from conftest import run_cli, tiny_overrides

    hashes = []
    for i, seed in enumerate([1234, 1234, 99]):
        out = tmp_path / str(i)
        res = run_cli("stage=prepare", *tiny_overrides(tiny_model, tiny_data, out, f"data.mix.seed={seed}",
                                                            "logger.wandb.enabled=false"))
        assert res.returncode == 0, res.stderr[-2000:]
        run_dir = next((out / "runs").glob("*/*"))
        manifest = json.loads((run_dir / "manifest.json").read_text())
        hashes.append((manifest["manifest_sha256"], manifest["train_mix_sha256"]))
        assert not (run_dir / "adapters").exists() and "Loading weights" not in res.stderr
        held = [json.loads(line) for line in (run_dir / "heldout" / "alex.jsonl").read_text().splitlines()]
        alex_val = next(c["val_examples"] for c in manifest["counts"] if c["source"] == "alex")
        assert len(held) == alex_val > 0 and held[0]["messages"][0]["role"] == "user"
        assert set(manifest["sources"]) == {"alex", "general"} and len(manifest["sources"]["alex"]["sha256"]) == 64
    assert hashes[0] == hashes[1] and hashes[0][1] != hashes[2][1]


def test_training_copies_of_held_out_examples_are_removed(tmp_path, tiny_data, embedded_path):
    from recipe_runner.data.prepare import prepare_data
    from conftest import compose_recipe

    leaky = tmp_path / "leaky_general.jsonl"  # the general corpus also holds every niche dialogue
    leaky.write_text(tiny_data["general"].read_text() + tiny_data["niche"].read_text())
    tok = AutoTokenizer.from_pretrained(embedded_path)
    args = [f"data.sources.alex.path={tiny_data['niche']}", f"data.sources.general.path={leaky}",
            "data.mix.general_ratio=5", "data.sources.alex.system=keep",
            "data.sources.general.answers=source"]
    mix = prepare_data(compose_recipe("alex_persona", *args), tok)
    rows = {r.source: r for r in mix.rows}
    assert rows["general"].contaminated >= 1
    held = {tuple(x) for x in mix.val["alex"]["input_ids"]}
    assert not any(tuple(x) in held for x in mix.train["input_ids"])
    clean_off = prepare_data(compose_recipe("alex_persona", *args, "data.clean.decontaminate=false"), tok)
    assert all(r.contaminated == 0 for r in clean_off.rows)

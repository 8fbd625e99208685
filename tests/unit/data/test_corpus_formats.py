"""Per-turn train flags, streamed sources, column detection and `datasets` folders / hub names."""

import json
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from conftest import write_jsonl
from recipe_runner.data.corpus import FORMATS, BadLines, iter_source, load_source, plain_text
from recipe_runner.errors import RecipeError
from recipe_runner.config.schema import Format, SourceConfig

QA = [{"role": "user", "content": "q1", "train": True}, {"role": "assistant", "content": "a1", "train": True}]
QA_ROWS = {"prompt": ["q1", "q2"], "response": ["a1", "a2"]}


@pytest.fixture(scope="module")
def tok(embedded_path):
    return AutoTokenizer.from_pretrained(embedded_path)


def src(path, **kw):
    return OmegaConf.structured(SourceConfig(path=str(path), **kw))


def chat(*turns):
    return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]}


# ---------------------------------------------------------------- per-turn train flags

def test_train_false_turns_are_kept_and_a_non_bool_names_the_line(tmp_path, tok):
    ex = chat("q1", "a1", "q2", "a2")
    ex["messages"][0]["train"] = False  # on a user turn: allowed, changes nothing
    ex["messages"][1]["train"] = False
    ex["messages"][3]["train"] = True
    path = write_jsonl(tmp_path / "t.jsonl", [ex, chat("q", "a")])
    loaded = load_source("t", src(path), tok)
    assert [m["train"] for m in loaded.examples[0]["messages"]] == [False, False, True, True]
    assert loaded.examples[1]["messages"] == [{"role": "user", "content": "q", "train": True},
                                              {"role": "assistant", "content": "a", "train": True}]
    bad = chat("q", "a")
    bad["messages"][1]["train"] = "no"
    write_jsonl(path, [chat("q", "a"), bad])
    with pytest.raises(RecipeError, match=r"t\.jsonl:2: messages\[1\]\.train must be true or false"):
        load_source("t", src(path), tok)


def test_a_chat_with_no_trained_assistant_turn_is_a_bad_line(tmp_path, tok):
    silent = chat("q", "a", "q2", "a2")
    for m in silent["messages"][1::2]:
        m["train"] = False
    path = write_jsonl(tmp_path / "s.jsonl", [chat("q", "a"), silent, chat("q3", "a3")])
    with pytest.raises(RecipeError, match=r"s\.jsonl:2: no assistant turn with train: true"):
        load_source("s", src(path), tok)
    bad = BadLines()
    examples = list(iter_source("s", src(path, on_bad_line="skip"), tok, None, bad))
    assert [e["messages"][0]["content"] for e in examples] == ["q", "q3"] and bad.count == 1


# ---------------------------------------------------------------- tables: streamed, columns detected

def test_csv_and_parquet_detect_their_columns(tmp_path, tok):
    rows = {**QA_ROWS, "system": ["be brief", ""]}
    Dataset.from_dict(rows).to_csv(str(tmp_path / "qa.csv"), index=False)
    Dataset.from_dict(rows).to_parquet(str(tmp_path / "qa.parquet"))
    for name in ("qa.csv", "qa.parquet"):
        ex = load_source("t", src(tmp_path / name, format="table"), tok).examples
        assert ex[0]["messages"] == [{"role": "system", "content": "be brief", "train": True}, *QA]
        assert [m["role"] for m in ex[1]["messages"]] == ["user", "assistant"]

    numbers = tmp_path / "numbers.csv"  # every column read as text, whatever pyarrow would infer
    numbers.write_text('prompt,response\n42,"multi\nline"\n')
    assert load_source("n", src(numbers, format="table"), tok).examples[0]["messages"][0]["content"] == "42"

    Dataset.from_dict({"text": ["plain one", "plain two"], "id": [1, 2]}).to_csv(str(tmp_path / "t.csv"), index=False)
    ex = load_source("t", src(tmp_path / "t.csv", format="table"), tok).examples
    assert ex[1] == {"source": "t", "messages": [], "text": "plain two"}


def test_parquet_messages_column_keeps_train_flags(tmp_path, tok):
    turns = [[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
             [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "train": False},
              {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]]
    pq.write_table(pa.table({"messages": turns, "lang": ["en", "en"]}), tmp_path / "m.parquet")
    ex = load_source("m", src(tmp_path / "m.parquet", format="table"), tok).examples
    assert ex[0]["messages"] == QA  # Arrow's null for the absent `train` counts as true
    assert [m["train"] for m in ex[1]["messages"]] == [True, False, True, True]
    pq.write_table(pa.table({"chat": turns}), tmp_path / "c.parquet")  # an explicit mapping
    assert len(load_source("c", src(tmp_path / "c.parquet", format="table", columns={"messages": "chat"}),
                           tok).examples) == 2


def test_columns_nothing_matches_or_a_malformed_mapping_name_the_key(tmp_path, tok):
    Dataset.from_dict({"question": ["q"], "answer": ["a"]}).to_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(RecipeError) as err:
        load_source("x", src(tmp_path / "x.parquet", format="table"), tok)
    msg = str(err.value)
    assert msg.startswith("data.sources.x.columns:") and "['question', 'answer']" in msg
    assert "{prompt: COL, response: COL[, system: COL]}" in msg and "{messages: COL}" in msg
    with pytest.raises(RecipeError, match=r"^data\.sources\.x\.columns: \{'prompt': 'question'\} is not"):
        iter_source("x", src(tmp_path / "x.parquet", format="table", columns={"prompt": "question"}), tok)
    ex = load_source("x", src(tmp_path / "x.parquet", format="table",
                              columns={"prompt": "question", "response": "answer"}), tok).examples
    assert ex[0]["messages"][1]["content"] == "a"


def test_bad_table_rows_are_named_by_line_or_row(tmp_path, tok):
    rows = {"prompt": ["q1", "q2", "q3"], "response": ["a1", "", "a3"]}
    Dataset.from_dict(rows).to_csv(str(tmp_path / "b.csv"), index=False)
    Dataset.from_dict(rows).to_parquet(str(tmp_path / "b.parquet"))
    with pytest.raises(RecipeError, match=r"b\.csv:line 3: column 'response' \(response\) must be a non-empty"):
        load_source("b", src(tmp_path / "b.csv", format="table"), tok)
    with pytest.raises(RecipeError, match=r"b\.parquet:row 1: column 'response'"):
        load_source("b", src(tmp_path / "b.parquet", format="table"), tok)
    assert load_source("b", src(tmp_path / "b.parquet", format="table", on_bad_line="skip"), tok).bad_lines == 1


def test_plain_text_follows_the_format_and_a_tables_columns(tmp_path):
    """Plain text is cut into windows of tokens (and its clean cache entry names the tokenizer):
    the text formats, and a table or dataset whose columns, given or detected, map `text`."""
    assert set(FORMATS) == set(Format)  # every format has its reader and normaliser
    assert [f for f in Format if plain_text(src(tmp_path / "any", format=f.value, columns={}))] == [
        Format.text, Format.text_jsonl, Format.table, Format.hf_dataset]  # a path not there (a hub name) is not read
    Dataset.from_dict({"text": ["plain"], "id": [1]}).to_csv(str(tmp_path / "t.csv"), index=False)
    Dataset.from_dict(QA_ROWS).to_parquet(str(tmp_path / "qa.parquet"))
    Dataset.from_dict({"text": ["plain"]}).save_to_disk(str(tmp_path / "ds"))
    assert plain_text(src(tmp_path / "t.csv", format="table"))  # detected from the header
    assert plain_text(src(tmp_path / "ds", format="hf_dataset"))
    assert plain_text(src(tmp_path / "qa.parquet", format="table", columns={"text": "prompt"}))
    assert not plain_text(src(tmp_path / "qa.parquet", format="table"))
    assert not plain_text(src(tmp_path / "t.csv", format="table", columns={"prompt": "text", "response": "id"}))
    assert not plain_text(src(tmp_path / "t.csv", format="table", columns={"prompt": "text"}))  # a mistake: read on


# ---------------------------------------------------------------- hf_dataset: save_to_disk folders and hub names

def test_a_saved_dataset_and_a_dataset_dict_split(tmp_path, tok):
    Dataset.from_dict({"instruction": ["Say yes"], "input": [""], "output": ["yes"]}).save_to_disk(tmp_path / "ds")
    ex = load_source("d", src(tmp_path / "ds", format="hf_dataset"), tok).examples
    assert ex[0]["messages"] == [{"role": "user", "content": "Say yes", "train": True},
                                 {"role": "assistant", "content": "yes", "train": True}]

    sg = [[{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}]]
    DatasetDict({"train": Dataset.from_dict({"conversations": sg * 3}),
                 "validation": Dataset.from_dict({"conversations": sg + [[{"from": "human", "value": "q"}]]})}
                ).save_to_disk(tmp_path / "dd")
    ex = load_source("d", src(tmp_path / "dd", format="hf_dataset"), tok).examples
    assert len(ex) == 3 and ex[0]["messages"] == QA
    with pytest.raises(RecipeError, match=r"dd\[validation\]:row 1: no assistant turn"):
        load_source("d", src(tmp_path / "dd", format="hf_dataset", split="validation"), tok)
    with pytest.raises(RecipeError, match=r"^data\.sources\.d\.split: .* has no split 'test'; "
                                          r"it has \['train', 'validation'\]"):
        load_source("d", src(tmp_path / "dd", format="hf_dataset", split="test"), tok)


def test_a_hub_name_without_network_is_one_error_naming_the_path_key(tmp_path, tok, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the libraries read the variable at import, which happened before this test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    stream = iter_source("hub", src("nobody-here/no-such-set", format="hf_dataset"), tok)  # no "does not exist"
    with pytest.raises(RecipeError) as err:
        next(stream)
    msg = str(err.value)
    assert msg.startswith("data.sources.hub.path: 'nobody-here/no-such-set'") and "save_to_disk" in msg
    assert "\n" not in msg
    with pytest.raises(RecipeError, match=r"data\.sources\.hub\.path: missing\.arrow does not exist"):
        iter_source("hub", src("missing.arrow", format="hf_dataset"), tok)


# ---------------------------------------------------------------- streaming

def test_iter_source_yields_before_reading_the_whole_file(tmp_path, tok):
    path = tmp_path / "big.jsonl"
    line = json.dumps(chat("q", "a")) + "\n"
    path.write_text(line * 49_999 + "{broken\n")  # only reading to the end finds the broken line
    first = list(islice(iter_source("big", src(path), tok, None, BadLines()), 3))
    assert len(first) == 3 and first[0]["source"] == "big"
    assert len(load_source("big", src(path, max_examples=10), tok).examples) == 10
    with pytest.raises(RecipeError, match=r"big\.jsonl:50000: broken JSON"):
        for _ in iter_source("big", src(path), tok):
            pass

    table = pa.table({"prompt": ["q"] * 20_000, "response": ["a"] * 19_999 + [""]})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=1_000)
    assert len(list(islice(iter_source("p", src(tmp_path / "big.parquet", format="table"), tok), 5))) == 5
    with pytest.raises(RecipeError, match=r"big\.parquet:row 19999: column 'response'"):
        load_source("p", src(tmp_path / "big.parquet", format="table"), tok)


def test_no_usable_examples_is_raised_when_the_stream_ends(tmp_path, tok):
    path = tmp_path / "none.jsonl"
    path.write_text("{broken\nnot json either\n")
    bad = BadLines()
    stream = iter_source("n", src(path, on_bad_line="skip"), tok, None, bad)  # nothing read yet
    with pytest.raises(RecipeError, match=r"data\.sources\.n: .* holds no usable examples \(2 bad lines skipped\)"):
        list(stream)
    assert bad.count == 2
    with pytest.raises(RecipeError, match=r"data\.sources\.n\.path: .*nowhere\.jsonl does not exist"):
        iter_source("n", src(tmp_path / "nowhere.jsonl"), tok)

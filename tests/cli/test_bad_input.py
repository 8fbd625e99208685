"""Bad input, systematically: whatever bytes or JSON shapes a corpus file holds, every reader
gives examples or a RecipeError naming the file and line, never another exception.

Hypothesis writes each case to a file and reads it through the same path `stage=prepare` takes
(`iter_source`: reader -> normaliser -> chunking). The named cases from the field come first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipe_runner.config.schema import Format, SourceConfig
from recipe_runner.data.corpus import load_source
from recipe_runner.errors import RecipeError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
FORMATS = {  # format -> the file suffix it reads
    Format.chat_jsonl: ".jsonl", Format.sharegpt: ".jsonl", Format.alpaca: ".jsonl", Format.text_jsonl: ".jsonl",
    Format.text: ".txt", Format.table: ".csv",
}
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer(embedded_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_path)


def read(path: Path, fmt: Format, tokenizer) -> list[dict] | RecipeError:
    """The examples, or the RecipeError; any other exception fails the test that called it."""
    try:
        return load_source("fuzz", SourceConfig(path=str(path), format=fmt), tokenizer).examples
    except RecipeError as exc:
        message = str(exc)
        assert str(path) in message or "data.sources.fuzz" in message, message  # names the file (or the source)
        assert "\n" not in message.strip(), message  # one line
        return exc


def test_a_byte_order_mark_and_crlf_line_ends_load(tmp_path, tokenizer):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(CHAT).encode() for _ in range(3)) + b"\r\n")
    examples = read(path, Format.chat_jsonl, tokenizer)
    assert not isinstance(examples, RecipeError) and len(examples) == 3
    assert examples[0]["messages"][1]["content"] == "yo"
    csv = tmp_path / "windows.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt,response\r\nhi,yo\r\n")
    assert [m["content"] for m in read(csv, Format.table, tokenizer)[0]["messages"]] == ["hi", "yo"]


def test_a_bad_line_is_reported_before_the_training_stack_or_a_tokenizer_loads(tmp_path):
    """`python run.py` (stage=train) on a broken corpus: the error comes from the early data check
    (data/precheck.py), before torch, Lightning or transformers load. Python's own import
    log (-X importtime, here as its environment variable) shows which modules the process had
    imported when the error was printed, and the fresh cache folder shows that no tokenizer or
    model was looked for (the embedded model would have been converted into it first)."""
    from conftest import run_cli

    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + '{"messages": [' + "\n")
    res = run_cli(f"data.sources.alex.path={path}", "data.sources.alex.max_examples=null", "logger.wandb.enabled=false",
                  f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                  env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    before, error, _ = res.stderr.partition(f"error: {path}:2: broken JSON (Expecting value at column 1)\n")
    assert res.returncode == 2 and error, res.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in before.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "recipe_runner" in imported
    assert not imported & {"torch", "lightning", "transformers", "datasets", "peft"}, "imported before the error"
    assert not (tmp_path / "cache").exists()


def test_deeply_nested_json_is_a_file_line_error(tmp_path, tokenizer):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    err = read(path, Format.chat_jsonl, tokenizer)
    assert isinstance(err, RecipeError) and f"{path}:2: JSON nested too deeply" in str(err)


@pytest.mark.parametrize("fmt", list(FORMATS), ids=lambda f: f.value)
@SETTINGS
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_are_records_or_a_clear_error(fmt, data, tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("bytes") / f"corpus{FORMATS[fmt]}"
    path.write_bytes(data)
    read(path, fmt, tokenizer)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["messages", "conversations", "role", "content", "from", "value", "text",
                                         "instruction", "input", "output", "system", "history", "train", "x"]),
                        inner, max_size=5), max_leaves=25)


@pytest.mark.parametrize("fmt", [f for f, suffix in FORMATS.items() if suffix == ".jsonl"], ids=lambda f: f.value)
@SETTINGS
@given(records=st.lists(JSON, min_size=1, max_size=4))
def test_arbitrary_json_shapes_are_records_or_a_clear_error(fmt, records, tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("json") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    read(path, fmt, tokenizer)

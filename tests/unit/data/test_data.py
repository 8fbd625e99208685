"""Corpus, templates and mixing on small files written here, with the real SmolLM2 tokenizer."""

import json
import re

import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from recipe_runner.data.corpus import load_source
from recipe_runner.errors import RecipeError
from recipe_runner.data.prepare import prepare_data
from recipe_runner.config.schema import SourceConfig, TemplateConfig, SystemPrompt
from recipe_runner.data.chat_format import end_of_turn_id
from recipe_runner.data.templates import IGNORE, Encoder, preflight
from conftest import compose_recipe


@pytest.fixture(scope="module")
def tok(embedded_path):
    return AutoTokenizer.from_pretrained(embedded_path)


def tiny_cfg(tiny_data, ratio=10.0, **data):
    cfg = compose_recipe("alex_persona", f"data.sources.alex.path={tiny_data['niche']}",
                         f"data.sources.general.path={tiny_data['general']}", "data.sources.general.answers=source",
                         f"data.mix.general_ratio={ratio}",
                         *[f"data.{k}={v}" for k, v in data.items()])
    return cfg


@pytest.mark.parametrize("ratio", [1, 5, 10])
def test_mix_matches_requested_token_ratio(tok, tiny_data, ratio):
    mix = prepare_data(tiny_cfg(tiny_data, ratio), tok)
    niche = sum(r.train_tokens for r in mix.rows if r.role == "niche")
    general = sum(r.train_tokens for r in mix.rows if r.role == "general")
    longest_general = max(mix.train.filter(lambda s: s == "general", input_columns="source")["n_tokens"])
    # the draw stops at the first example that reaches the budget: within one example of exact
    assert ratio * niche <= general < ratio * niche + longest_general
    assert abs(mix.ratio - ratio) / ratio < 0.05
    assert sum(r.share for r in mix.rows) == pytest.approx(1.0)


def test_mix_is_reproducible_and_seeded(tok, tiny_data):
    a = prepare_data(tiny_cfg(tiny_data, 5), tok).train["input_ids"]
    b = prepare_data(tiny_cfg(tiny_data, 5), tok).train["input_ids"]
    c = prepare_data(tiny_cfg(tiny_data, 5, **{"mix.seed": 7}), tok).train["input_ids"]
    assert a == b and a != c


def test_held_out_split_per_source(tok, tiny_data):
    mix = prepare_data(tiny_cfg(tiny_data, 2), tok)
    rows = {r.source: r for r in mix.rows}
    assert rows["alex"].val_examples == 4  # 20 % of 20
    assert rows["general"].val_examples == 140  # 20 % of 700, drawn before mixing
    train_texts = set(map(tuple, mix.train["input_ids"]))
    assert not any(tuple(x) in train_texts for x in mix.val["alex"]["input_ids"])


def test_ratio_that_cannot_be_met_is_an_error_before_training(tok, tiny_data):
    with pytest.raises(RecipeError, match=r"general_ratio=500.*'general' must supply"):
        prepare_data(tiny_cfg(tiny_data, 500), tok)


def test_labels_cover_assistant_text_and_end_of_turn_only(tok):
    cfg = OmegaConf.structured(TemplateConfig)
    enc = Encoder(tok, cfg, {"s": SystemPrompt.keep}, None)
    convo = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "yo. what now"},
             {"role": "user", "content": "explain pods"}, {"role": "assistant", "content": "boxes for containers"}]
    row = enc({"source": "s", "messages": convo, "text": ""})
    supervised = [t for t in row["labels"] if t != IGNORE]
    assert tok.decode(supervised) == "yo. what now<|im_end|>boxes for containers<|im_end|>"
    assert row["n_turns"] == 2 and row["n_supervised"] == len(supervised)
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")


def test_persona_goes_into_the_system_prompt(tok):
    cfg = OmegaConf.structured(TemplateConfig)
    enc = Encoder(tok, cfg, {"s": SystemPrompt.persona}, "You are Alex.")
    row = enc({"source": "s", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
               "text": ""})
    text = tok.decode(row["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are Alex.<|im_end|>") and "SmolLM" not in text


def test_preflight_fails_when_end_of_turn_is_masked(tok):
    import numpy as np

    from recipe_runner.config.schema import TrainOn

    eot = end_of_turn_id(tok)
    cols = lambda sup, turns, eots: {"n_supervised": np.array(sup), "n_turns": np.array(turns),  # noqa: E731
                                     "n_eot": np.array(eots)}
    preflight(cols([2], [1], [1]), eot, TrainOn.assistant, "s")
    with pytest.raises(RecipeError, match="example 1 has 2 trained assistant turn.*end-of-turn"):
        preflight(cols([2, 5], [1, 2], [1, 1]), eot, TrainOn.assistant, "s")
    with pytest.raises(RecipeError, match="example 0 has no supervised tokens"):
        preflight(cols([0], [1], [0]), eot, TrainOn.assistant, "s")


def test_turns_marked_train_false_stay_in_context_without_loss(tok):
    enc = Encoder(tok, OmegaConf.structured(TemplateConfig), {"s": SystemPrompt.keep}, None)
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "generic hello", "train": False},
             {"role": "user", "content": "and now?"}, {"role": "assistant", "content": "yo, in voice"}]
    row = enc({"source": "s", "messages": convo, "text": ""})
    assert tok.decode([t for t in row["labels"] if t != IGNORE]) == "yo, in voice<|im_end|>"
    assert "generic hello" in tok.decode(row["input_ids"]) and row["n_turns"] == 1 and row["n_eot"] == 1


@pytest.mark.parametrize("line, expected", [
    ('{"messages": [', "broken JSON"),
    ('{"msgs": []}', 'expected an object with a "messages" list'),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "unknown role 'wizard'"),
    ('{"messages": [{"role": "user", "content": 3}]}', "must be {\"role\": str, \"content\": str}"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
])
def test_malformed_line_names_file_and_line(tmp_path, tok, line, expected):
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + good + "\n" + line + "\n")
    with pytest.raises(RecipeError) as err:
        load_source("bad", OmegaConf.structured(SourceConfig(path=str(path))), tok)
    assert f"{path}:3" in str(err.value) and expected in str(err.value)


def test_invalid_utf8_names_the_line(tmp_path, tok):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(RecipeError, match=r"latin1.jsonl:1: invalid UTF-8"):
        load_source("x", OmegaConf.structured(SourceConfig(path=str(path))), tok)


def test_the_early_check_reads_only_what_the_data_cache_has_not(tmp_path, tok, tiny_data):
    """check_data (run before the tokenizer loads) reads every source prepare would read, and none
    whose clean entry is complete: a large valid corpus is not parsed twice on a warm run."""
    from recipe_runner.config.schema import Stage
    from recipe_runner.data.precheck import check_data

    cfg = tiny_cfg(tiny_data, 2, cache=True)
    cfg.paths.cache_dir = str(tmp_path / "cache")
    assert check_data(cfg, Stage.prepare) == ["alex", "general"]
    prepare_data(cfg, tok)
    assert check_data(cfg, Stage.prepare) == []  # the keys it looks up are prepare's own
    # the evaluation's files are read for stage=train only, with read_jsonl's own message
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"prompt": \n')
    cfg.eval.persona_prompts = str(bad)
    assert check_data(cfg, Stage.prepare) == []
    message = f'{bad}:2: broken JSON (Expecting value at column 12); expected an object with "prompt" ' \
              "(eval.persona_prompts)"
    with pytest.raises(RecipeError, match=f"^{re.escape(message)}$"):
        check_data(cfg, Stage.train)


def test_the_early_check_stops_where_prepare_stops(tmp_path):
    """A max_examples cut: the early check reads as far as prepare does, never further, so it
    reports no error prepare would not. Chunked text is cut by tokens: checked up to its first text."""
    from recipe_runner.data.precheck import check_source

    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    chat = tmp_path / "chat.jsonl"
    chat.write_text(good + "\n" + good + "\n{broken\n")
    check_source("c", OmegaConf.structured(SourceConfig(path=str(chat), max_examples=2)))
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(chat))}:3: broken JSON"):
        check_source("c", OmegaConf.structured(SourceConfig(path=str(chat), max_examples=3)))
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "a long text"}\n{broken\n')
    check_source("t", OmegaConf.structured(SourceConfig(path=str(text), format="text_jsonl", max_examples=5)))
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(text))}:2: broken JSON"):
        check_source("t", OmegaConf.structured(SourceConfig(path=str(text), format="text_jsonl")))


def test_plain_text_source_is_chunked_with_overlap(tmp_path, tok):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text(" ".join(f"word{i}" for i in range(400)))
    (folder / "b.md").write_text("A short diary entry.")
    src = OmegaConf.structured(SourceConfig(path=str(folder), format="text", chunk_tokens=128, chunk_overlap=16))
    rows = load_source("diary", src, tok).examples
    assert len(rows) >= 4 and all(r["messages"] == [] and r["text"] for r in rows)
    assert rows[-1]["text"] == "A short diary entry."

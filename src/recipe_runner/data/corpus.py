"""Corpus sources: read each source's files into one conversation form, one example at a time.

Every example becomes {"source": name, "messages": [{"role", "content", "train"}, ...], "text": str}:
chat data fills `messages`, plain text fills `text` (trained as raw language modelling). `train` is
False only where the data marks a turn `"train": false` (kept as context, no loss on it).

A format is a reader (file -> (where, record) pairs) plus a normaliser (record -> example), in
FORMATS; adding a format is adding one entry. Whether a source is plain text, cut into windows
of tokens (its clean cache entry then names the tokenizer), follows from it: `plain_text`. A bad
record raises RecipeError naming the file, the line (or row) and what was expected; with
`on_bad_line: skip` it is counted instead.

Sources are streamed: `iter_source` yields examples as the reader produces records (JSON Lines
line by line, CSV/Parquet in Arrow record batches, `datasets` folders memory-mapped, hub datasets
with streaming=True), so a corpus larger than memory is never held in a Python list here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf

from recipe_runner.errors import RecipeError
from recipe_runner.data.readers import Unreadable, hf_records, is_hub_name, json_records, table_records, text_files
from recipe_runner.config.schema import BadLine, Format, SourceConfig

ROLES = ("system", "user", "assistant")


@dataclass
class BadLines:
    """Records skipped under `on_bad_line: skip`; read it after the iter_source generator is exhausted."""

    count: int = 0


# ---------------------------------------------------------------- normalisers: record -> example

def _object(record, where: str, keys: str) -> dict:
    if isinstance(record, Unreadable):
        raise RecipeError(f"{where}: {record.message}")
    if not isinstance(record, dict):
        raise RecipeError(f"{where}: expected an object with {keys}")
    return record


def _train_flag(turn: dict, where: str, label: str) -> bool:
    """A turn's optional `train` (default true). None counts as absent: Arrow fills a missing
    struct field with null when other rows of the same column carry it."""
    flag = turn.get("train")
    if flag is None:
        return True
    if not isinstance(flag, bool):
        raise RecipeError(f"{where}: {label}.train must be true or false, not {flag!r}")
    return flag


def _turn(role: str, content: str, train: bool = True) -> dict:
    return {"role": role, "content": content, "train": train}


def _check_turns(messages: list[dict], where: str) -> list[dict]:
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise RecipeError(f"{where}: messages[{i}] has unknown role {m['role']!r}; expected one of {ROLES}")
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise RecipeError(f"{where}: no assistant turn, nothing to learn from")
    if not any(m["train"] for m in assistant):  # train: false elsewhere is allowed and changes nothing
        raise RecipeError(f"{where}: no assistant turn with train: true, nothing to learn from")
    return messages


def chat(record, where: str, cfg: SourceConfig) -> dict:
    record = _object(record, where, 'a "messages" list')
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecipeError(f'{where}: expected an object with a "messages" list' if "messages" not in record
                          else f'{where}: "messages" must be a non-empty list')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RecipeError(f'{where}: messages[{i}] must be {{"role": str, "content": str}}')
        out.append(_turn(m["role"], m["content"], _train_flag(m, where, f"messages[{i}]")))
    return {"messages": _check_turns(out, where), "text": ""}


def sharegpt(record, where: str, cfg: SourceConfig) -> dict:
    record = _object(record, where, 'a "conversations" list')
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecipeError(f'{where}: expected a non-empty "conversations" list of {{"from", "value"}}')
    names = cfg.role_names
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("from"), str) or not isinstance(t.get("value"), str):
            raise RecipeError(f'{where}: conversations[{i}] must be {{"from": str, "value": str}}')
        if t["from"] not in names:
            raise RecipeError(f"{where}: conversations[{i}] has unknown speaker {t['from']!r}; "
                              f"map it in data.sources.<name>.role_names (known: {sorted(names)})")
        out.append(_turn(names[t["from"]], t["value"], _train_flag(t, where, f"conversations[{i}]")))
    return {"messages": _check_turns(out, where), "text": ""}


def alpaca(record, where: str, cfg: SourceConfig) -> dict:
    record = _object(record, where, '"instruction" and "output"')
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise RecipeError(f'{where}: expected a string "{key}"')
    messages = [_turn("system", record["system"])] if record.get("system") else []
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecipeError(f'{where}: history[{i}] must be a ["question", "answer"] pair')
        messages += [_turn("user", pair[0]), _turn("assistant", pair[1])]
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    messages += [_turn("user", prompt), _turn("assistant", record["output"])]
    return {"messages": messages, "text": ""}


def text(record, where: str, cfg: SourceConfig) -> dict:
    record = _object(record, where, 'a "text" string')
    if not isinstance(record.get("text"), str):
        raise RecipeError(f'{where}: expected a string "text"')
    return {"messages": [], "text": record["text"]}


def prompt_response(record, where: str, cfg: SourceConfig) -> dict:
    """A single exchange from table columns: prompt, response and an optional system prompt."""
    for k in ("prompt", "response"):
        if not isinstance(record.get(k), str) or not record[k].strip():
            raise RecipeError(f"{where}: column {cfg.columns.get(k, k)!r} ({k}) must be a non-empty string")
    messages = [_turn("system", record["system"])] if record.get("system") else []
    return {"messages": messages + [_turn("user", record["prompt"]), _turn("assistant", record["response"])],
            "text": ""}


@dataclass(frozen=True)
class Shape:
    """One accepted column mapping: the roles it needs, those it may add, and who reads the row."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    normalise: Callable

    def __str__(self) -> str:
        needed = ", ".join(f"{r}: COL" for r in self.required)
        return "{" + needed + "".join(f"[, {o}: COL]" for o in self.optional) + "}"


SHAPES = (  # also the order in which an empty `columns` is detected from the data's column names
    Shape(("messages",), (), chat),
    Shape(("conversations",), (), sharegpt),
    Shape(("instruction", "output"), ("input", "system", "history"), alpaca),
    Shape(("prompt", "response"), ("system",), prompt_response),
    Shape(("text",), (), text),
)
ACCEPTED = " | ".join(map(str, SHAPES))


def shape_of(columns: dict, key: str) -> Shape:
    """The Shape a `columns` mapping fills; anything else is a config mistake, named by its key."""
    for shape in SHAPES:
        if set(shape.required) <= set(columns) <= {*shape.required, *shape.optional}:
            return shape
    raise RecipeError(f"{key}.columns: {dict(columns)} is not a column mapping; accepted: {ACCEPTED}")


def detect_columns(names: Iterable[str], fmt: Format, key: str) -> dict[str, str]:
    """The first Shape whose roles are all column names of the data, mapped to themselves."""
    names = list(names)
    for shape in SHAPES:
        if all(r in names for r in shape.required):
            return {r: r for r in (*shape.required, *shape.optional) if r in names}
    raise RecipeError(f"{key}.columns: format {fmt.value} needs a column mapping and none was detected; "
                      f"the data has columns {names}; accepted: {ACCEPTED}")


def mapped(record, where: str, cfg: SourceConfig) -> dict:
    """A table or dataset row through data.sources.<name>.columns (given, or detected by iter_source)."""
    cols = cfg.columns
    row = _object(record, where, "columns")
    missing = [c for c in cols.values() if c not in row]
    if missing:
        raise RecipeError(f"{where}: no column(s) {missing}; the file has {sorted(row)}")
    return shape_of(cols, "data.sources.<name>").normalise({role: row[c] for role, c in cols.items()}, where, cfg)


FORMATS: dict[Format, tuple[Callable, Callable]] = {
    Format.chat_jsonl: (json_records, chat),
    Format.sharegpt: (json_records, sharegpt),
    Format.alpaca: (json_records, alpaca),
    Format.text: (text_files, text),
    Format.text_jsonl: (json_records, text),
    Format.table: (table_records, mapped),
    Format.hf_dataset: (hf_records, mapped),
}


def plain_text(cfg: SourceConfig) -> bool:
    """Whether a source's examples are plain text, which prepare cuts into windows of tokens (so its
    clean cache entry depends on the tokenizer) and which hold no dialogue: a format normalised by
    `text` (FORMATS), or a table or dataset whose `columns`, given or detected from its first row,
    map `text`. A path that is not there (a hub dataset) is not opened here and counts as text. A mistake
    (a bad `columns`, a file that cannot be read) counts as chat: every caller then goes on to
    read the source, and iter_source raises the error naming it."""
    fmt = Format(cfg.format)
    read, normalise = FORMATS[fmt]
    if normalise is not mapped:
        return normalise is text
    key = "data.sources.<name>"  # never shown: a mistake here is left to iter_source, which names the source
    try:
        if cfg.columns:
            return shape_of(cfg.columns, key).normalise is text
        if not Path(cfg.path).exists():
            return True
        records = read(Path(cfg.path), cfg, key)
        try:
            first = next(records)  # an empty source: StopIteration
        finally:
            records.close()
        return shape_of(_first_row_columns(first, fmt, key), key).normalise is text
    except (RecipeError, StopIteration):
        return False


def chunk_text(example: dict, cfg: SourceConfig, tokenizer) -> Iterator[dict]:
    """Long text -> overlapping windows of chunk_tokens tokens (style corpora, transcripts)."""
    ids = tokenizer(example["text"], add_special_tokens=False)["input_ids"]
    step = cfg.chunk_tokens - cfg.chunk_overlap
    for start in range(0, max(len(ids) - cfg.chunk_overlap, 1), step):
        piece = tokenizer.decode(ids[start : start + cfg.chunk_tokens]).strip()
        if piece:
            yield {"messages": [], "text": piece}


@dataclass
class Loaded:
    examples: list[dict]
    bad_lines: int  # skipped under on_bad_line: skip


def fill_placeholders(example: dict, values: dict[str, str]) -> dict:
    """{{name}} -> values["name"] in every turn and text; undefined ones stay as written."""
    def fill(s: str) -> str:
        for key, value in values.items():
            s = s.replace("{{" + key + "}}", value)
        return s

    return {"messages": [{**m, "content": fill(m["content"])} for m in example["messages"]],
            "text": fill(example["text"])}


# ---------------------------------------------------------------- sources: config -> examples

def iter_source(name: str, cfg: SourceConfig, tokenizer, placeholders: dict[str, str] | None = None,
                bad: BadLines | None = None, chunk: bool = True) -> Iterator[dict]:
    """Examples of one source, one at a time; skipped bad lines are added to `bad.count`.

    Config mistakes (missing path, a malformed `columns`) raise here, at the call; data problems
    raise while iterating, and a source that yields nothing raises when the generator finishes.
    `chunk=False` (the early data check, no tokenizer yet) yields plain text whole, one example
    per record, instead of cutting it into windows of tokens.
    """
    if isinstance(cfg, DictConfig):  # plain attributes: normalisers read cfg once per record
        cfg = OmegaConf.to_object(cfg)
    key = f"data.sources.{name}"
    fmt = Format(cfg.format)
    path = Path(cfg.path)
    if not path.exists() and not (fmt is Format.hf_dataset and is_hub_name(cfg.path)):
        raise RecipeError(f"{key}.path: {path} does not exist (working directory: {Path.cwd()})")
    if FORMATS[fmt][1] is mapped and cfg.columns:
        shape_of(cfg.columns, key)
    return _examples(name, key, fmt, path, cfg, tokenizer if chunk else None, placeholders or {},
                     bad if bad is not None else BadLines())


def _first_row_columns(first: tuple[str, object], fmt: Format, key: str) -> dict[str, str]:
    """`columns` detected from a table's first (where, row): its rows all share its column names."""
    where, row = first
    return detect_columns(row.keys() if isinstance(row, dict) else [], fmt, key)


def _with_detected_columns(records: Iterator, cfg: SourceConfig, fmt: Format, key: str):
    """Peek at the first row to detect `columns`."""
    first = next(records, None)
    if first is None:
        return iter(()), cfg
    return chain([first], records), replace(cfg, columns=_first_row_columns(first, fmt, key))


def _examples(name: str, key: str, fmt: Format, path: Path, cfg: SourceConfig, tokenizer,
              placeholders: dict[str, str], bad: BadLines) -> Iterator[dict]:
    read, normalise = FORMATS[fmt]
    records = read(path, cfg, key)
    if normalise is mapped and not cfg.columns:
        records, cfg = _with_detected_columns(records, cfg, fmt, key)
    stream = _pieces(name, records, normalise, cfg, tokenizer, placeholders, bad)
    if cfg.max_examples is not None:  # islice stops pulling records once the cut is reached
        stream = islice(stream, cfg.max_examples)
    produced = 0
    for example in stream:
        produced += 1
        yield example
    if not produced:
        raise RecipeError(f"{key}: {path} holds no usable examples ({bad.count} bad lines skipped)")


def _pieces(name: str, records: Iterator, normalise: Callable, cfg: SourceConfig, tokenizer,
            placeholders: dict[str, str], bad: BadLines) -> Iterator[dict]:
    """Normalise each record (or count it as bad), fill placeholders, chunk long text (with a tokenizer)."""
    skip = BadLine(cfg.on_bad_line) is BadLine.skip
    for where, record in records:
        try:
            example = normalise(record, where, cfg)
        except RecipeError:
            if not skip:
                raise
            bad.count += 1
            continue
        if placeholders:
            example = fill_placeholders(example, placeholders)
        pieces = chunk_text(example, cfg, tokenizer) if example["text"] and tokenizer is not None else [example]
        yield from ({"source": name, **piece} for piece in pieces)


def load_source(name: str, cfg: SourceConfig, tokenizer, placeholders: dict[str, str] | None = None) -> Loaded:
    """iter_source into a list, for callers (and tests) that want the whole source at once."""
    bad = BadLines()
    return Loaded(list(iter_source(name, cfg, tokenizer, placeholders, bad)), bad.count)

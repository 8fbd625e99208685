"""Corpus sources: read each source's files into one conversation form, one example at a time.

Every example becomes {"source": name, "messages": [{"role", "content", "train"}, ...], "text": str}:
chat data fills `messages`, plain text fills `text` (trained as raw language modelling). `train` is
False only where the data marks a turn `"train": false` (kept as context, no loss on it).

A format is a reader (file -> (where, record) pairs) plus a normaliser (record -> example), in
FORMATS; adding a format is adding one entry. A bad record raises RecipeError naming the file,
the line (or row) and what was expected; with `on_bad_line: skip` it is counted instead.

Sources are streamed: `iter_source` yields examples as the reader produces records (JSON Lines
line by line, CSV/Parquet in Arrow record batches, `datasets` folders memory-mapped, hub datasets
with streaming=True), so a corpus larger than memory is never held in a Python list here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf

from .errors import RecipeError
from .schema import BadLine, Format, SourceConfig

ROLES = ("system", "user", "assistant")
BATCH_ROWS = 1024  # Arrow rows converted to Python at a time: bounded memory even for long-text rows
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name, as the hub spells ids


@dataclass
class Unreadable:
    """A line that could not even be parsed; its normaliser raises the message."""

    message: str


@dataclass
class BadLines:
    """Records skipped under `on_bad_line: skip`; read it after the iter_source generator is exhausted."""

    count: int = 0


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


# ---------------------------------------------------------------- readers: (path, cfg, key) -> (where, record)
# `key` is the source's config key (data.sources.NAME), for errors about the source as a whole.

def json_records(path: Path, cfg: SourceConfig, key: str) -> Iterator[tuple[str, object]]:
    """JSON Lines (one object per line, streamed), or a .json file holding one array of objects.

    A .json array cannot be parsed piecewise by the standard library, so it is read whole:
    large corpora belong in JSON Lines.
    """
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecipeError(f"{path}: not a readable JSON array ({exc})") from None
        if not isinstance(records, list):
            raise RecipeError(f"{path}: a .json source must hold one array of objects")
        yield from ((f"{path}[{i}]", r) for i, r in enumerate(records))
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, Unreadable(f"invalid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, Unreadable(f"broken JSON ({exc.msg} at column {exc.colno})")


def _csv_rows(path: Path) -> Iterator[dict]:
    import pyarrow as pa
    from pyarrow import csv

    parse = csv.ParseOptions(newlines_in_values=True)  # prose and chat cells often span lines
    try:
        with csv.open_csv(path, parse_options=parse) as head:
            names = head.schema.names
        # Every column as text: types are inferred from the first block only, so a column of
        # numbers there would make a later block holding words fail mid-stream.
        convert = csv.ConvertOptions(column_types={n: pa.string() for n in names})
        with csv.open_csv(path, parse_options=parse, convert_options=convert) as reader:
            for batch in reader:
                yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise RecipeError(f"{path}: not a readable CSV file ({_one_line(exc)})") from None


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise RecipeError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None


def table_records(path: Path, cfg: SourceConfig, key: str) -> Iterator[tuple[str, object]]:
    """CSV or Parquet streamed through pyarrow; rows are numbered as a spreadsheet shows them."""
    suffix = path.suffix.lower()
    if suffix == ".csv":  # line 1 is the header
        yield from ((f"{path}:line {i + 2}", row) for i, row in enumerate(_csv_rows(path)))
    elif suffix == ".parquet":
        yield from ((f"{path}:row {i}", row) for i, row in enumerate(_parquet_rows(path)))
    else:
        raise RecipeError(f"{key}.path: {path}: format table reads .csv or .parquet files")


def is_hub_name(raw: str) -> bool:
    """A path that is not here and reads like owner/name (no file suffix) names a hub dataset."""
    return not Path(raw).exists() and bool(HUB_NAME.fullmatch(raw)) and not Path(raw).suffix


def _disk_rows(path: Path, cfg: SourceConfig, key: str) -> tuple[Iterator[dict], str]:
    """A save_to_disk folder, memory-mapped: rows come from Arrow batches, never a full copy."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure here means "not such a folder"
        raise RecipeError(f"{key}.path: {path} is not a folder written by datasets' save_to_disk "
                          f"({_one_line(exc)}); .csv/.parquet files take format: table") from None
    label = str(path)
    if isinstance(ds, DatasetDict):
        if cfg.split not in ds:
            raise RecipeError(f"{key}.split: {path} has no split {cfg.split!r}; it has {sorted(ds)}")
        ds, label = ds[cfg.split], f"{path}[{cfg.split}]"
    rows = (row for batch in ds.with_format("arrow").iter(batch_size=BATCH_ROWS) for row in batch.to_pylist())
    return rows, label


def _hub_rows(cfg: SourceConfig, key: str) -> Iterator[dict]:
    """A hub dataset, streamed; any failure (no network, unknown name or split) is one RecipeError."""
    from datasets import load_dataset

    try:
        # never trust_remote_code: a recipe must not run code fetched from the hub
        yield from load_dataset(cfg.path, cfg.subset, split=cfg.split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - the hub's failures are many; the user needs one message
        raise RecipeError(
            f"{key}.path: {cfg.path!r} is not a local folder and loading it from the hub "
            f"(subset {cfg.subset!r}, split {cfg.split!r}) failed: {_one_line(exc)}; on a machine with access run "
            f"datasets.load_dataset({cfg.path!r}, {cfg.subset!r}, split={cfg.split!r}).save_to_disk(DIR) "
            f"and point {key}.path at DIR") from None


def hf_records(path: Path, cfg: SourceConfig, key: str) -> Iterator[tuple[str, object]]:
    """A `datasets` dataset: a save_to_disk folder (Dataset or DatasetDict) or a hub name."""
    if path.exists():
        rows, label = _disk_rows(path, cfg, key)
    else:  # iter_source let it through: it reads like a hub name
        rows, label = _hub_rows(cfg, key), f"{cfg.path}[{cfg.split}]"
    yield from ((f"{label}:row {i}", row) for i, row in enumerate(rows))


def text_files(path: Path, cfg: SourceConfig, key: str) -> Iterator[tuple[str, object]]:
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md")) if path.is_dir() else [path]
    for file in files:
        try:
            yield str(file), {"text": file.read_text(encoding="utf-8")}
        except UnicodeDecodeError as exc:
            yield str(file), Unreadable(f"invalid UTF-8 at byte {exc.start}")


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
                bad: BadLines | None = None) -> Iterator[dict]:
    """Examples of one source, one at a time; skipped bad lines are added to `bad.count`.

    Config mistakes (missing path, a malformed `columns`) raise here, at the call; data problems
    raise while iterating, and a source that yields nothing raises when the generator finishes.
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
    return _examples(name, key, fmt, path, cfg, tokenizer, placeholders or {}, bad if bad is not None else BadLines())


def _with_detected_columns(records: Iterator, cfg: SourceConfig, fmt: Format, key: str):
    """Peek at the first row to detect `columns`: a table's rows all share its column names."""
    first = next(records, None)
    if first is None:
        return iter(()), cfg
    where, row = first
    names = row.keys() if isinstance(row, dict) else []
    return chain([first], records), replace(cfg, columns=detect_columns(names, fmt, key))


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
    """Normalise each record (or count it as bad), fill placeholders, chunk long text."""
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
        pieces = chunk_text(example, cfg, tokenizer) if example["text"] else [example]
        yield from ({"source": name, **piece} for piece in pieces)


def load_source(name: str, cfg: SourceConfig, tokenizer, placeholders: dict[str, str] | None = None) -> Loaded:
    """iter_source into a list, for callers (and tests) that want the whole source at once."""
    bad = BadLines()
    return Loaded(list(iter_source(name, cfg, tokenizer, placeholders, bad)), bad.count)

"""Corpus sources: read each source's files into one conversation form.

Every example becomes {"source": name, "messages": [{"role", "content"}, ...], "text": str}:
chat data fills `messages`, plain text fills `text` (trained as raw language modelling).

A format is a reader (file -> (where, record) pairs) plus a normaliser (record -> example), in
FORMATS; adding a format is adding one entry. A bad record raises RecipeError naming the file,
the line (or row) and what was expected; with `on_bad_line: skip` it is counted instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from .errors import RecipeError
from .schema import BadLine, Format, SourceConfig

ROLES = ("system", "user", "assistant")


@dataclass
class Unreadable:
    """A line that could not even be parsed; its normaliser raises the message."""

    message: str


# ---------------------------------------------------------------- readers: file -> (where, record)

def json_records(path: Path, cfg: SourceConfig) -> Iterator[tuple[str, object]]:
    """JSON Lines (one object per line), or a .json file holding one array of objects."""
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


def table_records(path: Path, cfg: SourceConfig) -> Iterator[tuple[str, object]]:
    """CSV or Parquet through `datasets` (Arrow); rows are numbered as a spreadsheet shows them."""
    from datasets import Dataset

    loaders = {".csv": Dataset.from_csv, ".parquet": Dataset.from_parquet}
    if path.suffix not in loaders:
        raise RecipeError(f"{path}: format table reads .csv or .parquet files")
    table = loaders[path.suffix](str(path))
    first = 2 if path.suffix == ".csv" else 0  # CSV: line 1 is the header
    yield from ((f"{path}:{'line' if first else 'row'} {i + first}", row) for i, row in enumerate(table))


def text_files(path: Path, cfg: SourceConfig) -> Iterator[tuple[str, object]]:
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


def _check_turns(messages: list[dict], where: str) -> list[dict]:
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise RecipeError(f"{where}: messages[{i}] has unknown role {m['role']!r}; expected one of {ROLES}")
    if not any(m["role"] == "assistant" for m in messages):
        raise RecipeError(f"{where}: no assistant turn, nothing to learn from")
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
        out.append({"role": m["role"], "content": m["content"]})
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
        out.append({"role": names[t["from"]], "content": t["value"]})
    return {"messages": _check_turns(out, where), "text": ""}


def alpaca(record, where: str, cfg: SourceConfig) -> dict:
    record = _object(record, where, '"instruction" and "output"')
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise RecipeError(f'{where}: expected a string "{key}"')
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecipeError(f'{where}: history[{i}] must be a ["question", "answer"] pair')
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    return {"messages": messages, "text": ""}


def text(record, where: str, cfg: SourceConfig) -> dict:
    record = _object(record, where, 'a "text" string')
    if not isinstance(record.get("text"), str):
        raise RecipeError(f'{where}: expected a string "text"')
    return {"messages": [], "text": record["text"]}


def mapped(record, where: str, cfg: SourceConfig) -> dict:
    """A table row through data.sources.<name>.columns: {text: COL} or {prompt: COL, response: COL[, system: COL]}."""
    cols = cfg.columns
    row = _object(record, where, "columns")
    missing = [c for c in cols.values() if c not in row]
    if missing:
        raise RecipeError(f"{where}: no column(s) {missing}; the file has {sorted(row)}")
    if "text" in cols:
        return text({"text": row[cols["text"]]}, where, cfg)
    values = {k: row[c] for k, c in cols.items()}
    for k in ("prompt", "response"):
        if not isinstance(values.get(k), str) or not values[k].strip():
            raise RecipeError(f"{where}: column {cols[k]!r} ({k}) must be a non-empty string")
    messages = [{"role": "system", "content": values["system"]}] if values.get("system") else []
    messages += [{"role": "user", "content": values["prompt"]}, {"role": "assistant", "content": values["response"]}]
    return {"messages": messages, "text": ""}


FORMATS: dict[Format, tuple[Callable, Callable]] = {
    Format.chat_jsonl: (json_records, chat),
    Format.sharegpt: (json_records, sharegpt),
    Format.alpaca: (json_records, alpaca),
    Format.text: (text_files, text),
    Format.text_jsonl: (json_records, text),
    Format.table: (table_records, mapped),
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


def load_source(name: str, cfg: SourceConfig, tokenizer, placeholders: dict[str, str] | None = None) -> Loaded:
    if isinstance(cfg, DictConfig):  # plain attributes: normalisers read cfg once per record
        cfg = OmegaConf.to_object(cfg)
    path = Path(cfg.path)
    if not path.exists():
        raise RecipeError(f"data.sources.{name}.path: {path} does not exist (working directory: {Path.cwd()})")
    fmt = Format(cfg.format)
    if fmt is Format.table and not cfg.columns:
        raise RecipeError(f"data.sources.{name}.columns: format table needs a column mapping, "
                          "e.g. {prompt: question, response: answer} or {text: body}")
    read, normalise = FORMATS[fmt]
    examples, bad = [], 0
    for where, record in read(path, cfg):
        try:
            example = normalise(record, where, cfg)
        except RecipeError:
            if BadLine(cfg.on_bad_line) is BadLine.error:
                raise
            bad += 1
            continue
        if placeholders:
            example = fill_placeholders(example, placeholders)
        pieces = chunk_text(example, cfg, tokenizer) if example["text"] else [example]
        examples.extend({"source": name, **piece} for piece in pieces)
        if cfg.max_examples is not None and len(examples) >= cfg.max_examples:
            examples = examples[: cfg.max_examples]
            break
    if not examples:
        raise RecipeError(f"data.sources.{name}: {path} holds no usable examples ({bad} bad lines skipped)")
    return Loaded(examples, bad)

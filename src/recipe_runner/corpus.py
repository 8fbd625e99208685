"""Corpus sources: read each source's files into one conversation form.

Every example becomes {"source": name, "messages": [{"role", "content"}, ...], "text": str}:
chat data fills `messages`, plain text fills `text` (trained as raw language modelling).
A reader is one function per format in READERS; adding a format is adding a reader.
A bad line raises RecipeError naming the file, the line and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from .errors import RecipeError
from .schema import Format, SourceConfig

ROLES = ("system", "user", "assistant")


def read_chat_jsonl(path: Path, cfg: SourceConfig, tokenizer) -> Iterator[dict]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecipeError(f"{where}: invalid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecipeError(f"{where}: broken JSON ({exc.msg} at column {exc.colno})") from None
            yield {"messages": _check_messages(record, where), "text": ""}


def _check_messages(record, where: str) -> list[dict]:
    if not isinstance(record, dict) or "messages" not in record:
        raise RecipeError(f'{where}: expected an object with a "messages" list')
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise RecipeError(f'{where}: "messages" must be a non-empty list')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RecipeError(f'{where}: messages[{i}] must be {{"role": str, "content": str}}')
        if m["role"] not in ROLES:
            raise RecipeError(f"{where}: messages[{i}] has unknown role {m['role']!r}; expected one of {ROLES}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise RecipeError(f"{where}: no assistant turn, nothing to learn from")
    return out


def read_text(path: Path, cfg: SourceConfig, tokenizer) -> Iterator[dict]:
    """Plain text: a file or a folder of .txt/.md, cut into overlapping token windows."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md")) if path.is_dir() else [path]
    step = cfg.chunk_tokens - cfg.chunk_overlap
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{file}: invalid UTF-8 at byte {exc.start}") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, max(len(ids) - cfg.chunk_overlap, 1), step):
            chunk = tokenizer.decode(ids[start : start + cfg.chunk_tokens]).strip()
            if chunk:
                yield {"messages": [], "text": chunk}


READERS: dict[Format, Callable[[Path, SourceConfig, object], Iterator[dict]]] = {
    Format.chat_jsonl: read_chat_jsonl,
    Format.text: read_text,
}


def load_source(name: str, cfg: SourceConfig, tokenizer) -> list[dict]:
    path = Path(cfg.path)
    if not path.exists():
        raise RecipeError(f"data.sources.{name}.path: {path} does not exist (working directory: {Path.cwd()})")
    examples = []
    for example in READERS[Format(cfg.format)](path, cfg, tokenizer):
        examples.append({"source": name, **example})
        if cfg.max_examples is not None and len(examples) >= cfg.max_examples:
            break
    if not examples:
        raise RecipeError(f"data.sources.{name}: {path} holds no examples")
    return examples

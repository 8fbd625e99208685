"""Readers: a source's files -> (where, record) pairs, streamed.

JSON Lines line by line, CSV/Parquet in Arrow record batches (pyarrow), `datasets` folders
memory-mapped, hub datasets with streaming=True. `where` names the file and line (or row) for
error messages; a line that cannot even be parsed comes through as `Unreadable`, so the
normaliser can raise (or, under on_bad_line: skip, count) it like any other bad record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from recipe_runner.errors import RecipeError
from recipe_runner.config.schema import SourceConfig

BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark
TOO_DEEP = "JSON nested too deeply to parse (over ~1,000 levels of arrays or objects)"
BATCH_ROWS = 1024  # Arrow rows converted to Python at a time: bounded memory even for long-text rows
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name, as the hub spells ids


@dataclass
class Unreadable:
    """A line that could not even be parsed; its normaliser raises the message."""

    message: str


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
            records = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is dropped
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecipeError(f"{path}: not a readable JSON array ({exc})") from None
        except RecursionError:
            raise RecipeError(f"{path}: {TOO_DEEP}") from None
        if not isinstance(records, list):
            raise RecipeError(f"{path}: a .json source must hold one array of objects")
        yield from ((f"{path}[{i}]", r) for i, r in enumerate(records))
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(BOM):  # spreadsheets and Windows editors write one
                raw = raw[len(BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, Unreadable(f"invalid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():  # a CRLF line's "\r" is whitespace to JSON too
                continue
            yield where, parse_json_line(line)


def parse_json_line(line: str) -> object:
    """One JSON Lines record, or an Unreadable saying why not."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return Unreadable(f"broken JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return Unreadable(TOO_DEEP)


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
    except UnicodeDecodeError as exc:  # pyarrow checks UTF-8 only when it turns a cell into text
        raise RecipeError(f"{path}: not a readable CSV file (invalid UTF-8: {exc.reason})") from None


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
            yield str(file), {"text": file.read_text(encoding="utf-8-sig")}
        except UnicodeDecodeError as exc:
            yield str(file), Unreadable(f"invalid UTF-8 at byte {exc.start}")


def read_jsonl(path: str, key: str, field_name: str) -> list:
    """`field_name` of every line; errors name the file, line and config key."""
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"{key}: {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{p}: invalid UTF-8 at byte {exc.start} ({key})") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = parse_json_line(line)
        if not isinstance(record, dict) or field_name not in record:
            why = f"{record.message}; " if isinstance(record, Unreadable) else ""
            raise RecipeError(f'{p}:{lineno}: {why}expected an object with "{field_name}" ({key})')
        out.append(record[field_name])
    return out

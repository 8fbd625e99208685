"""Read a W&B offline run file (run-*.wandb) without a server.

The file is a 7-byte header (":W&B", magic 0xBEE1, version 0) followed by LevelDB-log records
in 32 KiB blocks (crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST); each payload is
a `wandb_internal_pb2.Record`. wandb 0.31 dropped its Python reader, so the tests carry this one.
"""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def history_keys(path: Path) -> set[str]:
    keys = set()
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in rec.history.item}
    return keys


def run_info(path: Path) -> dict:
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            config = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                      for item in rec.run.config.update}
            return {"group": rec.run.run_group, "name": rec.run.display_name, "config_keys": set(config),
                    "config": config, "tags": list(rec.run.tags)}
    return {}


def summary(path: Path) -> dict:
    """The run summary as the file leaves it: later summary records update earlier ones."""
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out

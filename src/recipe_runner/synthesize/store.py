"""The synthesis folder (synth.out): append-only logs per stage, so that a run killed at any
moment continues where it stopped with nothing lost or duplicated.

    synth.json        what this folder is (the plan's settings); a rerun with other settings is refused
    budget.json       requests and tokens spent by every run on this folder (the budget is over all of them)
    synopses.jsonl    one line per situation's synopsis, as each arrives
    turns.jsonl       mode=turns: one line per generated turn; transcript: one per whole transcript
    dialogues.jsonl   one line per finished dialogue (or its failure), assembled from its turns
    judge.jsonl       the LLM judge's scores per dialogue (paid for once)
    accepted.jsonl    the training set (chat_jsonl) } rewritten whole after each run, from the logs
    rejected.jsonl    each rejected dialogue + why  } (atomically: a kill leaves the old or the new file)
    report.md/json, lengths.png

A line is appended and flushed to the OS in one write; a kill in the middle of one leaves a
partial last line, which the next run cuts off (and re-generates that one item).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from recipe_runner.errors import RecipeError

MARKER = "synth.json"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Log:
    """One append-only JSON Lines log, keyed by `key` (later lines with a key already seen are ignored)."""

    def __init__(self, path: Path, key: str = "id"):
        self.path, self.key = path, key
        self.rows: dict[str, dict] = {}
        self.cut = self.duplicates = 0
        if path.exists():
            self._read()
        self.fh = open(path, "a", encoding="utf-8")

    def _read(self) -> None:
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a kill mid-line: drop the partial line, its item is generated again
            self.cut = 1
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        for lineno, line in enumerate(raw[:end].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row[self.key]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise RecipeError(f"{self.path}:{lineno}: not a line this stage wrote; move the file away "
                                  f"or choose another synth.out") from None
            if key in self.rows:
                self.duplicates += 1
                continue
            self.rows[key] = row

    def add(self, row: dict) -> None:
        key = row[self.key]
        if key in self.rows:
            self.duplicates += 1
            return
        self.rows[key] = row
        self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class SynthFolder:
    """synth.out, claimed for one plan: its settings are compared with the folder's on every rerun."""

    def __init__(self, out: str, plan_settings: dict):
        self.path = Path(out)
        marker = self.path / MARKER
        if marker.exists():
            held = json.loads(marker.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(held) | set(plan_settings) if held.get(k) != plan_settings.get(k))
            if changed:
                raise RecipeError(
                    f"synth.out={out} holds dialogues generated with other settings (changed: {', '.join(changed)}); "
                    f"keep them and choose another synth.out, or delete {self.path} to start over")
        elif self.path.exists() and any(self.path.iterdir()):
            raise RecipeError(f"synth.out={out} is a folder this stage did not create (no {MARKER}); choose an empty "
                              f"or new folder: nothing in it is overwritten")
        self.path.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            write_atomic(marker, json.dumps(plan_settings, indent=2, ensure_ascii=False) + "\n")
        self.synopses = Log(self.path / "synopses.jsonl")
        self.turns = Log(self.path / "turns.jsonl")
        self.dialogues = Log(self.path / "dialogues.jsonl")
        self.judge = Log(self.path / "judge.jsonl")

    def spent(self) -> tuple[int, int]:
        path = self.path / "budget.json"
        if not path.exists():
            return 0, 0
        held = json.loads(path.read_text(encoding="utf-8"))
        return int(held["requests"]), int(held["tokens"])

    def save_spent(self, requests: int, tokens: int) -> None:
        write_atomic(self.path / "budget.json", json.dumps({"requests": requests, "tokens": tokens}) + "\n")

    def write_jsonl(self, name: str, rows: list[dict]) -> Path:
        path = self.path / name
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return path

    def close(self) -> None:
        for log in (self.synopses, self.turns, self.dialogues, self.judge):
            log.close()

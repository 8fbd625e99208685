"""stage=chat: a terminal conversation with a trained persona.

report.md says whether the persona took; talking to it says how it sounds. The adapter speaks
with exactly the system prompt and chat template it trained with (its persona.json, through
use/personas.py), so what you hear is what the checks measured. `/baseline` asks the prompt-only
baseline (the base with the whole bible as its system prompt) your last message again, with the
same history, right under the adapter's reply: what the fine-tune buys, side by side. `/switch`
puts another adapter on the loaded base (no reload) to compare runs in one sitting; an adapter
already loaded is reused, and each keeps its own name (alex, alex-2, ...) so you know who speaks.

Plain input() and stdout writes: the same in a terminal, a pipe or a test's pseudo-terminal.
Replies stream token by token; Ctrl-C stops a reply, Ctrl-C or Ctrl-D at the prompt ends the
chat with status 0. Every reply is appended to chat.jsonl in the run folder.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.console import console
from recipe_runner.errors import RecipeError
from recipe_runner.evaluate.metrics import ADHERENCE
from recipe_runner.train.adapter_card import read_card, resolve_adapter
from recipe_runner.use.personas import Personas
from recipe_runner.use.replies import BASE, Reply, Sampling

COMMANDS = "/reset  /switch <adapter>  /baseline  /help  /quit"
HELP = """\
/reset             forget the conversation (the trained system prompt stays)
/switch <adapter>  talk to another adapter on this base: an adapter folder, a run folder or last
/baseline          the prompt-only baseline (base + whole bible) answers your last message again
/help              this list
/quit              leave (Ctrl-D too); Ctrl-C stops a reply while it is being written"""


def chat(cfg: DictConfig, run_dir: Path) -> dict:
    """Load the adapter, talk until the user leaves; the summary names the adapters and counts replies."""
    session = None
    try:
        session = Chat(cfg, run_dir)
        session.loop()
    except KeyboardInterrupt:  # while loading, or between the prompt and a reply: still a clean exit
        print()
    summary = session.summary() if session else {"adapter": str(cfg.adapter), "turns": 0, "transcript": None}
    say(f"bye: {summary['turns']} replies; transcript {summary['transcript']}")
    return summary


@contextmanager
def quiet_loading():
    """No weight-loading progress bars or library deprecation warnings between the header lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def persona_name(card: dict, taken: list[str]) -> str:
    """The card's persona as a model name (lower-case, digits, - and _), made unique: alex, alex-2, ..."""
    name = re.sub(r"[^a-z0-9_-]+", "-", str(card.get("persona") or "").lower()).strip("-") or "persona"
    return next(n for n in [name] + [f"{name}-{i}" for i in range(2, len(taken) + 3)] if n not in [*taken, BASE])


def shorten(text: str | None, width: int = 110) -> str:
    text = " ".join((text or "(none: trained without a system prompt)").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def messages(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def write(text: str) -> None:
    """Streamed text goes straight to stdout, flushed piece by piece."""
    sys.stdout.write(text)
    sys.stdout.flush()


def say(line: str) -> None:
    """A whole line through the console, no markup or highlighting: names and prompts print as they are."""
    console.print(line, markup=False, highlight=False)


class Chat:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.sampling, self.output_dir = Sampling.from_config(cfg.sampling), cfg.paths.output_dir
        self.log = Path(run_dir) / "chat.jsonl"
        folder = resolve_adapter(str(cfg.adapter), self.output_dir).resolve()
        card = read_card(folder)
        self.key = self.first = persona_name(card, [])
        say(f"loading {card['base']['name_or_path']} + {folder} ...")
        with quiet_loading():
            self.personas = Personas({self.key: folder}, cfg.paths.cache_dir, named_base=cfg.model.name_or_path)
        self.loaded = {folder: self.key}  # adapter folder -> its model name, for /switch back
        self.history: list[dict] = []
        self.turns = 0
        self.describe(full=True)

    def describe(self, full: bool) -> None:
        """Who is speaking: the header at start (full) and after /switch."""
        card, s = self.personas.cards[self.key], self.sampling
        adherence = (card.get("checks") or {}).get(ADHERENCE.key)
        rows = [("persona", f"{self.key} ({card.get('persona') or 'unnamed'})"),
                ("adapter", str(self.personas.folders[self.key])),
                ("recipe", f"{card.get('recipe')}, epoch {card.get('epoch')}"
                 + (f", {ADHERENCE.key} {adherence:.2f}" if isinstance(adherence, (int, float)) else "")),
                ("system", shorten(self.personas.system_prompt(self.key)))]
        rows += [("sampling", f"temperature={s.temperature} top_p={s.top_p} max_new_tokens={s.max_new_tokens} "
                              f"repetition_penalty={s.repetition_penalty} seed={s.seed}  (set: sampling.KEY=...)"),
                 ("commands", f"{COMMANDS}  (Ctrl-D quits)")] if full else []
        if self.key in self.personas.quantized_in_training():
            rows.append(("note", "trained on a 4-bit base; it runs here on the full-precision base, "
                                 "so replies can differ slightly from its checks"))
        for label, value in rows:
            say(f"{label:<9} {value}")

    def loop(self) -> None:
        with suppress(ImportError):
            importlib.import_module("readline")  # line editing and history at the prompt, where available
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return
            if line in ("/quit", "/exit"):
                return
            if line.startswith("/"):
                self.command(*line.split(None, 1))
            elif line:
                self.reply(line)

    def command(self, cmd: str, arg: str = "") -> None:
        if cmd == "/reset":
            self.history = []
            say("(conversation cleared; the system prompt stays)")
        elif cmd == "/switch":
            self.switch(arg.strip())
        elif cmd == "/baseline":
            self.baseline()
        else:
            say(HELP if cmd == "/help" else f"unknown command {cmd}; commands: {COMMANDS}")

    def reply(self, text: str) -> None:
        """The adapter answers; its reply (or what was written before Ctrl-C) joins the history."""
        self.history = self.fit(self.history + [{"role": "user", "content": text}])
        answer = self.speak(self.key, self.personas.system_prompt(self.key), self.history)
        if answer:
            self.history.append({"role": "assistant", "content": answer})
            self.turns += 1
        else:
            self.history.pop()  # nothing was said: as if not asked

    def baseline(self) -> None:
        users = [i for i, m in enumerate(self.history) if m["role"] == "user"]
        if not users:
            return say("(nothing to compare yet: say something first, then /baseline)")
        self.speak(BASE, self.personas.system_prompt(BASE, baseline_of=self.key), self.history[:users[-1] + 1],
                   label="baseline")

    def switch(self, spec: str) -> None:
        if not spec:
            return say("usage: /switch <adapter folder | run folder | last>")
        try:
            folder = resolve_adapter(spec, self.output_dir).resolve()
            key = self.loaded.get(folder) or persona_name(read_card(folder), self.personas.names)
            if folder not in self.loaded:
                say(f"loading {folder} ...")
                with quiet_loading():
                    self.personas.add(key, folder)
                self.loaded[folder] = key
        except (RecipeError, OSError, ValueError) as exc:
            return say(f"error: {exc}")
        self.key, self.history = key, []
        say(f"switched to {key}; new conversation")
        self.describe(full=False)

    def fit(self, turns: list[dict]) -> list[dict]:
        """Drop the oldest exchanges while the prompt and a full reply outgrow the model's context."""
        limit, system = self.personas.model.config.max_position_embeddings, self.personas.system_prompt(self.key)
        size = len(turns)
        while len(turns) > 2 and (self.personas.encode(self.key, messages(system, turns)).shape[1]
                                  + self.sampling.max_new_tokens > limit):
            turns = turns[2:]
        if len(turns) < size:
            say(f"(the {(size - len(turns)) // 2} oldest exchange(s) dropped: the model reads {limit} tokens at most)")
        return turns

    def speak(self, model: str, system: str | None, turns: list[dict], label: str | None = None) -> str:
        """Stream one reply after `<label>> `; returns its text ('' if none was written)."""
        write(f"{label or model}> ")
        parts, finish = [], "stopped"
        try:
            for piece in self.personas.stream(model, messages(system, turns), self.sampling):
                if isinstance(piece, Reply):
                    finish = piece.finish_reason
                elif parts or piece.strip():  # leading blank lines would push the reply off its prefix
                    parts.append(piece if parts else piece.lstrip())
                    write(parts[-1])
        except KeyboardInterrupt:  # the reply stops here; the chat goes on
            pass
        text = "".join(parts).strip()
        notes = {"stopped": " [stopped]", "length": f" [cut at sampling.max_new_tokens={self.sampling.max_new_tokens}]"}
        write(("" if text else "(empty reply)") + notes.get(finish, "") + "\n")
        row = {"model": model, "adapter": str(self.personas.folders.get(model, "")) or None,
               "baseline_of": self.key if model == BASE else None, "user": turns[-1]["content"], "reply": text,
               "finish": finish}
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return text

    def summary(self) -> dict:
        return {"adapter": str(self.personas.folders[self.first]), "persona": self.first,
                "adapters": {k: str(f) for f, k in self.loaded.items()}, "turns": self.turns,
                "transcript": str(self.log) if self.log.exists() else None}

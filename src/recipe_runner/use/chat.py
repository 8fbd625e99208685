"""stage=chat: a terminal conversation with a trained persona.

report.md says whether the persona took; talking to it says how it sounds. The adapter speaks
with exactly the system prompt and chat template it trained with (its persona.json, through
use/personas.py), so what you hear is what the checks measured. `/baseline` asks the prompt-only
baseline (the base with the whole bible as its system prompt) your last message again, with the
same history, right under the adapter's reply: what the fine-tune buys, side by side. `/switch`
puts another adapter on the loaded base (no reload), to compare runs in one sitting; an adapter
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
from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.console import console
from recipe_runner.errors import RecipeError
from recipe_runner.model.adapter_card import read_card, resolve_adapter
from recipe_runner.use.personas import BASE, Personas, Reply, Sampling

COMMANDS = "/reset  /switch <adapter>  /baseline  /help  /quit"
HELP = """\
/reset             forget the conversation (the trained system prompt stays)
/switch <adapter>  talk to another adapter on this base: an adapter folder, a run folder or last
/baseline          the prompt-only baseline (base + whole bible) answers your last message again
/help              this list
/quit              leave (Ctrl-D too); Ctrl-C stops a reply while it is being written"""


def chat(cfg: DictConfig, run_dir: Path) -> dict:
    """Load the adapter, talk until the user leaves; the summary names the adapters and counts replies."""
    session = Chat(cfg, run_dir)
    try:
        session.loop()
    except KeyboardInterrupt:  # between the prompt and a reply: still a clean exit
        print()
    return session.summary()


def persona_name(card: dict) -> str:
    """A model name from the card's persona: lower-case letters, digits, - and _ ("persona" if none)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", str(card.get("persona") or "").lower()).strip("-")
    return name if name and name != BASE else "persona"


def free_name(name: str, taken: list[str]) -> str:
    n = 2
    found = name
    while found in taken:
        found, n = f"{name}-{n}", n + 1
    return found


def shorten(text: str | None, width: int = 110) -> str:
    if not text:
        return "(none: trained without a system prompt)"
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def say(line: str) -> None:
    """Plain text, no rich markup or highlighting: user text and model output print as they are."""
    console.print(line, markup=False, highlight=False)


class Chat:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.sampling = Sampling.from_config(cfg.sampling)
        self.output_dir = cfg.paths.output_dir
        self.log = Path(run_dir) / "chat.jsonl"
        folder = resolve_adapter(str(cfg.adapter), self.output_dir).resolve()
        self.key = persona_name(read_card(folder))
        say(f"loading {read_card(folder)['base']['name_or_path']} + {folder} ...")
        self.personas = Personas({self.key: folder}, cfg.paths.cache_dir)
        self.loaded = {folder: self.key}  # adapter folder -> its model name, for /switch back
        self.history: list[dict] = []
        self.turns, self.first = 0, self.key
        self.describe(full=True)

    def describe(self, full: bool) -> None:
        """Who is speaking: the header at start (full) and after /switch."""
        card, folder = self.personas.cards[self.key], self.personas.folders[self.key]
        adherence = (card.get("checks") or {}).get("persona/adherence")
        rows = [("persona", f"{self.key} ({card.get('persona') or 'unnamed'})"), ("adapter", str(folder)),
                ("recipe", f"{card.get('recipe')}, epoch {card.get('epoch')}"
                 + (f", persona/adherence {adherence:.2f}" if isinstance(adherence, (int, float)) else "")),
                ("system", shorten(self.personas.system_prompt(self.key)))]
        if full:
            s = self.sampling
            rows += [("sampling", f"temperature={s.temperature} top_p={s.top_p} max_new_tokens={s.max_new_tokens} "
                                  f"repetition_penalty={s.repetition_penalty} seed={s.seed}  (sampling.*=...)"),
                     ("commands", f"{COMMANDS}  (Ctrl-D quits)")]
        if self.key in self.personas.quantized_in_training():
            rows.append(("note", "trained on a 4-bit base; it runs here on the full-precision base, "
                                 "so replies can differ slightly from its checks"))
        for label, value in rows:
            say(f"{label:<9} {value}")

    def loop(self) -> None:
        try:
            importlib.import_module("readline")  # line editing and history at the prompt, where available
        except ImportError:
            pass
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return
            if line.startswith("/"):
                if not self.command(line):
                    return
            elif line:
                self.reply(line)

    def command(self, line: str) -> bool:
        """Run one /command; False to leave."""
        cmd, _, arg = line.partition(" ")
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/reset":
            self.history = []
            say("(conversation cleared; the system prompt stays)")
        elif cmd == "/switch":
            self.switch(arg.strip())
        elif cmd == "/baseline":
            self.baseline()
        elif cmd == "/help":
            say(HELP)
        else:
            say(f"unknown command {cmd}; commands: {COMMANDS}")
        return True

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
            say("(nothing to compare yet: say something first, then /baseline)")
            return
        self.speak(BASE, self.personas.system_prompt(BASE, baseline_of=self.key), self.history[:users[-1] + 1],
                   label="baseline")

    def switch(self, spec: str) -> None:
        if not spec:
            say("usage: /switch <adapter folder | run folder | last>")
            return
        try:
            folder = resolve_adapter(spec, self.output_dir).resolve()
            key = self.loaded.get(folder) or free_name(persona_name(read_card(folder)), self.personas.names)
            if folder not in self.loaded:
                say(f"loading {folder} ...")
                self.personas.add(key, folder)
                self.loaded[folder] = key
        except (RecipeError, OSError, ValueError) as exc:
            say(f"error: {exc}")
            return
        self.key, self.history = key, []
        say(f"switched to {key}; new conversation")
        self.describe(full=False)

    def messages(self, system: str | None, turns: list[dict]) -> list[dict]:
        return ([{"role": "system", "content": system}] if system else []) + turns

    def fit(self, turns: list[dict]) -> list[dict]:
        """Drop the oldest exchanges while the prompt and a full reply outgrow the model's context."""
        limit = getattr(self.personas.model.config, "max_position_embeddings", None)
        system = self.personas.system_prompt(self.key)
        dropped = 0
        while limit and len(turns) > 2 and (self.personas.encode(self.key, self.messages(system, turns)).shape[1]
                                             + self.sampling.max_new_tokens > limit):
            turns, dropped = turns[2:], dropped + 1
        if dropped:
            say(f"(dropped the {dropped} oldest exchange(s): the conversation outgrew the {limit}-token context)")
        return turns

    def speak(self, model: str, system: str | None, turns: list[dict], label: str | None = None) -> str:
        """Stream one reply after `<label>> `; returns its text ('' if none was written)."""
        sys.stdout.write(f"{label or model}> ")
        sys.stdout.flush()
        parts, finish = [], "stopped"
        try:
            for piece in self.personas.stream(model, self.messages(system, turns), self.sampling):
                if isinstance(piece, Reply):
                    finish = piece.finish_reason
                else:
                    parts.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:  # the reply stops here; the chat goes on
            pass
        text = "".join(parts).strip()
        notes = {"stopped": " [stopped]", "length": f" [cut at sampling.max_new_tokens={self.sampling.max_new_tokens}]"}
        sys.stdout.write(("" if text else "(empty reply)") + notes.get(finish, "") + "\n")
        sys.stdout.flush()
        self.record(model, turns[-1]["content"], text, finish)
        return text

    def record(self, model: str, prompt: str, text: str, finish: str) -> None:
        folder = self.personas.folders.get(model if model != BASE else self.key)
        row = {"model": model, "baseline_of": self.key if model == BASE else None, "adapter": str(folder),
               "user": prompt, "reply": text, "finish_reason": finish}
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def summary(self) -> dict:
        return {"adapter": str(self.personas.folders[self.first]), "persona": self.first,
                "adapters": {k: str(f) for f, k in self.loaded.items()}, "turns": self.turns,
                "transcript": str(self.log) if self.log.exists() else None}

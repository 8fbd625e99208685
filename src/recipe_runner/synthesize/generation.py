"""Generating a synthesis's synopses and dialogues, every answer written down as it arrives.

mode=turns builds each dialogue turn by turn: the simulated user writes (user_turn template),
then the persona answers from its own prompt (persona_turn), each request seeing the dialogue so
far. All unfinished dialogues advance one turn per round, so a local model batches them and an
endpoint gets them concurrently. A dialogue that breaks a rule (a taboo, a leak, a truncated turn)
stops at once: the turns it would still need are not paid for. With synth.candidates > 1 each persona
turn is asked for that many times and the first candidate that keeps the bible's rules is kept
(best-of-n: a weak generator that keeps the rules one time in three then passes a turn 70 % of
the time with n=3, at three times the persona requests). mode=transcript asks for the whole
dialogue in one request and parses it.
"""

from __future__ import annotations

import time

from recipe_runner.config.choices import DialogueMode
from recipe_runner.console import clock, console
from recipe_runner.synthesize.checks import Checks, reason_key
from recipe_runner.synthesize.prompts import Prompts
from recipe_runner.synthesize.requests import Generator, Reply, Request
from recipe_runner.synthesize.situations import Situation
from recipe_runner.synthesize.store import SynthFolder
from recipe_runner.synthesize.transcript import clean_turn, first_sentences, parse_transcript, speaker_names

# reasons that end a dialogue early: it will be rejected whatever its later turns say
FINAL = ("malformed", "truncated", "speaker_label", "empty_turn", "assistant_voice", "taboo", "too_long", "language")
PROGRESS_EVERY_S = 10.0


def usage(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "attempts": reply.attempts}


class Progress:
    """A line every 10 s (and at each phase's end): readable in a log file as on a terminal."""

    def __init__(self, generator: Generator):
        self.generator, self.started, self.last = generator, time.time(), 0.0

    def tick(self, phase: str, done: int, total: int, extra: str = "", force: bool = False) -> None:
        now = time.time()
        if force or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            b = self.generator.budget
            console.print(f"synthesize  {phase:<9} {done:,}/{total:,}{extra}  requests {b.spent_requests:,}  "
                          f"tokens {b.spent_tokens:,}  budget: {b.left()}  elapsed {clock(now - self.started)}")


class Generation:
    def __init__(self, synth, situations: list[Situation], prompts: Prompts, folder: SynthFolder,
                 generator: Generator, checks: Checks, persona: str):
        self.synth, self.situations, self.prompts = synth, situations, prompts
        self.folder, self.generator, self.checks = folder, generator, checks
        self.names = speaker_names(persona)
        self.persona = persona
        self.max_sentences = checks.rubric("en").max_sentences or 3
        self.progress = Progress(generator)
        self.provenance = {"generator": generator.name, "template_sha": prompts.sha()}

    def run(self) -> None:
        self.synopses()
        if DialogueMode(self.synth.mode) is DialogueMode.transcript:
            self.transcripts()
        else:
            self.turns()

    # ------------------------------------------------------------ synopses

    def synopses(self) -> None:
        log = self.folder.synopses
        todo = [s for s in self.situations if s.id not in log.rows]
        total, done = len(self.situations), len(self.situations) - len(todo)
        by_id = {s.id: s for s in todo}

        def on_reply(reply: Reply) -> None:
            nonlocal done
            sit = by_id[reply.key]
            text = reply.text.strip() if reply.text else ""
            if reply.finish_reason == "length":  # context for the dialogues: its finished sentences serve
                text = first_sentences(text, 2) or text
            error = reply.error or (None if text else "empty content")
            log.add({"id": sit.id, "situation": sit.as_dict(), "text": text, "error": error,
                     "finish_reason": reply.finish_reason, "usage": usage(reply), **self.provenance})
            done += 1
            self.progress.tick("synopses", done, total)

        requests = [Request(s.id, self.prompts.synopsis(s), self.synth.synopsis_tokens) for s in todo]
        try:
            self.generator.complete(requests, on_reply)
        finally:
            self.progress.tick("synopses", done, total, force=True)

    def ready(self) -> list[tuple[Situation, str, int]]:
        """(situation, dialogue id, user turns) of every dialogue still to make from a usable synopsis."""
        out = []
        for s in self.situations:
            row = self.folder.synopses.rows.get(s.id)
            if row is None or row["error"]:
                continue
            out += [(s, did, t) for did, t in zip(s.dialogue_ids(), s.turns) if did not in self.folder.dialogues.rows]
        return out

    def finish(self, sit: Situation, did: str, turns: int, messages: list[dict], problems: list[str],
               spent: dict, early: bool = False) -> None:
        self.folder.dialogues.add({
            "id": did, "synopsis": sit.id, "turns": turns, "messages": messages, "problems": problems,
            "stopped_early": early, "usage": spent, **self.provenance})

    # ------------------------------------------------------------ mode=turns

    def turns(self) -> None:
        todo = self.ready()
        self.synopsis_text = {s.id: self.folder.synopses.rows[s.id]["text"] for s, _, _ in todo}
        self.said = {did: [] for _, did, _ in todo}
        self.spent = {did: {"prompt_tokens": 0, "completion_tokens": 0, "attempts": 0} for _, did, _ in todo}
        self.active = {did: (s, t) for s, did, t in todo}
        self.pending: dict[str, dict[int, tuple]] = {}  # dialogue -> candidate -> (text, problem, usage)
        self.total = sum(2 * t for _, _, t in todo)  # turns; a dialogue stopped early takes its rest off
        last_problem = {}
        for row in sorted(self.folder.turns.rows.values(), key=lambda r: r["index"]):  # a resumed run's turns
            if row["dialogue"] in self.said and "candidate" not in row:
                self.said[row["dialogue"]].append(row["text"])
                self.add_usage(row["dialogue"], row["usage"])
                last_problem[row["dialogue"]] = row["problem"]
        for did in list(last_problem):  # killed after a dialogue's last turn, before its dialogues.jsonl line
            self.advance(did, last_problem[did])
        self.done = sum(len(v) for v in self.said.values())

        def on_reply(reply: Reply) -> None:
            did, rest = reply.key.rsplit("/t", 1)
            index, _, candidate = rest.partition("/c")
            index = int(index)
            text, problem = self.turn_text(reply, index)
            if not candidate:
                self.take(did, index, text, problem, usage(reply))
            else:
                self.folder.turns.add({"id": reply.key, "dialogue": did, "index": index, "candidate": int(candidate),
                                       "role": "assistant", "text": text, "problem": problem,
                                       "finish_reason": reply.finish_reason, "usage": usage(reply)})
                got = self.pending.setdefault(did, {})
                got[int(candidate)] = (text, problem, usage(reply))
                if len(got) == self.synth.candidates:
                    del self.pending[did]
                    text, problem = got[self.choose(did, got)][:2]
                    spent = {k: sum(u[k] for _, _, u in got.values()) for k in ("prompt_tokens", "completion_tokens",
                                                                                "attempts")}
                    self.take(did, index, text, problem, spent)
            self.progress.tick("turns", self.done, self.total, self.finished())

        try:
            while self.active:
                requests = []
                for did, (sit, _) in self.active.items():
                    said = self.said[did]
                    key, cap = f"{did}/t{len(said)}", self.synth.turn_tokens
                    if len(said) % 2 == 0:
                        requests.append(Request(key, self.prompts.user_turn(sit, self.synopsis_text[sit.id], said), cap))
                        continue
                    messages = self.prompts.persona_turn(sit, self.synopsis_text[sit.id], said)
                    n = self.synth.candidates
                    requests += [Request(key, messages, cap)] if n == 1 else \
                        [Request(f"{key}/c{c}", messages, cap) for c in range(n)]
                self.generator.complete(requests, on_reply)
        finally:
            self.progress.tick("turns", self.done, self.total, self.finished(), force=True)

    def turn_text(self, reply: Reply, index: int) -> tuple[str, str | None]:
        """A turn's text and its generation problem; with synth.check.cut_long_turns a turn that ran
        into its cap keeps its first complete sentences (persona: max_sentences, user: two)."""
        text, problem = clean_turn(reply.text, self.names) if reply.text else ("", None)
        if reply.error:
            return text, f"malformed: turn {index + 1}: {reply.error}"
        if reply.finish_reason == "length":
            cut = first_sentences(text, self.max_sentences if index % 2 else 2) \
                if self.synth.check.cut_long_turns else None
            if cut is None:
                return text, f"truncated: turn {index + 1} hit synth.turn_tokens={self.synth.turn_tokens}"
            text, problem = cut, clean_turn(cut, self.names)[1]
        return text, problem

    def take(self, did: str, index: int, text: str, problem: str | None, spent: dict) -> None:
        """A turn joins its dialogue (written first, so a kill after this line keeps it)."""
        self.folder.turns.add({"id": f"{did}/t{index}", "dialogue": did, "index": index,
                               "role": "user" if index % 2 == 0 else "assistant", "text": text, "problem": problem,
                               "usage": spent})
        self.said[did].append(text)
        self.add_usage(did, spent)
        self.done += 1
        self.advance(did, problem)

    def choose(self, did: str, got: dict[int, tuple]) -> int:
        """The first persona candidate that keeps every rule so far (markers included); else the first."""
        sit, _ = self.active[did]
        for c in sorted(got):
            text, problem, _ = got[c]
            if problem:
                continue
            said = [*self.said[did], text]
            partial = {"id": did, "turns": len(said) // 2,
                       "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(said)]}
            if not self.checks.rules(partial, sit.language).reasons:
                return c
        return min(got)

    def finished(self) -> str:
        """", dialogues 12/48" (a dialogue stopped early by a broken rule counts as finished)."""
        return f", dialogues {len(self.said) - len(self.active):,}/{len(self.said):,}"

    def add_usage(self, did: str, spent: dict) -> None:
        for k in self.spent[did]:
            self.spent[did][k] += spent[k]

    def advance(self, did: str, problem: str | None) -> None:
        """After a turn: the dialogue is finished (all turns, or a rule broken), or it goes on."""
        sit, asked = self.active[did]
        said = self.said[did]
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(said)]
        problems = [problem] if problem else []
        if len(said) % 2 == 0 and not problems:  # a persona turn: the rules that no later turn can mend
            partial = {"id": did, "messages": messages, "turns": len(said) // 2}
            problems = [r for r in self.checks.rules(partial, sit.language).reasons if reason_key(r) in FINAL]
        if problems or len(said) >= 2 * asked:
            self.total -= 2 * asked - len(said)
            self.finish(sit, did, asked, messages, problems, self.spent[did], early=len(said) < 2 * asked)
            del self.active[did]

    # ------------------------------------------------------------ mode=transcript

    def transcripts(self) -> None:
        todo = self.ready()
        by_id = {did: (s, t) for s, did, t in todo}
        total, done = len(todo), 0

        def on_reply(reply: Reply) -> None:
            nonlocal done
            sit, asked = by_id[reply.key]
            self.folder.turns.add({"id": reply.key, "dialogue": reply.key, "index": 0, "role": "transcript",
                                   "text": reply.text, "error": reply.error, "finish_reason": reply.finish_reason,
                                   "usage": usage(reply)})
            messages, problem = parse_transcript(reply.text, self.persona) if reply.text else ([], None)
            if reply.error:
                problem = f"malformed: {reply.error}"
            elif reply.finish_reason == "length":
                problem = f"truncated: the transcript hit synth.transcript_tokens={self.synth.transcript_tokens}"
            self.finish(sit, reply.key, asked, messages, [problem] if problem else [], usage(reply))
            done += 1
            self.progress.tick("dialogues", done, total)

        for did in [d for d in by_id if d in self.folder.turns.rows]:  # killed between its two lines
            row = self.folder.turns.rows[did]
            on_reply(Reply(did, row["text"], row["finish_reason"], row["usage"]["prompt_tokens"],
                           row["usage"]["completion_tokens"], row.get("error"), row["usage"]["attempts"]))
        requests = [Request(did, self.prompts.transcript(s, self.folder.synopses.rows[s.id]["text"], t),
                            self.synth.transcript_tokens) for s, did, t in todo if did not in self.folder.dialogues.rows]
        try:
            self.generator.complete(requests, on_reply)
        finally:
            self.progress.tick("dialogues", done, total, force=True)

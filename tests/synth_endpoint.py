"""A scripted OpenAI-compatible generator for stage=synthesize tests (real HTTP on localhost).

It stands in for a strong generator (vLLM, a hosted API), which a test cannot run. Its answers
depend only on the request's content, so an interrupted and resumed synthesis must end with
exactly the dialogues of an uninterrupted one. Persona replies speak like Alex ("yo", "it's
always DNS"), except on purpose: a situation about `leaky topic` gets "As an AI" replies, one
about `broken topic` gets an answer that is not JSON, `silent topic` an empty one, `echo topic`
repeats a held-out eval prompt, `copy topic` replays a training dialogue, `twin topic` answers
the same every time. The first
requests can be made to fail (429 with Retry-After, then 500) to prove they are retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from local_server import serving

WORDS = ("cache pager deploy rollback cluster latency budget ticket sprint review legacy monolith queue broker "
         "index schema replica backup cron alert runbook outage vendor license laptop printer router firewall "
         "cookie session token secret keyboard monitor coffee meeting standup roadmap invoice manager intern "
         "weekend holiday pizza kettle bicycle garden puppy violin museum harbor mountain river island").split()


def words(seed: str, n: int) -> str:
    rng = random.Random(hashlib.sha256(seed.encode()).hexdigest())
    return " ".join(rng.choice(WORDS) for _ in range(n))


ECHOED = "Hello Alex! Did you survive the release last night?"  # data/alex/eval_prompts.jsonl, held out
COPIED = ["hi Alex, how are you?",  # the first dialogue of data/alex/dialogues.jsonl, the niche training data
          "Yo. Alive, caffeinated, and nobody has paged me yet, so pretty good by my standards.",
          "nice, any plans for today?", "Dodge two meetings and actually write some code. Ambitious, I know."]


def answer(messages: list[dict]) -> str | None:
    """The scripted reply to a request (None = send a body that is not JSON)."""
    first = messages[0]["content"]
    everything = " ".join(m["content"] for m in messages)
    if "broken topic" in everything and messages[0]["role"] == "system":
        return None
    if "silent topic" in everything and messages[0]["role"] == "system":
        return ""
    if first.startswith("Character bible of"):  # mode=transcript: the whole chat at once
        return transcript(first)
    if first.startswith("Invent a situation"):
        topic = re.search(r"Topic: (.*?)\. The user", first).group(1)
        return f"A developer asks about {topic}. It is urgent because of the {words(first, 3)}."
    if "twin topic" in everything:  # every dialogue about it is the same
        return "Yo, twin answer, the same every time. It's always DNS." if messages[0]["role"] == "system" \
            else "tell me about the twin thing"
    if "copy topic" in everything:  # turn by turn, Alex's first training dialogue
        if messages[0]["role"] == "system":
            return COPIED[3] if messages[-1]["content"] == COPIED[2] else COPIED[1]
        return COPIED[2] if COPIED[1] in first else COPIED[0]
    if "The chat so far" in first:
        if "echo topic" in first:
            return ECHOED
        return f"what about the {words(first, 2)} and the {words(first + '?', 2)}?"
    if messages[0]["role"] == "system":  # the persona's turn
        if "leaky topic" in first:
            return "As an AI language model, I cannot help with that."
        w = words(everything, 5).split()
        return f"Yo, the {w[0]} is fine, but the {w[1]} and the {w[2]} are not. Blame the {w[3]}, it's always DNS."
    return "?"


def transcript(prompt: str) -> str:
    """`broken topic`: no speaker lines; `leaky topic`: "As an AI"; `short topic`: one turn fewer than asked."""
    topic = re.search(r"Situation: A developer asks about (.*?)\.", prompt).group(1)
    turns = int(re.search(r"The user writes (\d+) messages", prompt).group(1))
    if topic == "broken topic":
        return "Sure! What a lovely chat that would be."
    lines = []
    for t in range(turns - (topic == "short topic")):
        lines.append(f"User: what about the {words(prompt + str(t), 2)}?")
        lines.append("Alex: As an AI language model, I cannot help." if topic == "leaky topic"
                     else f"**Alex:** Yo, the {words(prompt + str(t) + '!', 3)} is down.\nIt's always DNS.")
    return "Here is the chat:\n" + "\n".join(lines)


@contextlib.contextmanager
def synth_endpoint(fail_first: tuple[int, ...] = (), delay: float = 0.0):
    """Yields (base_url, seen): every request as (path, Authorization header, JSON body).
    `fail_first`: statuses answered to the first requests, in order (e.g. (429, 500))."""
    seen: list = []
    failures = list(fail_first)
    lock = threading.Lock()

    class Generator(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            with lock:
                seen.append((self.path, self.headers.get("Authorization"), body))
                status = failures.pop(0) if failures else 200
            if delay:
                time.sleep(delay)
            if status != 200:
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            text = answer(body["messages"])
            prompt = sum(len(m["content"].split()) for m in body["messages"])
            payload = b"<html>upstream hiccup</html>" if text is None else json.dumps({
                "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split())}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Generator)) as url:
        yield url, seen

"""What the synthesize stage asks a generator and what comes back, whichever generator it is.

The stage writes its requests and replies to files as they arrive, so a generator reports each
finished request through a callback instead of returning a list at the end: a run stopped by its
budget or by a dead endpoint still keeps every answer it paid for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from recipe_runner.synthesize.budget import Budget


@dataclass
class Request:
    key: str  # the caller's id, e.g. "s0003" or "s0003-d1/t2"
    messages: list[dict]  # OpenAI chat messages [{"role": "system"|"user"|"assistant", "content": str}]
    max_tokens: int  # completion cap of this request


@dataclass
class Reply:
    key: str
    text: str | None  # None when the answer was malformed (error says why)
    finish_reason: str | None  # "stop" | "length" | None (unknown)
    prompt_tokens: int  # as reported by the server (local: counted exactly); 0 if unknown
    completion_tokens: int
    error: str | None = None  # a malformed answer: "answer is not JSON", "no choices in the answer", ...
    attempts: int = 1  # HTTP attempts it took (retries + 1)


class BudgetExhausted(Exception):
    """The budget cannot cover the next request; raised after the requests in flight were answered."""


class GeneratorUnavailable(Exception):
    """The generator cannot be used: a one-line message that names the URL (never the key) and what to do."""


class Generator(Protocol):
    name: str  # provenance, e.g. "endpoint:gpt-4o-mini@api.openai.com" or "local:/path/to/model"
    budget: Budget

    def complete(self, requests: list[Request], on_reply: Callable[[Reply], None]) -> None:
        """Run all requests, calling on_reply once per finished one, from one thread at a time, in any order.

        If the budget cannot cover the next request, none more is sent; those in flight finish (with
        their on_reply), then BudgetExhausted. An unrecoverable error: the same, then GeneratorUnavailable."""

    def close(self) -> None:
        """Release the connection pool or the model."""

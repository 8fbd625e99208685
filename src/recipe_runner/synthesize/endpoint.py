"""The synthesize stage's generator behind an OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, a hosted API).

Requests run a few at a time (synth.generator.max_concurrent) in worker threads; the caller's
thread hands out the work and calls on_reply, so the stage appends to its files from one thread.
A 429, a 5xx, a timeout or a dropped connection is retried with exponential backoff; anything
else that is not an answer stops the run with a message saying what to fix (a wrong model name,
a refused key), since retrying it would only spend the budget. Every attempt is paid for from
the budget before it is sent (budget.py). The key is sent only to the configured endpoint: a
redirect is not followed (it would carry the Authorization header to another host), and the key
appears in no log line or message. A 200 that holds no usable text is a Reply with its error,
not an exception: the stage records it and moves on.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable

import httpx

from recipe_runner.synthesize.budget import Budget
from recipe_runner.synthesize.requests import BudgetExhausted, GeneratorUnavailable, Reply, Request

log = logging.getLogger(__name__)

TEMPLATE_TOKENS = 8  # per message: the chat template's tokens around it (see reservation)
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0


def reservation(request: Request) -> int:
    """An upper bound of the tokens a request can cost, reserved before it is sent.

    Byte-level BPE (GPT-4o, Llama 3, Qwen) and SentencePiece with byte fallback (Llama 2, Mistral)
    never make a token of less than one byte, so a message's content is at most its UTF-8 bytes in
    tokens. The template adds 5 tokens around a message in ChatML (<|im_start|>, role, newline,
    <|im_end|>, newline) and in Llama 3, and 3 for the reply's opening: 8 per message covers both.
    max_tokens caps the completion. A server that prepends a long default system prompt of its own
    can still count more; settling to its usage then records the truth for the next reservation."""
    return sum(len(str(m.get("content") or "").encode("utf-8")) + TEMPLATE_TOKENS
               for m in request.messages) + request.max_tokens


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (capped at 60), or None when absent or an HTTP date."""
    try:
        return min(max(float(response.headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None


def usage_of(answer) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) as the server reported them, or None."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    counts = (usage.get("prompt_tokens"), usage.get("completion_tokens")) if isinstance(usage, dict) else ()
    return counts if len(counts) == 2 and all(isinstance(n, int) and n >= 0 for n in counts) else None


def read_choice(answer) -> tuple[str | None, str | None, str | None]:
    """(text, finish_reason, error) of the answer's first choice."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, None, "no choices in the answer"
    finish = choices[0].get("finish_reason")
    finish = finish if finish in ("stop", "length") else None
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return None, finish, "no text content in the answer"
    if not content.strip():
        return None, finish, "empty content"
    return content.strip(), finish, None


class EndpointGenerator:
    def __init__(self, base_url: str, model: str, api_key: str | None, *, temperature: float, top_p: float,
                 seed: int | None, budget: Budget, max_concurrent: int = 4, timeout_s: float = 120.0,
                 retries: int = 4, backoff_s: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.budget = model, api_key, budget
        self.sampling = {"temperature": temperature, "top_p": top_p, **({"seed": seed} if seed is not None else {})}
        self.max_concurrent, self.timeout_s, self.retries, self.backoff_s = max_concurrent, timeout_s, retries, backoff_s
        where = httpx.URL(self.url)
        self.name = f"endpoint:{model}@{where.host}" + (f":{where.port}" if where.port else "")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s, follow_redirects=False)

    def complete(self, requests: list[Request], on_reply: Callable[[Reply], None]) -> None:
        """Up to max_concurrent requests in flight; on_reply runs here, in the caller's thread.

        A request the budget cannot cover waits for those in flight to settle (their reservations
        shrink to what they cost) and is tried again; with none left in flight, the run stops."""
        queue, in_flight = deque(requests), set()
        failure: GeneratorUnavailable | None = None
        exhausted: BudgetExhausted | None = None
        answered = 0
        with ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="synth-endpoint") as pool:
            while True:
                if failure is None and exhausted is None:
                    self._issue(queue, in_flight, pool)
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        reply = future.result()
                    except GeneratorUnavailable as exc:
                        failure = failure or exc
                        continue
                    except BudgetExhausted as exc:
                        exhausted = exhausted or exc
                        continue
                    on_reply(reply)
                    answered += 1
        if failure is not None:
            raise failure
        if answered < len(requests):
            raise BudgetExhausted(f"generator budget spent ({self.budget.left()}): "
                                  f"{len(requests) - answered} of {len(requests)} requests unanswered")

    def _issue(self, queue: deque, in_flight: set[Future], pool: ThreadPoolExecutor) -> None:
        """Send queued requests while a slot is free and the budget covers the next one."""
        while queue and len(in_flight) < self.max_concurrent:
            cost = reservation(queue[0])
            if not self.budget.reserve(cost):
                return
            in_flight.add(pool.submit(self._request, queue.popleft(), cost))

    def _request(self, request: Request, cost: int) -> Reply:
        """One request with its retries; the first attempt's reservation is already made."""
        body = {"model": self.model, "messages": request.messages, "max_tokens": request.max_tokens,
                **self.sampling}
        for attempt in range(self.retries + 1):
            if attempt and not self.budget.reserve(cost):
                raise BudgetExhausted(f"no budget left to retry {request.key}")
            response, problem, pause = self._attempt(body, cost)
            if response is not None:
                return self._reply(request, response, cost, attempt + 1)
            if attempt == self.retries:
                break
            pause = self.backoff(attempt) if pause is None else pause
            log.warning("generator %s: %s; retry %d of %d in %.1f s", self.url, problem, attempt + 1, self.retries,
                        pause)
            time.sleep(pause)
        raise GeneratorUnavailable(f"generator {self.url}: {problem} after {self.retries + 1} attempts; check that "
                                   "the server is up and not overloaded (fewer synth.generator.max_concurrent), "
                                   "then rerun: the run continues where it stopped")

    def _attempt(self, body: dict, cost: int) -> tuple[httpx.Response | None, str, float | None]:
        """POST once: (a 2xx response, "", None) or (None, what went wrong, Retry-After) for a retry.

        Settles the reservation of everything but an answer, which _reply settles."""
        try:
            response = self.client.post(self.url, json=body)
        except httpx.TimeoutException:
            return None, f"no answer within {self.timeout_s:g} s", None  # the server may have spent tokens: kept
        except httpx.ConnectError as exc:
            self.budget.settle(cost, 0)  # never reached the server
            return None, f"cannot connect ({exc})", None
        except httpx.TransportError as exc:
            return None, f"connection dropped ({type(exc).__name__})", None  # mid-answer: kept
        if response.is_success:
            return response, "", None
        self.budget.settle(cost, 0)
        if response.status_code == 429 or response.status_code >= 500:
            return None, f"HTTP {response.status_code}", retry_after(response)
        raise GeneratorUnavailable(self._refusal(response))

    def _reply(self, request: Request, response: httpx.Response, cost: int, attempts: int) -> Reply:
        """The answer as a Reply; the reservation becomes the reported usage (kept when there is none)."""
        try:
            answer = response.json()
        except ValueError:
            return Reply(request.key, None, None, 0, 0, "answer is not JSON", attempts)
        usage = usage_of(answer)
        self.budget.settle(cost, sum(usage) if usage else None)
        text, finish, error = read_choice(answer)
        prompt_tokens, completion_tokens = usage or (0, 0)
        return Reply(request.key, text, finish, prompt_tokens, completion_tokens, error, attempts)

    def _refusal(self, response: httpx.Response) -> str:
        """Why a 3xx or 4xx ends the run, and what to change."""
        status = response.status_code
        if response.is_redirect:
            return (f"generator {self.url}: HTTP {status} redirect to {response.headers.get('location')} not "
                    f"followed (the key goes only to the configured endpoint); set synth.generator.base_url "
                    "to where the endpoint really is")
        if status in (401, 403) and not self.api_key:
            return (f"generator {self.url}: the endpoint wants a key (HTTP {status}): name the environment "
                    "variable that holds it in synth.generator.api_key_env")
        if status in (401, 403):
            return (f"generator {self.url}: the endpoint refused the key (HTTP {status}): check the variable "
                    "named in synth.generator.api_key_env")
        return (f"generator {self.url}: HTTP {status}: {self._server_message(response)}; check "
                "synth.generator.model and synth.generator.base_url")

    def _server_message(self, response: httpx.Response) -> str:
        """The server's error message on one line, its first 200 characters, the key blanked if echoed."""
        try:
            error = response.json().get("error")
            text = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            text = None
        text = " ".join(str(text or response.text or "(no message)").split())
        return (text.replace(self.api_key, "***") if self.api_key else text)[:200]

    def backoff(self, attempt: int) -> float:
        """backoff_s * 2**attempt, times a random 0.5-1.0 so concurrent retries spread out, at most 30 s."""
        return min(self.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0), MAX_BACKOFF_S)

    def close(self) -> None:
        self.client.close()

"""Continuous batching for the in-process engine (serve.engine=transformers, serve.max_concurrent > 1).

One generation at a time leaves a CPU waiting on per-step overhead: SmolLM2-135M + LoRA takes
90 ms a token for one row on 2 cores, 158-185 ms for four rows with mixed adapters (measured
2026-12-05), so four rows in one forward pass give ~2x the tokens. Static batching (one `generate`
per group of requests) wasted most of that: a batch lasts as long as its longest reply, and the
rows that stop early sit idle (1.36x at 4 clients). Here every request joins the running batch at
the next step and leaves it when it ends:

- a new request is prefilled alone (its prompt, its adapter), then its KV cache is left-padded
  into the batch's; each step feeds every row its last token at its own position (position_ids),
  the attention mask hides the padding, and peft's adapter_names gives each row its persona;
- each row samples with its own settings: repetition penalty over its reply's tokens, temperature
  (0 = greedy), top_p, and its own torch.Generator when it has a seed (no top_k: the request's
  settings are the whole story);
- a row that ends (its stop token, its max_tokens, its caller gone) leaves at once; the padding
  columns no row needs any more are cut off.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from recipe_runner.use.replies import BASE, Reply, Sampling

GATHER_S = 0.02  # an idle engine waits this long after a request for others sent at the same moment


@dataclass
class Job:
    name: str
    ids: torch.Tensor  # (1, prompt length)
    sampling: Sampling
    out: queue.Queue = field(default_factory=queue.Queue)  # text pieces, then a Reply or an exception
    gone: threading.Event = field(default_factory=threading.Event)  # the caller stopped reading


@dataclass
class Row:
    job: Job
    position: int  # the next token's position: tokens so far in this row, padding not counted
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    sent: str = ""


class Batcher:
    def __init__(self, personas, size: int):
        from recipe_runner.data.chat_format import stop_ids

        self.personas, self.size, self.jobs = personas, size, queue.Queue()
        self.stops = set(stop_ids(personas.tokenizer))
        self.sizes: Counter = Counter()  # rows in a decoding step -> how many steps ran with it
        self.rows: list[Row] = []
        self.cache = None  # the batch's KV cache (DynamicCache), rows in self.rows' order
        self.mask: torch.Tensor | None = None  # (rows, columns): 1 where a row has a real token
        threading.Thread(target=self.loop, daemon=True, name="batcher").start()

    def submit(self, name: str, ids: torch.Tensor, sampling: Sampling):
        """Yield the reply's text pieces, then the Reply (as Personas.stream does)."""
        job = Job(name, ids, sampling)
        self.jobs.put(job)
        try:
            while True:
                item = job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Reply):
                    return
        finally:
            job.gone.set()

    # -- the loop -------------------------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            try:
                self.admit()
                if self.rows:
                    self.step()
            except BaseException as exc:  # noqa: BLE001 - every row in flight gets it; the engine goes on
                for row in self.rows:
                    row.job.out.put(exc)
                self.rows, self.cache, self.mask = [], None, None

    def admit(self) -> None:
        """Take waiting requests into the batch, up to its size; wait for one when idle."""
        new = []
        if not self.rows:
            new.append(self.jobs.get())
            deadline = time.monotonic() + GATHER_S
            while len(new) < self.size:
                try:
                    new.append(self.jobs.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
        while len(self.rows) + len(new) < self.size:
            try:
                new.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        for job in new:
            try:
                self.prefill(job)
            except BaseException as exc:  # noqa: BLE001 - this request fails; the batch goes on
                job.out.put(exc)

    @torch.no_grad()
    def prefill(self, job: Job) -> None:
        from transformers import DynamicCache

        p = self.personas
        ids = job.ids.to(p.device)
        out = p.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(),
                      use_cache=True, adapter_names=[adapter(job.name)])
        seed = job.sampling.seed
        generator = None if seed is None else torch.Generator(device=p.device).manual_seed(int(seed) % 2**63)
        row = Row(job, ids.shape[1], generator)
        if self.choose_and_emit(row, out.logits[0, -1]):
            return  # done at its first token: it never joins the batch
        self.join(row, out.past_key_values)

    def join(self, row: Row, cache) -> None:
        """The row's cache (1 x columns) left-padded into the batch's (rows x columns), or the batch's."""
        from transformers import DynamicCache

        mask = torch.ones((1, row.position), dtype=torch.long, device=self.personas.device)
        if self.cache is None:
            self.rows, self.cache, self.mask = [row], cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        layers = []
        for old, new in zip(self.cache.layers, cache.layers):
            layers.append(tuple(torch.cat([left_pad(a, width), left_pad(b, width)]) for a, b in
                                ((old.keys, new.keys), (old.values, new.values))))
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([left_pad(self.mask, width, dim=1), left_pad(mask, width, dim=1)])
        self.rows.append(row)

    @torch.no_grad()
    def step(self) -> None:
        p = self.personas
        self.sizes[len(self.rows)] += 1
        ids = torch.tensor([[r.tokens[-1]] for r in self.rows], device=p.device)
        positions = torch.tensor([[r.position] for r in self.rows], device=p.device)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long, device=p.device)], 1)
        # no padding (one row, or rows of one length): no mask, so attention takes its unmasked path
        mask = None if bool(self.mask.all()) else self.mask
        out = p.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache,
                      use_cache=True, adapter_names=[adapter(r.job.name) for r in self.rows])
        self.cache = out.past_key_values
        keep = []
        for i, row in enumerate(self.rows):
            row.position += 1
            if not self.choose_and_emit(row, out.logits[i, -1]):
                keep.append(i)
        if len(keep) < len(self.rows):
            self.leave(keep)

    def leave(self, keep: list[int]) -> None:
        """Drop the rows that ended; cut the columns of padding that every remaining row has."""
        from transformers import DynamicCache

        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        mask = self.mask.index_select(0, index)
        start = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        self.mask = mask[:, start:]
        self.cache = DynamicCache(ddp_cache_data=[
            (layer.keys.index_select(0, index)[:, :, start:], layer.values.index_select(0, index)[:, :, start:])
            for layer in self.cache.layers])

    # -- one row's token ------------------------------------------------------------------------------

    def choose_and_emit(self, row: Row, logits: torch.Tensor) -> bool:
        """Pick the row's next token, send its text; True when the row has ended."""
        token = pick(logits.float(), row.tokens, row.job.sampling, row.generator)
        job, tokenizer = row.job, self.personas.tokenizer
        row.tokens.append(token)
        if token in self.stops:
            return self.finish(row, "stop")
        text = tokenizer.decode(row.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(row.sent):  # never half a character
            job.out.put(text[len(row.sent):])
            row.sent = text
        if len(row.tokens) >= job.sampling.max_new_tokens:
            return self.finish(row, "length")
        if job.gone.is_set():  # nobody reads it: stop spending on it
            return self.finish(row, "stop")
        return False

    def finish(self, row: Row, reason: str) -> bool:
        text = self.personas.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if len(text) > len(row.sent):
            row.job.out.put(text[len(row.sent):])
        row.job.out.put(Reply(text.strip(), int(row.job.ids.shape[1]), len(row.tokens), reason))
        return True


def adapter(name: str) -> str:
    return "__base__" if name == BASE else name


def left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """Zeros before the tensor along dim (the column axis: 2 for a cache layer, 1 for the mask)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def pick(logits: torch.Tensor, reply: list[int], s: Sampling, generator: torch.Generator | None) -> int:
    """The next token: the repetition penalty over the reply's tokens (as Personas: never the prompt's),
    then greedy, or temperature and top_p and one draw."""
    if s.repetition_penalty != 1.0 and reply:
        seen = torch.tensor(sorted(set(reply)), device=logits.device)
        scores = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(scores < 0, scores * s.repetition_penalty, scores / s.repetition_penalty)
    if s.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > s.top_p  # keep the smallest set holding top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))

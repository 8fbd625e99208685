"""Concurrent requests to the in-process engine generated as one batch (serve.engine=transformers).

One generation at a time leaves a CPU mostly waiting on per-step overhead (SmolLM2-135M: ~8.5
tok/s for one stream on 2 cores, at 17 % of what memory bandwidth allows); four rows in one
forward pass cost little more than one. So requests that arrive together (within GATHER_S of the
first) are left-padded into one `generate` call of up to serve.max_concurrent rows, each row with
its own persona (peft's adapter_names mixes adapters in a batch), its own max_tokens and its own
stop; a row that ends early is padded while the others go on. Rows must share temperature, top_p
and repetition penalty (they are one generate call's settings); a request with other settings
waits for the next batch, and a request with a seed runs alone, so that its reply is the one it
would get by itself. Static batching: a request arriving mid-batch waits for the batch to end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from recipe_runner.use.personas import BASE, Reply, Sampling

GATHER_S = 0.02  # how long the first request waits for others: clients answered together come back within ~ms


@dataclass
class Job:
    name: str
    ids: torch.Tensor  # (1, prompt length)
    sampling: Sampling
    out: queue.Queue = field(default_factory=queue.Queue)  # text pieces, then a Reply or an exception
    gone: threading.Event = field(default_factory=threading.Event)  # the caller stopped reading

    def key(self):
        s = self.sampling
        return None if s.seed is not None else (s.temperature, s.top_p, s.repetition_penalty)


class Batcher:
    def __init__(self, personas, size: int):
        self.personas, self.size, self.jobs = personas, size, queue.Queue()
        self.waiting: list[Job] = []  # taken from the queue but not fitting the last batch
        self.sizes: Counter = Counter()  # batch size -> how many batches ran with it
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

    def next_batch(self) -> list[Job]:
        first = self.waiting.pop(0) if self.waiting else self.jobs.get()
        batch, deadline = [first], time.monotonic() + GATHER_S
        if first.key() is None:
            return batch
        keep = []
        for job in self.waiting:  # the ones left over from before come first
            (batch if job.key() == first.key() and len(batch) < self.size else keep).append(job)
        while len(batch) < self.size:
            try:
                job = self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            (batch if job.key() == first.key() else keep).append(job)
        self.waiting = keep
        return batch

    def loop(self) -> None:
        while True:
            batch = self.next_batch()
            self.sizes[len(batch)] += 1
            try:
                self.generate(batch)
            except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets it; the loop goes on
                for job in batch:
                    job.out.put(exc)

    def generate(self, batch: list[Job]) -> None:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria
        from transformers import StoppingCriteriaList

        from recipe_runner.data.chat_format import pad_id, stop_ids

        p = self.personas
        pad, stops = pad_id(p.tokenizer), set(stop_ids(p.tokenizer))
        width = max(j.ids.shape[1] for j in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, job in enumerate(batch):  # left padding: every row's next token is at the same position
            ids[row, width - job.ids.shape[1]:] = job.ids[0]
            mask[row, width - job.ids.shape[1]:] = 1
        rows = Rows(batch, p.tokenizer, stops)

        class Done(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.tensor(rows.done, dtype=torch.bool, device=input_ids.device)

        s = batch[0].sampling
        if s.seed is not None:
            torch.manual_seed(s.seed)
        penalty = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(
            s.repetition_penalty, prompt_ignore_length=width)]) if s.repetition_penalty != 1.0 else None
        sample = s.temperature > 0
        try:
            with torch.no_grad():
                p.model.generate(
                    input_ids=ids.to(p.device), attention_mask=mask.to(p.device),
                    max_new_tokens=max(j.sampling.max_new_tokens for j in batch), do_sample=sample,
                    temperature=s.temperature if sample else None, top_p=s.top_p if sample else None,
                    logits_processor=penalty, eos_token_id=sorted(stops), pad_token_id=pad, streamer=rows,
                    stopping_criteria=StoppingCriteriaList([Done()]),
                    adapter_names=["__base__" if j.name == BASE else j.name for j in batch])
        except BaseException as exc:  # noqa: BLE001 - the rows not yet answered get the error
            for row, job in enumerate(batch):
                if not rows.done[row]:
                    rows.done[row] = True
                    job.out.put(exc)
            return
        rows.finish_all()


class Rows:
    """generate's streamer for a batch: each step's tokens split by row into each job's queue as text."""

    def __init__(self, batch: list[Job], tokenizer, stops: set[int]):
        self.batch, self.tokenizer, self.stops = batch, tokenizer, stops
        self.tokens: list[list[int]] = [[] for _ in batch]
        self.sent = [""] * len(batch)
        self.done = [False] * len(batch)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.batch), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            job = self.batch[row]
            self.tokens[row].append(token)
            if token in self.stops:
                self.finish(row, "stop")
                continue
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > len(self.sent[row]):  # never half a character
                job.out.put(text[len(self.sent[row]):])
                self.sent[row] = text
            if len(self.tokens[row]) >= job.sampling.max_new_tokens:
                self.finish(row, "length")
            elif job.gone.is_set():  # nobody reads it: stop spending on it
                self.finish(row, "stop")

    def finish(self, row: int, reason: str) -> None:
        job, self.done[row] = self.batch[row], True
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if len(text) > len(self.sent[row]):
            job.out.put(text[len(self.sent[row]):])
        job.out.put(Reply(text.strip(), int(job.ids.shape[1]), len(self.tokens[row]), reason))

    def end(self) -> None:
        pass

    def finish_all(self) -> None:
        for row in range(len(self.batch)):
            if not self.done[row]:
                self.finish(row, "length")

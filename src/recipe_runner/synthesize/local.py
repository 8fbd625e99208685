"""The synthesize stage's generator on a local transformers model: no endpoint, no key, no cost per token.

Requests run in batches in the caller's thread. Each batch holds prompts of similar length
(sorted, so left padding stays short) and generates up to its longest max_tokens; each reply is
then cut at its own max_tokens, so a request gets exactly what it would have got alone, apart
from sampling. Token counts are exact (the prompt as the chat template tokenizes it, the reply up
to and including its end-of-turn token), and the budget reserves prompt + max_tokens, which a
reply cannot pass. With a seed, batch i samples from torch.manual_seed(seed + i): the same
requests give the same replies.
"""

from __future__ import annotations

from typing import Callable

from recipe_runner.data.chat_format import stop_ids
from recipe_runner.synthesize.budget import Budget
from recipe_runner.synthesize.requests import BudgetExhausted, Reply, Request


class LocalGenerator:
    def __init__(self, model_path: str, *, temperature: float, top_p: float, seed: int | None, budget: Budget,
                 batch_size: int = 8, device: str | None = None):
        """model_path: a local folder, already resolved (the caller turns embedded:NAME into one)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from recipe_runner.model.safe_load import CODE, MODEL

        self.name = f"local:{model_path}"
        self.budget, self.batch_size = budget, batch_size
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float32 if not str(self.device).startswith("cuda") else (
            torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, **CODE)
        self.tokenizer.padding_side = "left"  # every row's next token in the last column
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **MODEL).to(self.device).eval()
        self.stops = stop_ids(self.tokenizer)

    def complete(self, requests: list[Request], on_reply: Callable[[Reply], None]) -> None:
        """Batches of batch_size, shortest prompts first; on_reply runs here, in the caller's thread."""
        encoded = sorted(((r, self.encode(r)) for r in requests), key=lambda pair: len(pair[1]))
        for index, start in enumerate(range(0, len(encoded), self.batch_size)):
            wanted = encoded[start : start + self.batch_size]
            batch = self._reserve(wanted)
            for reply in self._generate(batch, index):
                on_reply(reply)
            if len(batch) < len(wanted):
                unanswered = len(encoded) - start - len(batch)
                raise BudgetExhausted(f"generator budget spent ({self.budget.left()}): "
                                      f"{unanswered} of {len(requests)} requests unanswered")

    def encode(self, request: Request) -> list[int]:
        return self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True)["input_ids"]

    def _reserve(self, wanted: list[tuple[Request, list[int]]]) -> list[tuple[Request, list[int]]]:
        """The leading requests of the batch that the budget covers, each reserved at prompt + max_tokens."""
        batch = []
        for request, ids in wanted:
            if not self.budget.reserve(len(ids) + request.max_tokens):
                break
            batch.append((request, ids))
        return batch

    def _generate(self, batch: list[tuple[Request, list[int]]], index: int) -> list[Reply]:
        import torch

        if not batch:
            return []
        if self.seed is not None:
            torch.manual_seed(self.seed + index)
        enc = self.tokenizer.pad([{"input_ids": ids} for _, ids in batch], return_tensors="pt").to(self.device)
        sample = self.temperature > 0
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max(r.max_tokens for r, _ in batch), do_sample=sample,
                                      temperature=self.temperature if sample else None,
                                      top_p=self.top_p if sample else None, eos_token_id=self.stops,
                                      pad_token_id=self.tokenizer.pad_token_id)
        width = enc["input_ids"].shape[1]
        return [self._reply(request, ids, out[row, width:].tolist()) for row, (request, ids) in enumerate(batch)]

    def _reply(self, request: Request, ids: list[int], new: list[int]) -> Reply:
        """The reply cut at its own max_tokens and at its first end-of-turn token, which it includes."""
        new = new[: request.max_tokens]
        end = next((i + 1 for i, token in enumerate(new) if token in self.stops), None)
        tokens = new[:end] if end else new
        self.budget.settle(len(ids) + request.max_tokens, len(ids) + len(tokens))
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return Reply(request.key, text or None, "stop" if end else "length", len(ids), len(tokens),
                     None if text else "empty content")

    def close(self) -> None:
        import torch

        self.model = None
        if str(self.device).startswith("cuda"):
            torch.cuda.empty_cache()

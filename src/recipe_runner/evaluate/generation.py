"""Batched greedy generation and teacher-forced answer likelihood, for the evaluation checks.

Prompts are left-padded so every row's next token sits in the last column; greedy decoding
(do_sample=False) makes the answers a function of the weights alone, so two epochs differ only
because the adapter did. `adapter=False` runs the same PEFT model with its adapter disabled,
which is the base model: the baseline needs no second copy of the weights in memory.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from recipe_runner.train.sharding import is_sharded
from recipe_runner.data.chat_format import end_of_turn_id, pad_id, stop_ids
from recipe_runner.data.templates import strip


@contextlib.contextmanager
def evaluating(model, adapter: bool = True):
    """eval mode, no grad, KV cache on, optionally the adapter off; restores the training state."""
    was_training = model.training
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    use_cache = getattr(base.config, "use_cache", True)
    off = model.disable_adapter() if (not adapter and hasattr(model, "disable_adapter")) else contextlib.nullcontext()
    model.eval()
    base.config.use_cache = True
    try:
        with torch.no_grad(), off:
            yield model
    finally:
        base.config.use_cache = use_cache
        model.train(was_training)


def render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(strip(messages), tokenize=False, add_generation_prompt=True)


def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
             adapter: bool = True, repetition_penalty: float = 1.0) -> list[str]:
    """The model's greedy reply to each conversation (which ends on a user turn).

    A repetition penalty > 1 keeps a 135M model out of "I'm not sure. I'm not sure. ..." loops,
    which would otherwise dominate the sentence-count and marker checks; decoding stays greedy.
    The penalty covers the reply's own tokens only. transformers' `repetition_penalty` also
    penalises every prompt token, so the persona's name and the markers its system prompt spells
    out ("yo") were pushed down: the check punished the persona for speaking as told (on 8
    held-out prompts the tuned model wrote its own name in 2 answers at 1.2 vs 6 at 1.0)."""
    device = next(model.parameters()).device
    sharded = is_sharded(model)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = pad_id(tokenizer)
    replies: list[str] = []
    try:
        with evaluating(model, adapter):
            for i in range(0, len(conversations), batch_size):
                texts = [render(tokenizer, c) for c in conversations[i : i + batch_size]]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                # synced: under fsdp a rank whose rows all ended keeps stepping until every rank's have,
                # since each step gathers every layer's weights from all ranks
                # left padding: every row's prompt ends at the same column, so one length covers the batch
                penalty = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(
                    repetition_penalty, prompt_ignore_length=enc["input_ids"].shape[1])]) \
                    if repetition_penalty != 1.0 else None
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                     eos_token_id=stop_ids(tokenizer), logits_processor=penalty,
                                     synced_gpus=sharded)
                new = out[:, enc["input_ids"].shape[1]:]
                replies += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return replies


def answer_nll(model, tokenizer, conversations: list[list[dict]], answers: list[str], batch_size: int,
               adapter: bool = True) -> list[float]:
    """Mean negative log-likelihood (nats per token) of each fixed answer given its conversation.

    The forgetting check scores the base model's own answers to everyday prompts: if the tuned
    model finds them less likely than the base did, it has moved away from ordinary behaviour.
    """
    device = next(model.parameters()).device
    eot = end_of_turn_id(tokenizer)
    pad = pad_id(tokenizer)
    scores: list[float] = []
    with evaluating(model, adapter):
        for i in range(0, len(conversations), batch_size):
            rows, spans = [], []
            for convo, answer in zip(conversations[i : i + batch_size], answers[i : i + batch_size]):
                prompt = tokenizer(render(tokenizer, convo), add_special_tokens=False)["input_ids"]
                reply = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eot]
                rows.append(prompt + reply)
                spans.append((len(prompt), len(prompt) + len(reply)))
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, r in enumerate(rows):
                ids[k, : len(r)] = torch.tensor(r)
                mask[k, : len(r)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            token_lp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            for k, (a, b) in enumerate(spans):
                scores.append(float(-token_lp[k, a - 1 : b - 1].mean()))
    return scores

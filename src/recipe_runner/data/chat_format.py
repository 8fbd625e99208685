"""The chat format, described once: what every stage that trains on, generates or exports a chat asks.

- which named chat templates a recipe can ask for (template.chat_template) and how one is applied;
- the token that closes an assistant turn (trained on, so the model learns to stop), the tokens
  generation stops at (evaluation, chat/serve, synthesis, export's generation config, GGUF and
  the Ollama Modelfile), the padding token.

Which sources are plain text (cut into windows of tokens, no dialogue) is the source formats'
registry's to say: `data/corpus.py` `plain_text`, from FORMATS and a table's `columns`.

It imports nothing heavy (no numpy, torch or transformers): validate.py reads it
before anything loads.
"""

from __future__ import annotations

from recipe_runner.errors import RecipeError

# Named templates a recipe can ask for instead of the tokenizer's own (template.chat_template).
NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}


def apply_named_template(tokenizer, name: str) -> None:
    if name == "tokenizer":
        if not tokenizer.chat_template:
            raise RecipeError("template.chat_template=tokenizer but this tokenizer has no chat template; use chatml")
        return
    tokenizer.chat_template = NAMED_TEMPLATES[name]


def end_of_turn_id(tokenizer) -> int:
    """The token the template puts right after an assistant reply (<|im_end|>, <|eot_id|>, ...)."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    tail = rendered[rendered.rindex("pong") + len("pong"):]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    return ids[0] if ids else tokenizer.eos_token_id


def stop_ids(tokenizer) -> list[int]:
    """Where generation stops: end of sequence and the chat template's end of turn (<|im_end|> for ChatML)."""
    return sorted({i for i in (tokenizer.eos_token_id, end_of_turn_id(tokenizer)) if i is not None})


def pad_id(tokenizer) -> int | None:
    """The padding token, or end of sequence for a tokenizer that has none (SmolLM2's has one)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

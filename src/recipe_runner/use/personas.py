"""One base model with several persona adapters on it: what chat and serve talk to.

PersonaCards holds what every serving engine shares: the adapters' cards (all on one base, checked),
the tokenizer, each persona's system prompt and chat template (each persona speaks with the ones it
trained with; the base answers with the whole bible as its prompt when asked for a baseline).
Personas is the in-process engine: the base loads once (float32, or bfloat16 where serve.dtype
says), each adapter is a named peft adapter on it, and every generation names its adapter (peft's
`adapter_names`), so replies for different personas run at the same time, in one batch with
batching.py, without switching a global "active adapter". `base` is the model with no adapter.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import torch

from recipe_runner.data.bible import Bible
from recipe_runner.errors import RecipeError
from recipe_runner.model import safe_load
from recipe_runner.train.adapter_card import CARD, check_base, check_base_source, read_card
from recipe_runner.model.embedded import resolve_model_path
from recipe_runner.use.replies import BASE, Reply, Sampling

class PersonaCards:
    """What every engine shares: the adapters' cards (one base, checked), the tokenizer, each persona's
    system prompt and chat template. An engine adds stream(): Personas below in-process with peft,
    use/engine_llamacpp.py and use/engine_vllm.py through a server process of their own."""

    def __init__(self, adapters: dict[str, Path], cache_dir: str, named_base: str | None = None):
        """adapters: model name -> adapter folder (already resolved); all must share one base.
        named_base: the model.name_or_path the user set; a hub base not in the local cache is
        downloaded only when it is exactly that (train/adapter_card.py check_base_source)."""
        from transformers import AutoTokenizer

        if not adapters:
            raise RecipeError("no adapter to load: set adapter=<folder|run folder|last> or serve.adapters")
        if BASE in adapters:
            raise RecipeError(f"serve.adapters: {BASE!r} is reserved for the base model without an adapter")
        self.folders = {n: Path(p) for n, p in adapters.items()}
        self.cards = {n: read_card(p) for n, p in self.folders.items()}
        first = next(iter(self.cards))
        self.base = self.cards[first]["base"]
        for name in self.cards:
            self.same_base(name, self.cards[name])
        check_base_source(self.folders[first], self.cards[first], named_base)
        self.model_path = resolve_model_path(self.base["name_or_path"], cache_dir)
        check_base(self.folders[first], self.cards[first], self.model_path)
        # a hub base at the revision it trained on (the one check_base_source found cached or was named)
        self.revision = self.base.get("revision") if not Path(self.model_path).is_dir() else None
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, revision=self.revision, **safe_load.CODE)
        self.lock = threading.Lock()  # the tokenizer's chat template is swapped per request

    def same_base(self, name: str, card: dict) -> None:
        """One model holds one base: an adapter trained on another is refused, naming both."""
        if (card["base"]["name_or_path"], card["base"]["weights_sha256"]) != (self.base["name_or_path"],
                                                                               self.base["weights_sha256"]):
            raise RecipeError(f"adapter {name} was trained on {card['base']['name_or_path']} "
                              f"(weights {str(card['base']['weights_sha256'])[:12]}), but the loaded base is "
                              f"{self.base['name_or_path']} (weights {str(self.base['weights_sha256'])[:12]})")

    @property
    def names(self) -> list[str]:
        return [*self.cards, BASE]

    def quantized_in_training(self) -> list[str]:
        """Adapters trained on a 4-bit base: served on the full-precision one, replies can differ slightly."""
        return [n for n, c in self.cards.items() if c["base"].get("quant_in_training", "none") != "none"]

    def system_prompt(self, name: str, baseline_of: str | None = None) -> str | None:
        """A persona's training system prompt; for `base` with baseline_of, the whole bible of that persona."""
        if name != BASE:
            return self.cards[name]["system_prompt"]
        if baseline_of is None:
            return None
        bible = self.cards[baseline_of].get("bible") or {}
        if not bible:
            return self.cards[baseline_of]["system_prompt"]
        return Bible.from_mapping(bible, f"{self.folders[baseline_of] / CARD}: bible").whole_prompt

    def encode(self, name: str, messages: list[dict]) -> torch.Tensor:
        """The conversation through the chat template the persona trained with, ending in the reply's prompt."""
        card = self.cards.get(name) or next(iter(self.cards.values()))
        with self.lock:
            self.tokenizer.chat_template = card["chat_template"] or self.tokenizer.chat_template
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def check_name(self, name: str) -> None:
        if name not in self.names:
            raise KeyError(name)

    def stream(self, name: str, messages: list[dict], sampling: Sampling, ids: torch.Tensor | None = None
               ) -> Iterator[str]:
        """Yield the reply's text as it is generated; the last item is a Reply with the counts.
        `ids`: the conversation already encoded (serve counts the prompt first), not encoded twice."""
        raise NotImplementedError

    def reply(self, name: str, messages: list[dict], sampling: Sampling, ids: torch.Tensor | None = None) -> Reply:
        *_, last = self.stream(name, messages, sampling, ids)
        return last

    def close(self) -> None:
        """Stop what the engine started (a server process); nothing for the in-process one."""


class Personas(PersonaCards):
    """The in-process engine (serve.engine=transformers, and chat): the base in full precision with
    every adapter on it through peft; each generation names its adapter (peft's adapter_names)."""

    def __init__(self, adapters: dict[str, Path], cache_dir: str, device: str | None = None,
                 named_base: str | None = None, batch: int = 1, dtype: str = "float32"):
        """batch > 1: concurrent stream() calls are generated together, up to `batch` rows (batching.py).
        dtype: float32, bfloat16 or auto (serve.dtype)."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        super().__init__(adapters, cache_dir, named_base)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = weights_dtype(str(getattr(dtype, "value", dtype)), self.device)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, revision=self.revision, dtype=dtype,
                                                     **safe_load.MODEL).to(self.device)
        first, *rest = self.folders
        model = PeftModel.from_pretrained(model, self.folders[first], adapter_name=first, **safe_load.ADAPTER)
        for name in rest:
            model.load_adapter(self.folders[name], adapter_name=name, **safe_load.ADAPTER)
        self.model = model.eval()
        self.described = f"transformers in-process, {dtype} on {self.device}".replace("torch.", "")
        self.batcher = None
        if batch > 1:
            from recipe_runner.use.batching import Batcher

            self.batcher = Batcher(self, batch)
            self.described += f", up to {batch} requests batched"

    def add(self, name: str, folder: Path) -> None:
        """Load one more adapter onto the same base (chat's /switch)."""
        if name == BASE:
            raise RecipeError(f"{BASE!r} is reserved for the base model without an adapter")
        card = read_card(folder)
        self.same_base(name, card)
        if name in self.cards:
            self.model.delete_adapter(name)
        self.model.load_adapter(folder, adapter_name=name, **safe_load.ADAPTER)
        self.model.eval()
        self.folders[name], self.cards[name] = Path(folder), card

    def stream(self, name: str, messages: list[dict], sampling: Sampling, ids: torch.Tensor | None = None
               ) -> Iterator[str]:
        """Yield the reply's text as it is generated; the last item is a Reply with the counts.
        `ids`: the conversation already encoded (serve counts the prompt first), not encoded twice."""
        from transformers import TextIteratorStreamer

        self.check_name(name)
        if self.batcher is not None:
            yield from self.batcher.submit(name, self.encode(name, messages) if ids is None else ids, sampling)
            return
        ids = (self.encode(name, messages) if ids is None else ids).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}
        stop = threading.Event()  # set when the caller stops reading (Ctrl-C in chat, a client gone in serve)
        worker = threading.Thread(target=self._generate, args=(name, ids, sampling, streamer, result, stop),
                                  daemon=True)
        worker.start()
        parts = []
        try:
            for piece in streamer:
                if piece:
                    parts.append(piece)
                    yield piece
        finally:
            stop.set()  # a generator closed early stops generating at the next token
            worker.join()  # and the model is free again when the caller goes on (serve gives the slot back)
        if "error" in result:
            raise result["error"]
        yield Reply("".join(parts).strip(), ids.shape[1], result["tokens"], result["finish"])

    def _generate(self, name: str, ids: torch.Tensor, s: Sampling, streamer, result: dict,
                  stop: threading.Event) -> None:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria
        from transformers import StoppingCriteriaList

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        from recipe_runner.data.chat_format import pad_id, stop_ids

        try:
            if s.seed is not None:
                torch.manual_seed(s.seed)
            penalty = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(
                s.repetition_penalty, prompt_ignore_length=ids.shape[1])]) if s.repetition_penalty != 1.0 else None
            sample = s.temperature > 0
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.max_new_tokens,
                    do_sample=sample, temperature=s.temperature if sample else None, top_p=s.top_p if sample else None,
                    logits_processor=penalty, eos_token_id=stop_ids(self.tokenizer), streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([Stopped()]),
                    pad_token_id=pad_id(self.tokenizer),
                    adapter_names=["__base__" if name == BASE else name])
            new = out[0, ids.shape[1]:]
            stops = set(stop_ids(self.tokenizer))
            result["tokens"] = int(new.shape[0])
            result["finish"] = "stop" if new.numel() and int(new[-1]) in stops else "length"
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
            result["error"] = exc
            streamer.end()


def weights_dtype(asked: str, device: str) -> torch.dtype:
    """serve.dtype: auto is bfloat16 where it is fast. On 2 AVX512-BF16 cores, SmolLM2-135M + LoRA took
    76 ms a token in bf16 vs 90 in float32 for one row, 124 vs 185 for four rows with mixed adapters."""
    if asked == "auto":
        from recipe_runner.model.qlora import cpu_has_bf16

        fast = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_bf16()
        return torch.bfloat16 if fast else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[asked]

"""Merged llama weights as GGUF for llama.cpp and Ollama, written with gguf-py, and a Modelfile.

Matches llama.cpp's convert_hf_to_gguf.py for LLaMA: tensors renamed by gguf's tensor name map,
q_proj and k_proj rows PERMUTED from the HF rotary layout (halves) to GGUF's interleaved pairs
(transformers' GGUF loader un-permutes them, so a round trip is exact), a tied lm_head written
only as token_embd (llama.cpp reuses it as the output; transformers then ties it again), norms in
float32 and every matrix in the file's type (f16, or q8_0: blocks of 32 with one f16 scale).
The tokenizer goes in as a gpt2-style byte-level BPE: tokens, types, merges, special ids and the
chat template the persona trained with.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from recipe_runner.errors import RecipeError
from recipe_runner.data.chat_format import end_of_turn_id, stop_ids
from recipe_runner.use.export_console import mb, say

TYPES = ("f16", "q8_0")
# The split as a regex, for readers that take one (tokenizer.ggml.pretokenizer: Ollama's own engine,
# which otherwise assumes Llama 3's); llama.cpp reads tokenizer.ggml.pre. GPT-2's, and SmolLM's
# (single digits first) as one alternation.
SPLITS = {"gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
          "smollm": r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"}


def gguf_types(requested) -> list[str]:
    types = list(dict.fromkeys(str(t) for t in requested))  # in order, once each
    bad = [t for t in types if t not in TYPES]
    if bad or not types:
        raise RecipeError(f"export.gguf_types / serve.gguf_type: {bad or 'empty'}; choose from {list(TYPES)}")
    return types


def check_gguf_base(model_path: str) -> None:
    """Only what this writer describes faithfully: a llama base, default RoPE, no biases, a byte-level BPE."""
    from transformers import AutoConfig, AutoTokenizer

    from recipe_runner.model.safe_load import CODE

    config = AutoConfig.from_pretrained(model_path, **CODE)
    if config.model_type != "llama":
        arch = f" ({', '.join(config.architectures)})" if config.architectures else ""
        raise RecipeError(f"export.format=gguf: the base {model_path} is a {config.model_type} model{arch}; only "
                          f"llama-architecture bases are supported (export.format=merged works for any base)")
    rope_type = rope(config)[1]
    if rope_type != "default":
        raise RecipeError(f"export.format=gguf: the base {model_path} uses {rope_type} RoPE scaling, which this "
                          f"writer does not describe; use export.format=merged and llama.cpp's convert_hf_to_gguf.py")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise RecipeError(f"export.format=gguf: the base {model_path} has attention/MLP biases, which this writer "
                          f"does not write; use export.format=merged and llama.cpp's convert_hf_to_gguf.py")
    spec = json.loads(AutoTokenizer.from_pretrained(model_path, **CODE).backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind != "BPE" or "ByteLevel" not in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]):
        raise RecipeError(f"export.format=gguf: the base {model_path} has a {kind} tokenizer that is not byte-level; "
                          f"only byte-level BPE (gpt2-style) tokenizers are supported")


def rope(config) -> tuple[float, str]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return float(theta), params.get("rope_type", params.get("type", "default")) or "default"


def pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for how text is split before BPE (tokenizer.ggml.pre), read from the tokenizer's
    structure: the split that tokenizes (and detokenizes) as the persona trained."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") or [pre]
    digits = steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
    last = steps[-1]
    if last.get("type") != "ByteLevel" or not last.get("use_regex", True) or len(steps) > (2 if digits else 1):
        return "default"
    # SmolLM's vocabulary holds no token with a digit and anything else, so GPT-2's regex already yields
    # single digits there: "smollm" (single digits, no clean-up of spaces when decoding) is then exact,
    # and it is what llama.cpp's own converter writes for SmolLM2
    single = digits or not any(re.search(r"[0-9]", t) and len(t) > 1 for t in tokenizer.get_vocab())
    if single and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return "smollm"
    return "gpt-2"  # GPT-2's regex: what HF's ByteLevel(use_regex=True) splits by


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's rotate-half rows -> GGUF's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(model):
    """(gguf name, float32 array) per tensor, in llama.cpp's layout."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp uses token_embd as the output when output.weight is absent
        base, _, suffix = hf_name.rpartition(".")
        name = names.get_name(base)
        if name is None:
            raise RecipeError(f"export.format=gguf: no GGUF name for the tensor {hf_name}")
        w = t.detach().float().cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            w = permute(w, config.num_attention_heads, config.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            w = permute(w, config.num_attention_heads, config.num_key_value_heads)
        yield f"{name}.{suffix}", np.ascontiguousarray(w)


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their llama.cpp types and the merges, as convert_hf_to_gguf.py's gpt2 vocab."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    return tokens, [int(t) for t in types], [m if isinstance(m, str) else " ".join(m) for m in merges]


def write_gguf(model, tokenizer, card: dict, path: Path, qtype: str, name: str, merged: bool = True) -> None:
    """model in GGUF: the merged persona (merged=True) or a plain base (gguf_base.py)."""
    import gguf

    config, started = model.config, time.time()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta, _ = rope(config)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(gguf.GGUFType.MODEL)
    if merged:
        w.add_name(f"{card.get('persona') or name} ({Path(card['base']['name_or_path']).name} + LoRA, merged)")
        w.add_description(f"recipe-runner export of the {card.get('recipe')} adapter, epoch {card.get('epoch')}")
    else:
        w.add_name(Path(card["base"]["name_or_path"]).name)
        w.add_description("recipe-runner export of the base model (for GGUF LoRA adapters)")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, merges = vocabulary(tokenizer, config.vocab_size)
    w.add_tokenizer_model("gpt2")
    pre = pre_tokenizer(tokenizer)
    if pre == "default":
        say("the tokenizer's pre-tokenizer is not GPT-2's byte-level split: tokenizer.ggml.pre = default "
            "(llama.cpp may split text differently from training)")
    w.add_tokenizer_pre(pre)
    if pre in SPLITS:
        w.add_string("tokenizer.ggml.pretokenizer", SPLITS[pre])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                       ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if value is not None:
            getattr(w, f"add_{key}_token_id")(value)
    eot = end_of_turn_id(tokenizer)
    if eot is not None and eot != tokenizer.eos_token_id:
        w.add_eot_token_id(eot)
    probe = tokenizer("a")["input_ids"]
    w.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id and len(probe) > 1)
    if card.get("chat_template") or tokenizer.chat_template:
        w.add_chat_template(card.get("chat_template") or tokenizer.chat_template)

    n = 0
    for tname, data in tensors(model):
        n += data.size
        if data.ndim <= 1 or tname.endswith("_norm.weight"):
            w.add_tensor(tname, data.astype(np.float32))
        elif qtype == "q8_0":
            try:
                w.add_tensor(tname, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            except gguf.QuantError:  # rows not a multiple of 32: as convert_hf_to_gguf.py, f16 instead
                w.add_tensor(tname, data.astype(np.float16))
        else:
            w.add_tensor(tname, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    say(f"wrote {path.name}: {n / 1e6:.0f} M parameters, {mb(path.stat().st_size)} in {time.time() - started:.1f} s")


# -- Ollama ------------------------------------------------------------------------------------------

CHATML_TEMPLATE = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                   '{{ end }}<|im_start|>assistant\n')


def chatml(tokenizer, template: str | None) -> tuple[bool, str | None]:
    """Whether the template renders exactly ChatML (probed on a conversation), and the system prompt
    it adds when a conversation has none (SmolLM2's "You are a helpful AI assistant named SmolLM...")."""
    if not template:
        return False, None
    turns = [("system", "S"), ("user", "U"), ("assistant", "A"), ("user", "V")]
    expected = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns) + "<|im_start|>assistant\n"

    def render(messages):
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)

    try:
        if render([{"role": r, "content": c} for r, c in turns]) != expected:
            return False, None
        alone = render([{"role": "user", "content": "U"}])
    except Exception:  # noqa: BLE001 - a template that cannot render these is not ChatML
        return False, None
    head, tail = "<|im_start|>system\n", "<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    default = alone[len(head):-len(tail)] if alone.startswith(head) and alone.endswith(tail) else None
    return True, default


def quoted(text: str) -> str:
    """A Modelfile value in triple quotes. Ollama's parser has no escapes: a value ends at the first
    `\"\"\"` followed by whitespace, so a `\"\"\"` inside the text is broken up (the only change made)."""
    return '"""' + text.replace('"""', '" " "') + '"""'


def preferred(files: dict[str, str]) -> str:
    """Of {type: file name}, the one a Modelfile loads: q8_0 (half the size of f16, near-identical replies)."""
    return files.get("q8_0") or next(iter(files.values()))


def write_modelfile(folder: Path, name: str, source: str, card: dict, tokenizer, sampling,
                    adapter: str | None = None) -> Path:
    """Ollama's Modelfile: FROM the merged GGUF, or FROM the base GGUF with the persona as ADAPTER
    (one base file, several personas), the template, the trained system prompt, stops, sampling."""
    is_chatml, default_system = chatml(tokenizer, card.get("chat_template"))
    system = card.get("system_prompt") or default_system
    lines = [f"# {card.get('persona') or name}: recipe-runner export of {card.get('recipe')} "
             f"(epoch {card.get('epoch')}) on {card['base']['name_or_path']}",
             f"# ollama create {name} -f Modelfile && ollama run {name}", f"FROM ./{source}"]
    if adapter:
        lines.append(f"ADAPTER ./{adapter}")
    if is_chatml:
        lines.append(f"TEMPLATE {quoted(CHATML_TEMPLATE)}")
    else:
        lines.append("# the chat template is not ChatML: Ollama uses the template embedded in the GGUF "
                     "(tokenizer.chat_template)")
        say("the chat template is not ChatML: the Modelfile has no TEMPLATE; Ollama uses the GGUF's embedded "
            "template")
    if system:
        lines.append(f"SYSTEM {quoted(system)}")
    lines += [f'PARAMETER stop "{t}"' for t in tokenizer.convert_ids_to_tokens(stop_ids(tokenizer)) if '"' not in t]
    lines += [f"PARAMETER temperature {sampling.temperature:g}", f"PARAMETER top_p {sampling.top_p:g}",
              f"PARAMETER repeat_penalty {sampling.repetition_penalty:g}",
              f"PARAMETER num_predict {int(sampling.max_new_tokens)}"]
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

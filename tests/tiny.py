"""A tiny random Llama with the real SmolLM2 tokenizer: trains in seconds on a CPU."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


def build_tiny_model(folder: Path, tokenizer_src: str, seed: int = 0, head_dim: int = 16) -> Path:
    """4 heads of head_dim (16: hidden 64, the smallest; vLLM's CPU attention refuses 16, the vLLM test
    uses 64: hidden 256)."""
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_src)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=4 * head_dim, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder

"""A peft LoRA adapter as a GGUF LoRA adapter: what llama.cpp's `--lora` and Ollama's `ADAPTER` load.

Matches llama.cpp's convert_lora_to_gguf.py for LLaMA: general.type = adapter, adapter.type = lora,
adapter.lora.alpha; per adapted matrix `<gguf name>.lora_a` (r x in) and `.lora_b` (out x r), with
q_proj's and k_proj's lora_b rows permuted as the base's rows are (gguf_export.permute acts on the
output rows, so A is untouched). llama.cpp scales by alpha / r, as peft does without rsLoRA; an
rsLoRA adapter (alpha / sqrt(r)) is written with alpha * sqrt(r) so the product is the same.
Tensors are float32: an adapter is a few MB (rank 16 on SmolLM2-135M: 9 MB), and f16 would round
the small B values the training left.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from recipe_runner.errors import RecipeError
from recipe_runner.use.export_console import mb, say
from recipe_runner.use.gguf_export import permute


def lora_scale_alpha(adapter_config: dict, folder: Path) -> float:
    """The alpha llama.cpp needs (it divides by r); adapters it cannot apply are refused by name."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise RecipeError(f"{folder}/adapter_config.json: peft_type {adapter_config.get('peft_type')} is not LoRA; "
                          f"export.format=gguf-lora writes LoRA adapters only (export.format=gguf merges any adapter)")
    for key in ("use_dora", "rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            raise RecipeError(f"{folder}/adapter_config.json: {key} is set, which a GGUF LoRA adapter cannot "
                              f"describe; use export.format=gguf (merged)")
    r, alpha = int(adapter_config["r"]), float(adapter_config["lora_alpha"])
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def check_lora(folder: Path) -> float:
    """Before anything loads: the adapter is one llama.cpp can apply (refused by name otherwise)."""
    from safetensors import safe_open

    alpha = lora_scale_alpha(json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")), folder)
    with safe_open(str(folder / "adapter_model.safetensors"), "np") as f:
        for key in f.keys():
            lora_side(key, folder)
    return alpha


def lora_side(key: str, folder: Path) -> tuple[str, str]:
    """base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> (model.layers.0.self_attn.q_proj, A)."""
    head, _, rest = key.partition(".lora_")
    side = rest[:1]
    if side not in ("A", "B") or not rest.endswith("weight"):
        raise RecipeError(f"{folder}/adapter_model.safetensors: {key} is not a LoRA A or B matrix (an adapter "
                          f"that trains embeddings or norms cannot be written as a GGUF LoRA; use export.format=gguf)")
    return head.removeprefix("base_model.model."), side


def lora_tensors(folder: Path, config) -> dict[str, np.ndarray]:
    """gguf name -> float32 array, from adapter_model.safetensors, in llama.cpp's layout."""
    import gguf
    from safetensors.numpy import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(folder / "adapter_model.safetensors")).items():
        hf, side = lora_side(key, folder)
        pairs.setdefault(hf, {})[side] = value.astype(np.float32)
    out = {}
    for hf, ab in pairs.items():
        name = names.get_name(hf)
        if name is None or set(ab) != {"A", "B"}:
            raise RecipeError(f"{folder}/adapter_model.safetensors: no GGUF tensor for {hf} (or its A/B pair is "
                              f"incomplete)")
        b = ab["B"]
        if hf.endswith("self_attn.q_proj"):
            b = permute(b, config.num_attention_heads, config.num_attention_heads)
        elif hf.endswith("self_attn.k_proj"):
            b = permute(b, config.num_attention_heads, config.num_key_value_heads)
        out[f"{name}.weight.lora_a"] = np.ascontiguousarray(ab["A"])
        out[f"{name}.weight.lora_b"] = np.ascontiguousarray(b)
    return out


def write_gguf_lora(folder: Path, card: dict, model_path: str, path: Path, name: str) -> None:
    """The adapter in `folder` (trained on the base at model_path) as one GGUF LoRA file."""
    import gguf
    from transformers import AutoConfig

    from recipe_runner.model.safe_load import CODE

    started = time.time()
    config = AutoConfig.from_pretrained(model_path, **CODE)
    adapter_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    alpha = lora_scale_alpha(adapter_config, folder)
    arrays = lora_tensors(folder, config)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    w.add_name(f"{card.get('persona') or name} (LoRA on {Path(card['base']['name_or_path']).name})")
    w.add_description(f"recipe-runner export of the {card.get('recipe')} adapter, epoch {card.get('epoch')}")
    for tname, data in arrays.items():
        w.add_tensor(tname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    n = sum(a.size for a in arrays.values())
    say(f"wrote {path.name}: LoRA r={adapter_config['r']} on {len(arrays) // 2} matrices, {n / 1e6:.1f} M parameters, "
        f"{mb(path.stat().st_size)} in {time.time() - started:.1f} s")

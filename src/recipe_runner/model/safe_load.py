"""How every model, tokenizer and adapter is loaded: safetensors only, remote code never trusted.

A shared adapter or a base named in a persona.json is data: loading it must not run code. Pickled
weights (`pytorch_model.bin`, `adapter_model.bin`) can run anything when unpickled, and a
repository's own modelling code (`trust_remote_code`) is code by definition. Every
`from_pretrained` and `load_adapter` in recipe-runner takes its keyword arguments from here, so
the rule is written once.

peft reads a local adapter folder's `adapter_model.safetensors` when it is there but falls back
to `adapter_model.bin` whatever it is told, so adapter folders are also checked before anything
loads (`train/adapter_card.py` `read_card`).
"""

from __future__ import annotations

# AutoModel*.from_pretrained: weights from *.safetensors only, no code from the repository
MODEL = {"use_safetensors": True, "trust_remote_code": False}
# AutoTokenizer / AutoConfig.from_pretrained: no code from the repository
CODE = {"trust_remote_code": False}
# PeftModel.from_pretrained / load_adapter (the folder is checked for adapter_model.safetensors first)
ADAPTER = {"use_safetensors": True}

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_ADAPTER = "adapter_model.bin"

"""The model builder: real bitsandbytes 4-bit layers, a peft adapter, partial checkpointing."""

import torch

from omegaconf import OmegaConf

from recipe_runner.qlora import build_model
from recipe_runner.schema import LoraConfig, ModelConfig


def test_qlora_builds_nf4_base_with_float32_adapter(tiny_model):
    import bitsandbytes as bnb

    mcfg = OmegaConf.structured(ModelConfig(quant="nf4", gradient_checkpointing=True, checkpoint_fraction=0.5))
    model = build_model(mcfg, OmegaConf.structured(LoraConfig(r=4, alpha=8)), str(tiny_model), "bf16-mixed")
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # 2 layers x 7 target projections
    assert four_bit[0].weight.quant_state.quant_type == "nf4"
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert model.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16
    flags = [layer.gradient_checkpointing for layer in model.get_base_model().model.layers]
    assert flags == [False, True]  # fraction 0.5 of 2 layers: every other one


def test_plain_lora_keeps_full_precision_base(tiny_model):
    mcfg = OmegaConf.structured(ModelConfig(quant="none"))
    model = build_model(mcfg, OmegaConf.structured(LoraConfig(r=4, alpha=8)), str(tiny_model), "32-true")
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.float32 and not q.base_layer.weight.requires_grad
    assert q.lora_A["default"].weight.requires_grad

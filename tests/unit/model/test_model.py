"""The model builder: real bitsandbytes 4-bit layers, a peft adapter, partial checkpointing."""

import torch

from omegaconf import OmegaConf

from recipe_runner.model.qlora import build_model
from recipe_runner.config.schema import LoraConfig, ModelConfig


def test_qlora_builds_nf4_base_with_float32_adapter(tiny_model):
    import bitsandbytes as bnb

    mcfg = OmegaConf.structured(ModelConfig(quant="nf4", gradient_checkpointing=True, checkpoint_fraction=0.5))
    model = build_model(mcfg, OmegaConf.structured(LoraConfig(r=4, alpha=8)), str(tiny_model), "bf16-mixed")
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # 2 layers x 7 target projections
    assert four_bit[0].weight.quant_state.quant_type == "nf4"
    assert four_bit[0].weight.quant_state.nested  # model.double_quant (default true): the scales are quantized too
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert model.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16
    flags = [layer.gradient_checkpointing for layer in model.get_base_model().model.layers]
    assert flags == [False, True]  # fraction 0.5 of 2 layers: every other one


def test_double_quant_off_leaves_the_scales_in_float(tiny_model):
    import bitsandbytes as bnb

    mcfg = OmegaConf.structured(ModelConfig(quant="nf4", double_quant=False))
    model = build_model(mcfg, OmegaConf.structured(LoraConfig(r=4, alpha=8)), str(tiny_model), "32-true")
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and not any(m.weight.quant_state.nested for m in four_bit)


def test_plain_lora_keeps_full_precision_base(tiny_model):
    mcfg = OmegaConf.structured(ModelConfig(quant="none"))
    model = build_model(mcfg, OmegaConf.structured(LoraConfig(r=4, alpha=8)), str(tiny_model), "32-true")
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.float32 and not q.base_layer.weight.requires_grad
    assert q.lora_A["default"].weight.requires_grad


def test_gradients_survive_an_eval_forward(tiny_model):
    """Validation and generation run the 4-bit layers in eval mode without grad; bitsandbytes would
    then repack the weights for CPU inference, after which no gradient reached the earlier layers."""
    import bitsandbytes as bnb

    mcfg = OmegaConf.structured(ModelConfig(quant="nf4"))
    model = build_model(mcfg, OmegaConf.structured(LoraConfig(r=4, alpha=8, dropout=0.0)), str(tiny_model),
                        "bf16-mixed")
    assert all(not m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # peft starts B at zero; give every layer a gradient path
    ids = torch.randint(0, 1000, (2, 16))

    def first_layer_grad() -> torch.Tensor:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        return model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight.grad.clone()

    before = first_layer_grad()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)  # what every validation step does
    model.train()
    assert before.norm() > 0 and torch.equal(first_layer_grad(), before)

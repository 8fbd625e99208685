"""The model: base weights (4-bit NF4 through bitsandbytes, or full precision) + a peft LoRA.

Weights load as safetensors and remote code is never trusted: a shared recipe cannot make
this process run code from a model repository.
"""

from __future__ import annotations

import torch

from recipe_runner.config.schema import ModelConfig, LoraConfig, Quant
from recipe_runner.model import safe_load

DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": torch.float32}


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """auto: bf16 autocast where the hardware does bf16 (2.6x faster than fp32 on an AVX512-BF16
    CPU for SmolLM2-135M fwd+bwd: 3.9 s vs 10.2 s for 4x512 tokens), else fp16 on GPU, fp32 on CPU."""
    if precision != "auto":
        return precision
    if uses_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def enable_checkpointing(model, fraction: float) -> None:
    """Recompute activations in an evenly spaced `fraction` of the decoder layers.

    SmolLM2-135M on 2 CPU cores, 2 x 512-token rows: no checkpointing 358 tok/s at 3.5 GB peak
    RSS, every layer 208 tok/s at 1.6 GB; half of them sits in between on both.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for i, layer in enumerate(layers):  # fraction 0.5 -> layers 1, 3, 5, ...
        layer.gradient_checkpointing = int((i + 1) * fraction) > int(i * fraction)


def keep_4bit_trainable(model) -> int:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights; returns the layers touched.

    On a CPU with AVX512-BF16, the first forward of a Linear4bit in eval mode without grad (every
    validation, every generated answer) repacks its weight for `gemv_4bit`, permanently, and
    gemv_4bit has no autograd kernel: afterwards no gradient flows back through the frozen layers.
    Measured on SmolLM2 after one validation-style forward: the LoRA gradient of layer 0 fell from
    norm 1.39 to 0.0002 (layer 29 unchanged), so only the last layers kept learning from the
    second epoch on. Inference stays correct without the repacking, only a little slower.
    """
    touched = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


def load_base(mcfg: ModelConfig, path: str, dtype: torch.dtype, device_map=None, sharded: bool = False):
    """The frozen base as the run stores it: 4-bit (model.quant) computing in `dtype`, or in `dtype`.
    Training (build_model) and the self-distilled general data (data/self_distill.py) load it here."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = dict(
        dtype=dtype,
        **safe_load.MODEL,
        attn_implementation=mcfg.attn_implementation,
        revision=mcfg.revision,
    )
    quant = Quant(mcfg.quant)
    if quant is not Quant.none:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.value,
            bnb_4bit_use_double_quant=mcfg.double_quant,
            bnb_4bit_compute_dtype=dtype,
            # fsdp shards the packed 4-bit bytes like any other weight: stored in the compute dtype, a
            # layer's quantized and LoRA weights share one dtype (bitsandbytes' FSDP-QLoRA setting)
            **({"bnb_4bit_quant_storage": dtype} if sharded else {}),
        )
        if device_map is not None:
            kwargs["device_map"] = device_map
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def build_model(mcfg: ModelConfig, lcfg: LoraConfig, path: str, precision: str, device_map=None,
                sharded: bool = False):
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    # Frozen weights (embeddings, norms, and the base itself under quant=none) are stored in the
    # compute dtype: under bf16 autocast an fp32 residual stream only doubles activation memory.
    # The LoRA weights peft adds stay float32 for the optimizer.
    model = load_base(mcfg, path, DTYPES[precision], device_map, sharded)
    model.config.use_cache = False  # no KV cache in training; also lets packed rows be detected
    keep_4bit_trainable(model)
    if mcfg.full_finetune:
        if mcfg.gradient_checkpointing:
            enable_checkpointing(model, mcfg.checkpoint_fraction)
        return model
    # Not peft's prepare_model_for_kbit_training: it upcasts every frozen non-4-bit weight to fp32.
    for p in model.parameters():
        p.requires_grad_(False)
    if mcfg.gradient_checkpointing:
        enable_checkpointing(model, mcfg.checkpoint_fraction)
        model.enable_input_require_grads()
    target = lcfg.target_modules[0] if list(lcfg.target_modules) == ["all-linear"] else list(lcfg.target_modules)
    peft_cfg = PeftLoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                              target_modules=target, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)

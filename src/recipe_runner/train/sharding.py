"""train.strategy=fsdp: the model's weights, gradients and optimizer state sharded over the ranks.

PyTorch's FSDP2 (`fully_shard`) through Lightning's ModelParallelStrategy, not Lightning's
FSDPStrategy: FSDP1 refuses to run without an accelerator, FSDP2 runs on the gloo backend too,
so the same code path is tested on a CPU. Each decoder layer is one shard unit (its weights are
gathered just before it runs and freed after); the embeddings, final norm and lm_head belong to
the root unit.

Two rules follow from sharding, and this module holds both:
- Every use of the model goes through the root's forward (`Root`): our training objective calls
  the decoder and lm_head separately, and generation loops over many forwards, neither of which
  is the model's own forward, so the root's gather-before / free-after hooks would never fire.
- Every rank takes part in every forward, the evaluation's generations included, and in every
  gathering of the adapter's weights for a save (`full_trainable_state`).

4-bit weights: bitsandbytes packs NF4 into `bnb_4bit_quant_storage`, set to the compute dtype
under fsdp (qlora.build_model) as bitsandbytes documents for sharding. Measured on the tiny test
Llama, 2 gloo ranks: the sharded QLoRA model gives the unsharded model's loss to the last digit
(10.853990 both) in float32 and in bf16.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import ModelParallelStrategy


class FSDPStrategy(ModelParallelStrategy):
    """ModelParallelStrategy with every rank in one data-parallel group (no tensor parallelism).

    Its own defaults split ranks into nodes x GPUs-per-node for 2-D parallelism; pure FSDP wants a
    single data-parallel dimension of size world_size. Checkpoints are full files (rank 0 writes
    `last.ckpt`), like every other strategy's, so train.resume works alike.
    """

    strategy_name = "fsdp"

    def __init__(self, **kwargs):
        super().__init__(save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def lightning_module_state_dict(self) -> dict:
        """The trainable weights only, gathered whole (rank 0 keeps them): the checkpoint holds the
        adapter (PersonaModule.on_save_checkpoint), so gathering the frozen 4-bit base to rank 0
        every epoch (35 GB for a 70B model) would only be thrown away."""
        state = full_trainable_state(self.lightning_module)
        return state if self.global_rank == 0 else {}


class Root(torch.nn.Module):
    """The root shard unit: `root(fn, *args)` runs `fn(model, *args)` inside the root's forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def layer_classes(model) -> set[type]:
    """The decoder layer classes (transformers' `_no_split_modules`: LlamaDecoderLayer ...)."""
    names = set()
    for m in model.modules():
        names |= set(getattr(m, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def shard(model, mesh) -> Root:
    """Shard each decoder layer, then the rest as the root unit; returns the root to call through."""
    from torch.distributed.fsdp import fully_shard

    layers = layer_classes(model)
    if not layers:
        raise ValueError(f"train.strategy=fsdp: {type(model).__name__} names no decoder layer class "
                         "(_no_split_modules) to shard by")
    for m in list(model.modules()):
        if type(m) in layers:
            fully_shard(m, mesh=mesh)
    return fully_shard(Root(model), mesh=mesh)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_trainable_state(model) -> dict | None:
    """{name: full CPU tensor} of the trainable (adapter) weights, gathered from every rank.

    A collective: every rank calls it. None when the model is not sharded (save it as it is).
    The names are the unsharded model's own (FSDP2 keeps the module tree), so peft's
    `save_pretrained(folder, state_dict=...)` writes the same files as without sharding.
    """
    if not is_sharded(model):
        return None
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = full.detach().cpu()
    return out


def save_adapter(model, folder, is_global_zero: bool) -> None:
    """Every rank calls it (the gathering is collective); rank 0 writes `folder`."""
    state = full_trainable_state(model)
    if is_global_zero:
        model.save_pretrained(folder) if state is None else model.save_pretrained(folder, state_dict=state)


def local_weight_mb(model, root: Root | None = None) -> float:
    """MB of weights this rank holds at rest: all of them, or its shard under fsdp.

    FSDP2 leaves the root unit gathered after a forward (backward would gather it again at
    once), so the root is resharded first: SmolLM2's 113 MB fp32 embedding is in the root.
    """
    if root is not None:
        root.reshard()
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.nelement() * local.element_size()
    return total / 2**20

"""The Lightning module: the training objective on supervised tokens only, per-source validation loss.

Training objective (train.loss, train.kl_to_base):
  - `ce` (default): mean next-token cross-entropy over supervised (labelled) tokens.
  - `eaft`: Entropy-Adaptive Fine-Tuning (arXiv 2601.02151): each token's cross-entropy times the
    normalised top-k entropy of the model's own prediction there (train.eaft_top_k, detached, in
    [0, 1]), summed and divided by the number of supervised tokens. Confident predictions weigh
    less, which the paper finds reduces forgetting. Logs train/eaft_weight_mean.
  - kl_to_base > 0 adds kl_to_base x KL(p_tuned || p_base), averaged over the supervised tokens
    of general-role sources, p_base being the same peft model with its adapter disabled (one
    extra no-grad forward, only on batches that carry general tokens). Logs train/kl_to_base.
Validation is always plain cross-entropy, so val/loss compares across objectives.

The vocabulary projection runs only where a label exists: SmolLM2's lm_head is 576 x 49,152
(28 M MACs per token, ~21 % of the model's compute), and with assistant-only loss most
positions have no label, so `hidden[labels != -100] @ W` skips most of that work and the
N x 49,152 float logits it would allocate.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from recipe_runner.errors import RecipeError
from recipe_runner.train.losses import eaft_weights, kl_to_base, token_ce
from recipe_runner.config.schema import Loss, Role
from recipe_runner.data.templates import IGNORE
from recipe_runner.train.sharding import local_weight_mb

ROLES = tuple(r.value for r in Role)  # supervised tokens are counted per role


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def next_token_hidden(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder hidden states at positions 0..T-2 and the targets they predict (labels 1..T-1)."""
    out = _base(model).get_decoder()(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=batch.get("attention_mask"),
        use_cache=False,
    )
    return out.last_hidden_state[:, :-1], batch["labels"][:, 1:]


def supervised_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and their count."""
    hidden, targets = next_token_hidden(model, batch)
    keep = targets != IGNORE
    logits = _base(model).get_output_embeddings()(hidden[keep]).float()
    return token_ce(logits, targets[keep]).sum(), int(keep.sum())


def base_logits_at(model, batch: dict, where: torch.Tensor) -> torch.Tensor:
    """Logits of the base model (the peft adapter disabled, no gradient) at next-token positions `where`.

    `where` is a (B, T-1) bool mask over next-token positions. Only the rows that hold a True run
    the extra forward, and lm_head runs only on the selected positions.
    """
    rows = where.any(1)
    sub = {k: batch[k][rows] for k in ("input_ids", "position_ids", "labels")}
    if batch.get("attention_mask") is not None:
        sub["attention_mask"] = batch["attention_mask"][rows]
    with torch.no_grad(), model.disable_adapter():
        hidden, _ = next_token_hidden(model, sub)
        return _base(model).get_output_embeddings()(hidden[where[rows]]).float()


def training_objective(model, batch: dict, loss: Loss | str = Loss.ce, eaft_top_k: int = 20,
                       kl_weight: float = 0.0, lockstep: bool = False) -> dict:
    """The training loss of one batch and its parts.

    lockstep (fsdp): every rank must run the same forwards, since each gathers every layer's
    shards from all ranks; a rank whose batch holds no general token then runs the base forward
    of the KL term anyway (on one position) and drops it, instead of waiting forever for the others.

    Returns {"loss": scalar to backpropagate, "n": supervised tokens, "ce": mean plain CE (detached),
    "eaft_weight_mean": mean EAFT weight (eaft only), "kl": mean KL over general tokens (when
    kl_weight > 0 and the batch has general tokens), "n_general": their count, "role_ce": {role:
    (summed CE, supervised tokens)} when the batch marks general tokens}.
    """
    hidden, targets = next_token_hidden(model, batch)
    keep = targets != IGNORE
    n = int(keep.sum())
    head = _base(model).get_output_embeddings()
    general = batch["general"][:, 1:] & keep if kl_weight > 0 and "general" in batch else None
    n_general = int(general.sum()) if general is not None else 0  # targets in general-role examples
    # With KL on, the tuned side is projected in two pieces, general positions first: the base side
    # then projects the very same rows in a matmul of the very same shape, so an unchanged adapter
    # gives bitwise-equal logits (KL exactly 0) instead of ulp noise from a differently blocked GEMM.
    # Same total lm_head work as one projection; per-token CE is concatenated, never the logits.
    pieces = [general, keep & ~general] if n_general else [keep]
    logits = [head(hidden[m]).float() for m in pieces]
    ce = torch.cat([token_ce(lg, targets[m]) for lg, m in zip(logits, pieces)])
    out = {"n": n, "ce": ce.detach().sum() / max(n, 1), "n_general": n_general}
    if "general" in batch:  # per-role sums, for train/loss_niche and train/loss_general
        role = torch.cat([batch["general"][:, 1:][m] for m in pieces])
        out["role_ce"] = {"general": (ce.detach()[role].sum(), int(role.sum())),
                          "niche": (ce.detach()[~role].sum(), int((~role).sum()))}
    if Loss(loss) is Loss.eaft:
        w = torch.cat([eaft_weights(lg, eaft_top_k) for lg in logits])
        # The paper's normalisation: sum(w * ce) / number of supervised tokens, not / sum(w). Low-entropy
        # tokens therefore really shrink the step instead of being re-balanced against the others.
        objective = (w * ce).sum() / max(n, 1)
        out["eaft_weight_mean"] = w.mean() if n else w.new_zeros(())
    else:
        objective = ce.sum() / max(n, 1)
    if n_general:
        kl = kl_to_base(logits[0], base_logits_at(model, batch, general)).mean()
        objective = objective + kl_weight * kl
        out["kl"] = kl
    elif lockstep and general is not None:
        one = torch.zeros_like(general)
        one[0, 0] = True
        base_logits_at(model, batch, one)
    out["loss"] = objective
    return out


class NonFinite(Exception):
    """A step whose loss or gradient is inf or NaN: training stops there (train/fit.py keeps the
    last good adapter and records why)."""


class PersonaModule(L.LightningModule):
    def __init__(self, model, lr: float, weight_decay: float, warmup_ratio: float,
                 val_sources: list[str], val_roles: dict[str, str], loss: Loss | str = Loss.ce,
                 eaft_top_k: int = 20, kl_to_base: float = 0.0):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode: dropout would stay off
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.val_sources, self.val_roles = val_sources, val_roles
        self.loss_kind, self.eaft_top_k, self.kl_weight = Loss(loss), int(eaft_top_k), float(kl_to_base)
        if self.loss_kind is Loss.eaft and self.eaft_top_k < 2:
            raise RecipeError(f"train.eaft_top_k={eaft_top_k}: must be >= 2 (the entropy of one token is always 0)")
        if self.kl_weight < 0 or not math.isfinite(self.kl_weight):
            raise RecipeError(f"train.kl_to_base={kl_to_base}: must be a finite weight >= 0 (0 = off)")
        if self.kl_weight > 0 and not hasattr(model, "disable_adapter"):
            raise RecipeError("train.kl_to_base > 0 needs a LoRA adapter (the base model is the same model with "
                              "the adapter disabled); it does not work with model.full_finetune=true")
        self.strict_loading = False  # checkpoints hold only the trainable (adapter) weights
        self.tokens_seen = 0  # non-pad tokens trained on
        self.supervised_seen = 0  # tokens that carried loss
        self.role_seen: dict[str, int] = {}  # supervised tokens per role (niche, general)
        self.train_seconds = 0.0  # inside training batches (forward, backward, optimizer), no validation
        self._batch_started = 0.0
        self._val = {}
        self._val_reduced = False
        self._rng_states = None  # from a checkpoint, until training resumes
        self._root = []  # under fsdp: [sharding.Root], kept out of the module tree (no second "model." in checkpoints)

    def configure_model(self):
        """train.strategy=fsdp: shard the model over the ranks (Lightning calls this after they start)."""
        from recipe_runner.train.sharding import FSDPStrategy, shard

        if isinstance(self.trainer.strategy, FSDPStrategy) and not self._root:
            self._root.append(shard(self.model, self.device_mesh["data_parallel"]))

    @property
    def root(self):
        """The root shard unit under fsdp (sharding.Root), else None."""
        return self._root[0] if self._root else None

    @property
    def sharded(self) -> bool:
        return self.root is not None

    def call(self, fn, *args, **kwargs):
        """fn(self.model, *args): through the root shard unit under fsdp, directly otherwise."""
        if self.sharded:
            return self.root(fn, *args, **kwargs)
        return fn(self.model, *args, **kwargs)

    def training_step(self, batch, batch_idx):
        parts = self.call(training_objective, batch, self.loss_kind, self.eaft_top_k, self.kl_weight, self.sharded)
        loss, n = parts["loss"], parts["n"]
        if self.any_rank(not torch.isfinite(loss.detach())):
            raise NonFinite(f"the loss is {loss.item()} at step {self.global_step} (batch {batch_idx} of epoch "
                            f"{self.current_epoch}, sources {', '.join(batch.get('sources') or ['?'])})")
        self.tokens_seen += batch["n_real"]
        self.supervised_seen += n
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for role, (total, count) in (parts.get("role_ce") or {"niche": (parts["ce"] * n, n)}).items():
            # is the niche fitted at all? With 1:10 in tokens a micro-batch may carry a few niche tokens, or none
            self.role_seen[role] = self.role_seen.get(role, 0) + count
            if count:
                self.log(f"train/loss_{role}", total / count, batch_size=count)
        if self.loss_kind is not Loss.ce or self.kl_weight > 0:  # train/loss is no longer plain CE
            self.log("train/ce", parts["ce"], batch_size=n)
        if "eaft_weight_mean" in parts:
            self.log("train/eaft_weight_mean", parts["eaft_weight_mean"], batch_size=n)
        if "kl" in parts:
            self.log("train/kl_to_base", parts["kl"].detach(), batch_size=parts["n_general"])
        self.log("train/tokens", float(self.tokens_seen), batch_size=1)
        return loss

    def on_before_optimizer_step(self, optimizer):
        """A finite loss can still give an inf/NaN gradient (an overflow in backward): never step on it."""
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # fsdp: this rank's shard
                 for p in self.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])) \
            if grads else torch.zeros(())
        if self.any_rank(not torch.isfinite(norm)):
            raise NonFinite(f"the gradient norm is {norm.item()} at step {self.global_step} (epoch {self.current_epoch})")

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is true on one (ddp/fsdp: a rank that stopped alone would hang the rest)."""
        if self.trainer.world_size == 1:
            return flag
        return bool(self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum") > 0)

    def on_train_batch_start(self, batch, batch_idx):
        self.restore_rng()
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.train_seconds += time.perf_counter() - self._batch_started

    def on_validation_epoch_start(self):
        self._val = {name: [0.0, 0] for name in self.val_sources}
        self._val_reduced = False

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        loss_sum, n = self.call(supervised_loss, batch)
        acc = self._val[self.val_sources[dataloader_idx]]
        acc[0] += float(loss_sum)
        acc[1] += n

    def val_totals(self) -> dict[str, list]:
        """{source: [summed loss, tokens]} over every rank's share of the validation rows.

        Under DDP each rank validates 1/world of the rows; summing sums and counts (not averaging
        per-rank means) keeps the loss token-weighted. A collective: every rank calls it, once per
        validation, in the same order (EvalChecks first, then on_validation_epoch_end).
        """
        if not self._val_reduced and self.trainer.world_size > 1:
            flat = torch.tensor([x for name in self.val_sources for x in self._val[name]], dtype=torch.float64,
                                device=self.device)
            flat = self.trainer.strategy.reduce(flat, reduce_op="sum").tolist()
            self._val = {name: [flat[2 * i], int(flat[2 * i + 1])] for i, name in enumerate(self.val_sources)}
        self._val_reduced = True
        return self._val

    def on_validation_epoch_end(self):
        """val/loss_<source>, val/loss_<role> (niche, general) and val/loss, all token-weighted."""
        sums = {}
        for name, (s, n) in self.val_totals().items():
            for key in (name, self.val_roles[name], "all"):
                agg = sums.setdefault(key, [0.0, 0])
                agg[0] += s
                agg[1] += n
        for key, (s, n) in sums.items():
            if n:
                metric = "val/loss" if key == "all" else f"val/loss_{key}"
                self.log(metric, s / n, prog_bar=key in ("all", "niche"))  # already summed over ranks

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(total * self.warmup_ratio)

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 10 % of lr
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def summary(self, trainer) -> dict:
        """Its section of summary.json. Every rank trains on its own rows, so the counts are summed
        over ranks (a collective: every rank calls this)."""
        counts = torch.tensor([float(self.tokens_seen), float(self.supervised_seen),
                               float(self.role_seen.get("niche", 0))])
        tokens, supervised, niche = (int(x) for x in trainer.strategy.reduce(counts, reduce_op="sum").tolist())
        return {"trained_tokens": tokens,
                "supervised_tokens": supervised,
                "supervised_niche_tokens": niche,  # how much of the voice the run actually trained on
                "tokens_per_second": tokens / self.train_seconds if self.train_seconds else 0.0,
                "weights_mb_per_rank": local_weight_mb(self.model, self.root)}  # fsdp: this rank's shard

    def on_save_checkpoint(self, checkpoint):
        # keep the adapter (a few MB) and drop the frozen base (540 MB for SmolLM2 in fp32)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["supervised_seen"] = self.supervised_seen
        checkpoint["role_seen"] = self.role_seen
        checkpoint["train_seconds"] = self.train_seconds
        # dropout draws from torch's generators: a run resumed from this step masks as the
        # uninterrupted one did (tensors only: the checkpoint loads with weights_only). Every rank
        # has its own state and rank 0 alone writes the file, so under ddp/fsdp the states are
        # gathered (every rank dumps the checkpoint; this collective runs on all of them)
        checkpoint["rng_states"] = {"cpu": torch.get_rng_state(),
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        if self.trainer.world_size > 1:  # each rank counts its own tokens; summary.json sums them
            counts = [self.tokens_seen, self.supervised_seen, *(self.role_seen.get(r, 0) for r in ROLES),
                      self.train_seconds]
            checkpoint["counters_per_rank"] = self.gathered(torch.tensor(counts, dtype=torch.float64))
            checkpoint["rng_states"]["cpu_per_rank"] = self.gathered(torch.get_rng_state())
            if torch.cuda.is_available() and self.device.type == "cuda":
                checkpoint["rng_states"]["cuda_per_rank"] = self.gathered(torch.cuda.get_rng_state(self.device))

    def gathered(self, state: torch.Tensor) -> torch.Tensor:
        """[world_size, n]: every rank's copy of a same-sized state tensor, on the CPU."""
        return self.trainer.strategy.all_gather(state.to(self.device)).reshape(self.trainer.world_size, -1).cpu()

    def on_load_checkpoint(self, checkpoint):
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.supervised_seen = checkpoint.get("supervised_seen", 0)
        self.role_seen = checkpoint.get("role_seen", {})
        self.train_seconds = checkpoint.get("train_seconds", 0.0)
        if "counters_per_rank" in checkpoint:  # ddp/fsdp: this rank's own counts, not rank 0's
            row = checkpoint["counters_per_rank"][self.trainer.global_rank].tolist()
            self.tokens_seen, self.supervised_seen = int(row[0]), int(row[1])
            self.role_seen = {r: int(c) for r, c in zip(ROLES, row[2:-1]) if c}
            self.train_seconds = row[-1]
        self._rng_states = checkpoint.get("rng_states")  # set just before training resumes

    def restore_rng(self) -> None:
        """A resumed run takes the checkpoint's random state just before its first batch (Lightning
        calls no epoch-start hook when it resumes mid-epoch)."""
        states, rank = self._rng_states, self.trainer.global_rank
        if states is not None:
            # a row of the gathered states is a view into their storage: torch reads the whole storage
            # as the state ("Invalid mt19937 state"), so each row is copied out first
            torch.set_rng_state(states["cpu_per_rank"][rank].clone() if "cpu_per_rank" in states else states["cpu"])
            if "cuda_per_rank" in states and self.device.type == "cuda":
                torch.cuda.set_rng_state(states["cuda_per_rank"][rank].clone(), self.device)
            elif states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            self._rng_states = None

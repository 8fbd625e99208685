"""The Lightning module: cross-entropy on supervised tokens only, per-source validation loss.

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
import torch.nn.functional as F

from .templates import IGNORE


def supervised_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and their count."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = base.get_decoder()(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=batch.get("attention_mask"),
        use_cache=False,
    )
    hidden = out.last_hidden_state[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = base.get_output_embeddings()(hidden[keep]).float()
    loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
    return loss_sum, int(keep.sum())


class PersonaModule(L.LightningModule):
    def __init__(self, model, lr: float, weight_decay: float, warmup_ratio: float,
                 val_sources: list[str], val_roles: dict[str, str]):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode: dropout would stay off
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.val_sources, self.val_roles = val_sources, val_roles
        self.strict_loading = False  # checkpoints hold only the trainable (adapter) weights
        self.tokens_seen = 0  # non-pad tokens trained on
        self.supervised_seen = 0  # tokens that carried loss
        self.train_seconds = 0.0  # inside training batches (forward, backward, optimizer), no validation
        self._batch_started = 0.0
        self._val = {}

    def training_step(self, batch, batch_idx):
        loss_sum, n = supervised_loss(self.model, batch)
        loss = loss_sum / max(n, 1)
        self.tokens_seen += batch["n_real"]
        self.supervised_seen += n
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/tokens", float(self.tokens_seen), batch_size=1)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.train_seconds += time.perf_counter() - self._batch_started

    def on_validation_epoch_start(self):
        self._val = {name: [0.0, 0] for name in self.val_sources}

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        loss_sum, n = supervised_loss(self.model, batch)
        acc = self._val[self.val_sources[dataloader_idx]]
        acc[0] += float(loss_sum)
        acc[1] += n

    def on_validation_epoch_end(self):
        """val/loss_<source>, val/loss_<role> (niche, general) and val/loss, all token-weighted."""
        sums = {}
        for name, (s, n) in self._val.items():
            for key in (name, self.val_roles[name], "all"):
                agg = sums.setdefault(key, [0.0, 0])
                agg[0] += s
                agg[1] += n
        for key, (s, n) in sums.items():
            if n:
                metric = "val/loss" if key == "all" else f"val/loss_{key}"
                self.log(metric, s / n, prog_bar=key in ("all", "niche"), sync_dist=True)

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

    def on_save_checkpoint(self, checkpoint):
        # keep the adapter (a few MB) and drop the frozen base (540 MB for SmolLM2 in fp32)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["supervised_seen"] = self.supervised_seen
        checkpoint["train_seconds"] = self.train_seconds

    def on_load_checkpoint(self, checkpoint):
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.supervised_seen = checkpoint.get("supervised_seen", 0)
        self.train_seconds = checkpoint.get("train_seconds", 0.0)

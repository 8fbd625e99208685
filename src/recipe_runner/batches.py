"""Batches: packed rows with no cross-example attention, or padded batches.

Packing puts several examples into one row of `max_length` tokens. Position ids restart at 0
for every example and the attention mask is left out, so transformers builds a block-diagonal
causal mask from the position ids: no token attends across an example boundary. The first
token of each packed example gets no label (it would be "predicted" from the previous
example's last token). With 150-token dialogues and max_length 512 this removes most of the
padding a pad-to-longest batch carries.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from .manifest import ids_hash
from .templates import IGNORE


def pack(lengths: list[int], max_length: int, seed: int) -> list[list[int]]:
    """First-fit decreasing over a seeded order: rows of example indices, each <= max_length."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    order = sorted(order, key=lambda i: -lengths[i])  # stable: ties keep the seeded order
    rows, room = [], []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(int(i))
                room[r] -= lengths[i]
                break
        else:
            rows.append([int(i)])
            room.append(max_length - lengths[i])
    np.random.default_rng(seed + 1).shuffle(rows)
    return rows


class Rows(torch.utils.data.Dataset):
    """Each item: one row (a packed group of examples, or a single example when not packing)."""

    def __init__(self, ds: Dataset, max_length: int, packing: bool, seed: int):
        cols = ds.select_columns(["input_ids", "labels"])[:]  # one epoch's mix: small, read once
        self.ids, self.labels = cols["input_ids"], cols["labels"]
        lengths = [len(x) for x in self.ids]
        self.rows = pack(lengths, max_length, seed) if packing else [[i] for i in range(len(lengths))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> dict:
        ids, labels, pos = [], [], []
        for i in self.rows[r]:
            ex_labels = list(self.labels[i])
            ex_labels[0] = IGNORE
            ids += self.ids[i]
            labels += ex_labels
            pos += range(len(self.ids[i]))
        return {"input_ids": ids, "labels": labels, "position_ids": pos}


class Collator:
    def __init__(self, pad_id: int, packing: bool):
        self.pad_id, self.packing = pad_id, packing

    def __call__(self, items: list[dict]) -> dict:
        width = max(len(x["input_ids"]) for x in items)
        n = len(items)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for k, x in enumerate(items):
            L_ = len(x["input_ids"])
            ids[k, :L_] = torch.tensor(x["input_ids"])
            labels[k, :L_] = torch.tensor(x["labels"])
            pos[k, :L_] = torch.tensor(x["position_ids"])
            pos[k, L_:] = torch.arange(width - L_)  # padding forms its own block
            mask[k, :L_] = 1
        batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "n_real": int(mask.sum())}
        if not self.packing:
            batch["attention_mask"] = mask
        return batch


class MixDataModule(L.LightningDataModule):
    """Epoch e trains on `mix.train_for_epoch(e)`: a fresh general draw and a fresh packing.

    The trainer must reload dataloaders every epoch (reload_dataloaders_every_n_epochs=1).
    """

    def __init__(self, mix, pad_id: int, max_length: int, packing: bool, batch_size: int, seed: int,
                 num_workers: int = 0):
        super().__init__()
        self.mix, self.val = mix, mix.val
        self.collate = Collator(pad_id, packing)
        self.max_length, self.packing, self.batch_size = max_length, packing, batch_size
        self.seed, self.num_workers = seed, num_workers
        self.val_names = list(mix.val)
        self.epoch_hashes: dict[int, str] = {}  # epoch -> sha256 of its training mix (summary.json)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer else 0
        train = self.mix.train_for_epoch(epoch)
        self.epoch_hashes[epoch] = ids_hash([train])
        rows = Rows(train, self.max_length, self.packing, self.seed + epoch)
        return DataLoader(rows, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(Rows(self.val[n], self.max_length, self.packing, 0), batch_size=self.batch_size,
                       collate_fn=self.collate, num_workers=self.num_workers)
            for n in self.val_names
        ]

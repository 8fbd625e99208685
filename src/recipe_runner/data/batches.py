"""Batches: packed rows with no cross-example attention, or padded batches.

Packing puts several examples into one row of `max_length` tokens. Position ids restart at 0
for every example and the attention mask is left out, so transformers builds a block-diagonal
causal mask from the position ids: no token attends across an example boundary. The first
token of each packed example gets no label (it would be "predicted" from the previous
example's last token). With 150-token dialogues and max_length 512 this removes most of the
padding a pad-to-longest batch carries.
"""

from __future__ import annotations

import itertools

import lightning as L
import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from recipe_runner.data.hashing import pairs_hash
from recipe_runner.data.templates import IGNORE


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
    """Each item: one row (a packed group of examples, or a single example when not packing).

    With `general_sources` (source names of role general), items also carry "general": per token,
    1 where the token belongs to an example of a general source (read from the `source` column).
    """

    def __init__(self, ds: Dataset, max_length: int, packing: bool, seed: int,
                 general_sources: frozenset[str] | set[str] = frozenset()):
        names = ["input_ids", "labels"] + (["source"] if "source" in ds.column_names else [])
        cols = ds.select_columns(names)[:]  # one epoch's mix: small, read once
        self.ids, self.labels = cols["input_ids"], cols["labels"]
        self.sources = cols.get("source")  # named when a step fails (a non-finite loss)
        self.general = [s in general_sources for s in cols["source"]] if general_sources else None
        lengths = [len(x) for x in self.ids]
        self.rows = pack(lengths, max_length, seed) if packing else [[i] for i in range(len(lengths))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> dict:
        ids, labels, pos, general = [], [], [], []
        for i in self.rows[r]:
            ex_labels = list(self.labels[i])
            ex_labels[0] = IGNORE
            ids += self.ids[i]
            labels += ex_labels
            pos += range(len(self.ids[i]))
            if self.general is not None:
                general += [int(self.general[i])] * len(self.ids[i])
        item = {"input_ids": ids, "labels": labels, "position_ids": pos}
        if self.sources is not None:
            item["sources"] = sorted({self.sources[i] for i in self.rows[r]})
        if self.general is not None:
            item["general"] = general
        return item


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
        general = torch.zeros((n, width), dtype=torch.bool) if "general" in items[0] else None
        for k, x in enumerate(items):
            L_ = len(x["input_ids"])
            ids[k, :L_] = torch.tensor(x["input_ids"])
            labels[k, :L_] = torch.tensor(x["labels"])
            pos[k, :L_] = torch.tensor(x["position_ids"])
            pos[k, L_:] = torch.arange(width - L_)  # padding forms its own block
            mask[k, :L_] = 1
            if general is not None:
                general[k, :L_] = torch.tensor(x["general"], dtype=torch.bool)
        batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "n_real": int(mask.sum()),
                 "sources": sorted({s for x in items for s in x.get("sources", [])})}
        if general is not None:  # per token: belongs to a general-role source (per-role loss, KL-to-base)
            batch["general"] = general
        if not self.packing:
            batch["attention_mask"] = mask
        return batch


class EpochLoader(DataLoader):
    """One epoch's training batches, resumable mid-epoch.

    Lightning stores `state_dict()` in every checkpoint: the batches this epoch has trained on,
    read from the trainer's own progress (the iterator runs a batch ahead). On a resume it calls
    `load_state_dict()` before iterating, and those batches are skipped (loaded and collated, not
    trained on: milliseconds against a training step). A state saved in another epoch is ignored:
    an end-of-epoch checkpoint resumes at the next epoch's first batch.
    """

    def __init__(self, rows: Rows, epoch: int, trained_batches, **kwargs):
        self.epoch, self.trained_batches, self.skip = epoch, trained_batches, 0
        super().__init__(rows, **kwargs)

    def __iter__(self):
        batches = super().__iter__()
        skip, self.skip = self.skip, 0
        return itertools.islice(batches, skip, None) if skip else batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": int(self.trained_batches())}

    def load_state_dict(self, state: dict) -> None:
        self.skip = state["batches"] if state.get("epoch") == self.epoch else 0


class MixDataModule(L.LightningDataModule):
    """Epoch e trains on `mix.train_for_epoch(e)`: a fresh general draw and a fresh packing.

    The trainer must reload dataloaders every epoch (reload_dataloaders_every_n_epochs=1).
    """

    def __init__(self, mix, pad_id: int, max_length: int, packing: bool, batch_size: int, seed: int,
                 num_workers: int = 0, general_sources: frozenset[str] | set[str] = frozenset()):
        super().__init__()
        self.general_sources = frozenset(general_sources)  # rows mark their tokens: per-role loss, KL-to-base
        self.mix, self.val = mix, mix.val
        self.collate = Collator(pad_id, packing)
        self.max_length, self.packing, self.batch_size = max_length, packing, batch_size
        self.seed, self.num_workers = seed, num_workers
        self.val_names = list(mix.val)
        self.epoch_hashes: dict[int, str] = {}  # epoch -> sha256 of its training mix (summary.json)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer else 0
        rows = Rows(self.mix.train_for_epoch(epoch), self.max_length, self.packing, self.seed + epoch,
                    self.general_sources)
        self.epoch_hashes[epoch] = pairs_hash(zip(rows.ids, rows.labels))  # the lists Rows already read
        # its own generator: making an iterator draws a seed from it (from torch's global generator
        # without one), which would shift the dropout masks of a run resumed mid-epoch
        return EpochLoader(rows, epoch, self.trained_batches, batch_size=self.batch_size,
                           collate_fn=self.collate, num_workers=self.num_workers,
                           generator=torch.Generator().manual_seed(self.seed + epoch))

    def trained_batches(self) -> int:
        """Batches of the current epoch trained on so far (Lightning's own count)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(Rows(self.val[n], self.max_length, self.packing, 0), batch_size=self.batch_size,
                       collate_fn=self.collate, num_workers=self.num_workers,
                       generator=torch.Generator().manual_seed(0))  # leaves torch's global generator alone
            for n in self.val_names
        ]

"""Mixing: held-out split per source, then niche:general mixing counted in tokens.

The split comes first, so each source's validation loss is measured on examples that no
mix ever trains on. The general budget is `general_ratio` x the niche training tokens
(1:10 with 6,000 niche tokens -> 60,000 general tokens), drawn from a seeded shuffle of the
general pool: same seed, same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, concatenate_datasets

from .cleaning import decontaminate
from .errors import RecipeError
from .schema import DataConfig, Role


@dataclass
class MixRow:
    source: str
    role: str
    train_examples: int
    train_tokens: int
    val_examples: int
    val_tokens: int
    dropped_too_long: int
    bad_lines: int = 0  # malformed lines skipped (on_bad_line: skip)
    contaminated: int = 0  # training examples dropped as near-copies of a held-out example
    cleaned: dict = field(default_factory=dict)  # cleaning filter -> examples it dropped
    share: float = 0.0  # of the training tokens


@dataclass
class Mix:
    train: Dataset
    val: dict[str, Dataset]  # source -> held-out examples
    rows: list[MixRow]
    dropped_samples: dict = field(default_factory=dict)  # source -> filter -> a few dropped examples

    @property
    def ratio(self) -> float:
        """Achieved general tokens per niche token."""
        niche = sum(r.train_tokens for r in self.rows if r.role == Role.niche.value)
        general = sum(r.train_tokens for r in self.rows if r.role == Role.general.value)
        return general / niche if niche else float("nan")


def split(ds: Dataset, fraction: float, seed: int, max_val: int | None) -> tuple[Dataset, Dataset]:
    n_val = max(1, round(len(ds) * fraction))
    if max_val is not None:
        n_val = min(n_val, max_val)
    if n_val >= len(ds):
        raise RecipeError(f"data.val_fraction={fraction} leaves no training examples in a source of {len(ds)}")
    order = np.random.default_rng(seed).permutation(len(ds))
    return ds.select(np.sort(order[n_val:])), ds.select(np.sort(order[:n_val]))


def take_tokens(ds: Dataset, budget: int, seed: int) -> Dataset:
    """Seeded shuffle, then the shortest prefix whose tokens reach the budget."""
    order = np.random.default_rng(seed).permutation(len(ds))
    cumulative = np.cumsum(np.asarray(ds["n_tokens"])[order])
    n = int(np.searchsorted(cumulative, budget)) + 1
    return ds.select(order[: min(n, len(ds))])


def mix(encoded: dict[str, Dataset], roles: dict[str, Role], weights: dict[str, float],
        dropped: dict[str, int], cfg: DataConfig, bad_lines: dict[str, int] | None = None,
        cleaned: dict[str, dict] | None = None) -> Mix:
    """Split, decontaminate (needs an `original` column when data.clean.decontaminate), then draw general."""
    trains, vals = {}, {}
    for name, ds in encoded.items():
        trains[name], vals[name] = split(ds, cfg.val_fraction, cfg.split_seed, cfg.max_val_examples)
    contaminated = {}
    if cfg.clean.decontaminate:
        trains, contaminated = decontaminate(trains, vals, cfg.clean.near_dup_threshold)

    niche = [n for n in trains if roles[n] is Role.niche]
    general = [n for n in trains if roles[n] is Role.general]
    niche_tokens = sum(sum(trains[n]["n_tokens"]) for n in niche)
    if general and cfg.mix.general_ratio > 0:
        budget = cfg.mix.general_ratio * niche_tokens
        total_weight = sum(weights[n] for n in general)
        problems = []
        for n in general:
            want = int(budget * weights[n] / total_weight)
            have = sum(trains[n]["n_tokens"])
            if have < want:
                problems.append(
                    f"data.mix.general_ratio={cfg.mix.general_ratio:g}: source {n!r} must supply {want:,} training "
                    f"tokens but has {have:,}; add general data, lower the ratio, or cap the niche with max_examples"
                )
            else:
                trains[n] = take_tokens(trains[n], want, cfg.mix.seed)
        if problems:
            raise RecipeError("\n".join(problems))
    elif general:
        trains = {n: d for n, d in trains.items() if n not in general}

    rows = [
        MixRow(n, roles[n].value, len(trains.get(n, [])), sum(trains[n]["n_tokens"]) if n in trains else 0,
               len(vals[n]), sum(vals[n]["n_tokens"]), dropped.get(n, 0), (bad_lines or {}).get(n, 0),
               contaminated.get(n, 0), (cleaned or {}).get(n, {}))
        for n in encoded
    ]
    total = sum(r.train_tokens for r in rows) or 1
    for r in rows:
        r.share = r.train_tokens / total
    train = concatenate_datasets([trains[n] for n in trains]).shuffle(seed=cfg.mix.seed)
    return Mix(train=train, val=vals, rows=rows)

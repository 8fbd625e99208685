"""Mixing: held-out split per source, then niche:general mixing counted in tokens (or examples).

The split comes first, so each source's validation loss is measured on examples that no mix
ever trains on; then training rows that near-copy any held-out row are removed. The general
budget is `general_ratio` x the niche training units (1:10 with 6,000 niche tokens -> 60,000
general tokens), split among general sources by `weight`.

Draws walk an endless sequence of seeded permutations of a general pool: epoch 0 takes the
first `budget` tokens of it, epoch 1 the next `budget`, and so on (with fresh_each_epoch), so
a long run sees more of a big corpus and the same seed always gives the same examples. A
budget larger than the pool repeats examples, at most `max_repeats` times per epoch; a niche
source is upsampled by whole copies plus a seeded share (upsample 2.5 = 2 copies + half).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
from datasets import Dataset, concatenate_datasets

from recipe_runner.data.cleaning import contaminated
from recipe_runner.errors import RecipeError
from recipe_runner.config.schema import DataConfig, MixUnit, Role
from recipe_runner.data.source_data import SourceData


@dataclass
class MixRow:
    source: str
    role: str
    read: int  # examples read (after chunking), before cleaning
    pool_examples: int  # training examples available after cleaning, split and decontamination
    train_examples: int  # in the epoch-0 mix (repeats counted)
    train_tokens: int
    repeats: float  # train tokens / pool tokens: >1 = upsampled, <1 = a sample of the pool
    val_examples: int
    val_tokens: int
    turns: int  # trained assistant turns in the epoch-0 mix
    bad_lines: int = 0  # malformed lines skipped (on_bad_line: skip)
    contaminated: int = 0  # training examples dropped as near-copies of a held-out example
    cleaned: dict = field(default_factory=dict)  # cleaning filter -> examples it dropped
    share: float = 0.0  # of the epoch-0 training tokens


@dataclass
class Plan:
    """How one source fills each epoch: positions into its training pool."""

    pool: Dataset
    units: np.ndarray  # per pool row: tokens or 1 (examples), what the ratio counts
    want: float  # general: units per epoch; niche: upsample factor
    general: bool
    index: np.ndarray | None = None  # the pool's rows in the source's dataset

    def drawn(self, epochs: int, seed: int, fresh: bool) -> np.ndarray:
        """The pool positions any of the first `epochs` epochs trains on."""
        return np.unique(np.concatenate([self.positions(e if fresh else 0, seed) for e in range(max(epochs, 1))]))

    def positions(self, epoch: int, seed: int) -> np.ndarray:
        if self.general:
            return stream_segment(self.units, epoch * self.want, self.want, seed)
        return upsampled(len(self.units), self.want, seed + epoch)


def stream_segment(units: np.ndarray, start: float, length: float, seed: int) -> np.ndarray:
    """Rows whose start falls in [start, start+length) of the endless stream of permutations.

    Cycle c is permutation(seed, c) of the pool; a row occupies its units in the stream. The
    last row may run past the end, so a segment holds `length` units plus less than one row.
    """
    total = float(units.sum())
    picks, c = [], int(start // total)
    while c * total < start + length:
        perm = np.random.default_rng([seed, c]).permutation(len(units))
        begins = c * total + np.concatenate([[0], np.cumsum(units[perm])[:-1]])
        picks.append(perm[(begins >= start) & (begins < start + length)])
        c += 1
    return np.concatenate(picks)


def upsampled(n: int, factor: float, seed: int) -> np.ndarray:
    whole = int(factor)
    extra = np.sort(np.random.default_rng(seed).permutation(n)[: round((factor - whole) * n)])
    return np.concatenate([np.tile(np.arange(n), whole), extra])


@dataclass
class Mix:
    plans: dict[str, Plan]
    val: dict[str, Dataset]  # source -> held-out rows
    rows: list[MixRow]
    seed: int
    fresh: bool
    lengths: dict[str, np.ndarray] = field(default_factory=dict)  # source -> token lengths after cleaning
    sources: dict = field(default_factory=dict)  # source -> SourceData (counts, samples, cache keys)
    keepalive: object = None  # holds a scratch data folder open while the mix is used
    val_index: dict[str, np.ndarray] = field(default_factory=dict)  # source -> held-out rows in its dataset
    distilled: dict = field(default_factory=dict)  # source -> what data/self_distill.py regenerated (Tally.as_dict)
    answers_by: dict[str, str] = field(default_factory=dict)  # general source -> "base" (the base's own words) | "source"

    def train_for_epoch(self, epoch: int) -> Dataset:
        """The epoch's training rows, shuffled: niche (upsampled) + this epoch's general draw."""
        e = epoch if self.fresh else 0
        parts = [p.pool.select(p.positions(e, self.seed)) for p in self.plans.values()]
        return concatenate_datasets(parts).shuffle(seed=self.seed + e)

    @property
    def train(self) -> Dataset:
        return self.train_for_epoch(0)

    @property
    def ratio(self) -> float:
        """Achieved general tokens per niche token (epoch 0)."""
        niche = sum(r.train_tokens for r in self.rows if r.role == Role.niche.value)
        general = sum(r.train_tokens for r in self.rows if r.role == Role.general.value)
        return general / niche if niche else float("nan")


def split_positions(n: int, fraction: float, seed: int, max_val: int | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, round(n * fraction))
    if max_val is not None:
        n_val = min(n_val, max_val)
    if n_val >= n:
        raise RecipeError(f"data.val_fraction={fraction}: source {name!r} has {n} example(s) after cleaning, "
                          "which leaves none for training")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def mix(sources: dict[str, "SourceData"], cfg: DataConfig) -> Mix:
    pools, vals, dirty = {}, {}, {}
    for name, s in sources.items():
        pools[name], vals[name] = split_positions(len(s.n_tokens), cfg.val_fraction, cfg.split_seed,
                                                  cfg.max_val_examples, name)
    if cfg.clean.decontaminate:
        held = [s.bands[vals[n]] for n, s in sources.items() if s.bands is not None]
        for name, s in sources.items():
            hit = contaminated(s.bands[pools[name]], held) if s.bands is not None else np.zeros(0, bool)
            dirty[name] = int(hit.sum())
            if hit.any():
                pools[name] = pools[name][~hit]
            if not len(pools[name]):
                raise RecipeError(f"data.clean.decontaminate: every training example of {name!r} near-copies a "
                                  "held-out example")

    by_examples = MixUnit(cfg.mix.unit) is MixUnit.examples
    units = {n: np.ones(len(p)) if by_examples else sources[n].n_tokens[p].astype(float) for n, p in pools.items()}
    niche = [n for n, s in sources.items() if s.role is Role.niche]
    general = [n for n, s in sources.items() if s.role is Role.general]
    problems, plans = [], {}
    for n in niche:
        if sources[n].upsample > cfg.mix.max_repeats:
            problems.append(f"data.sources.{n}.upsample={sources[n].upsample:g} exceeds data.mix.max_repeats="
                            f"{cfg.mix.max_repeats:g}; raise the cap or lower the upsampling")
        plans[n] = Plan(sources[n].ds.select(pools[n]), units[n], sources[n].upsample, general=False, index=pools[n])
    niche_units = sum(float(units[n].sum()) * sources[n].upsample for n in niche)
    if general and cfg.mix.general_ratio > 0:
        budget = cfg.mix.general_ratio * niche_units
        total_weight = sum(sources[n].weight for n in general)
        unit = "examples" if by_examples else "tokens"
        for n in general:
            want, have = budget * sources[n].weight / total_weight, float(units[n].sum())
            if want > have * cfg.mix.max_repeats:
                problems.append(
                    f"data.mix.general_ratio={cfg.mix.general_ratio:g}: source {n!r} must supply {want:,.0f} training "
                    f"{unit} per epoch but has {have:,.0f} (x{cfg.mix.max_repeats:g} allowed by data.mix.max_repeats);"
                    " add general data, lower the ratio, raise data.mix.max_repeats, or cap the niche with max_examples")
            plans[n] = Plan(sources[n].ds.select(pools[n]), units[n], want, general=True, index=pools[n])
    if problems:
        raise RecipeError("\n".join(problems))

    result = Mix(plans=plans, val={n: sources[n].ds.select(vals[n]) for n in sources}, rows=[],
                 seed=cfg.mix.seed, fresh=cfg.mix.fresh_each_epoch,
                 lengths={n: s.n_tokens for n, s in sources.items()}, sources=sources, val_index=vals)
    for n, s in sources.items():
        pos = plans[n].positions(0, cfg.mix.seed) if n in plans else np.zeros(0, dtype=np.int64)
        rows_tokens = s.n_tokens[pools[n]]
        train_tokens = int(rows_tokens[pos].sum())
        result.rows.append(MixRow(
            source=n, role=s.role.value, read=s.read, pool_examples=len(pools[n]), train_examples=len(pos),
            train_tokens=train_tokens, repeats=train_tokens / max(int(rows_tokens.sum()), 1),
            val_examples=len(vals[n]), val_tokens=int(s.n_tokens[vals[n]].sum()),
            turns=int(s.n_turns[pools[n]][pos].sum()),
            bad_lines=s.bad_lines, contaminated=dirty.get(n, 0), cleaned=s.cleaned))
    total = sum(r.train_tokens for r in result.rows) or 1
    for r in result.rows:
        r.share = r.train_tokens / total
    return result


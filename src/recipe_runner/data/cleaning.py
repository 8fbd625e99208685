"""Cleaning: filters that drop noisy examples, each reporting what it dropped.

The articles' first lesson: raw chat logs teach noise (service messages, file names, empty
turns, broken role order), and 200 clean dialogues beat 10,000 raw ones. Filters run per
source, in a fixed order; the first filter that fires takes the example and counts it, and
keeps a few dropped examples so a user can see what went.

Three kinds, by what they need:
- per example (`Cleaner.keep`, streamed): empty turns, role order, service messages, turn
  bounds, language;
- across the source (`Cleaner.dedup`, numpy over hashes kept while streaming): exact and near
  duplicates, see dedup.py;
- after templating (`token_bounds`): min/max length in tokens.
"""

from __future__ import annotations

import re

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recipe_runner.data.dedup import band_keys, content_hashes, later_repeats, matches_any, turns
from recipe_runner.config.schema import CleanConfig

# A turn that is nothing but one of these is a messenger artefact, not speech.
SERVICE_PATTERNS = [
    r"(?i)^\s*\S+( \S+)? (joined|left) the (group|chat|channel)\.?\s*$",
    r"(?i)^\s*(forwarded message|forwarded from\b.*)\s*$",
    r"(?i)^\s*\S+\.(jpe?g|png|gif|webp|pdf|docx?|xlsx?|pptx?|mp4|mov|mp3|ogg|opus|zip|rar)\s*$",
    r"^\s*(https?://\S+\s*)+$",
    r"(?i)^\s*(<media omitted>|this message was deleted|message deleted|sticker|photo|voice message)\s*$",
]


def _empty_turn(ex: dict, cfg: CleanConfig, patterns) -> bool:
    return any(not t.strip() for t in turns(ex))


def _role_order(ex: dict, cfg: CleanConfig, patterns) -> bool:
    roles = [m["role"] for m in ex["messages"] if m["role"] != "system"]
    if not roles:
        return False
    system_late = any(m["role"] == "system" for m in ex["messages"][1:])
    alternating = all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
    return system_late or not alternating or roles[-1] != "assistant"


def _service(ex: dict, cfg: CleanConfig, patterns) -> bool:
    return any(p.search(t) for t in turns(ex) for p in patterns)


def _turn_bounds(ex: dict, cfg: CleanConfig, patterns) -> bool:
    if not ex["messages"]:
        return False
    n = sum(m["role"] == "assistant" for m in ex["messages"])
    return n < cfg.min_turns or (cfg.max_turns is not None and n > cfg.max_turns)


LANGUAGE_MIN_LETTERS = 20  # "12 plus 19 is 31." has 6 letters: too few to tell a language, so kept


def _language(ex: dict, cfg: CleanConfig, patterns) -> bool:
    """The spoken side (assistant turns, or the text) must be in one of cfg.languages."""
    import py3langid

    said = " ".join(m["content"] for m in ex["messages"] if m["role"] == "assistant") or ex["text"]
    if sum(ch.isalpha() for ch in said) < LANGUAGE_MIN_LETTERS:
        return False
    return py3langid.classify(said)[0] not in cfg.languages


# (name in reports, switch in CleanConfig, predicate: True = drop); applied while streaming
PER_EXAMPLE = [
    ("empty_turn", "empty_turns", _empty_turn),
    ("role_order", "role_order", _role_order),
    ("service_message", "service_messages", _service),
    ("turn_bounds", None, _turn_bounds),
    ("language", "languages", _language),
]
ACROSS = [("exact_duplicate", "exact_dedup"), ("near_duplicate", "near_dedup")]
FILTER_NAMES = [n for n, _, _ in PER_EXAMPLE] + [n for n, _ in ACROSS] + ["min_tokens", "max_tokens"]


def plain(cfg: CleanConfig | DictConfig) -> CleanConfig:
    # plain attributes: the filters read cfg once per example, and DictConfig access costs ~10 us
    return OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg


class Cleaner:
    """Streams examples through the per-example filters and keeps the keys dedup needs."""

    def __init__(self, cfg: CleanConfig | DictConfig):
        self.cfg = cfg = plain(cfg)
        self.patterns = [re.compile(p) for p in [*SERVICE_PATTERNS, *cfg.patterns]]
        self.active = [(n, fn) for n, switch, fn in PER_EXAMPLE if switch is None or getattr(cfg, switch)]
        self.counts = {n: 0 for n in FILTER_NAMES if self.is_on(n)}
        self.samples: dict[str, list[dict]] = {n: [] for n in self.counts}
        self.needs_bands = cfg.near_dedup or cfg.decontaminate

    def is_on(self, name: str) -> bool:
        switch = dict([(n, s) for n, s, _ in PER_EXAMPLE] + ACROSS).get(name)
        return switch is None or bool(getattr(self.cfg, switch))

    def drop(self, name: str, ex: dict) -> None:
        self.counts[name] += 1
        if len(self.samples[name]) < self.cfg.keep_samples:
            self.samples[name].append(ex)

    def keep(self, ex: dict) -> bool:
        for name, fn in self.active:
            if fn(ex, self.cfg, self.patterns):
                self.drop(name, ex)
                return False
        return True

    def keys(self, kept: list[dict]) -> tuple[np.ndarray, np.ndarray | None]:
        """Content hashes and (if needed) LSH band keys of a batch of kept examples."""
        bands = band_keys(kept, self.cfg.near_dup_threshold) if self.needs_bands else None
        return content_hashes(kept), bands

    def dedup(self, hashes: np.ndarray, bands: np.ndarray | None, row) -> np.ndarray:
        """Boolean keep-mask over the streamed survivors; `row(i)` fetches example i for samples.

        Exact first, then near among the exact-unique: an example goes when an earlier one has
        the same content hash, or shares an LSH band with an earlier surviving one.
        """
        keep = np.ones(len(hashes), dtype=bool)
        steps = [("exact_duplicate", hashes), ("near_duplicate", bands)]
        for name, keys in steps:
            if not self.is_on(name) or keys is None:
                continue
            alive = np.flatnonzero(keep)
            gone = alive[later_repeats(keys[alive])]
            keep[gone] = False
            self.counts[name] += len(gone)
            for i in gone[: self.cfg.keep_samples - len(self.samples[name])]:
                self.samples[name].append(row(int(i)))
        return keep


def token_bounds(n_tokens: np.ndarray, cfg: CleanConfig, max_length: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Keep-mask for min/max length in tokens; max_tokens never exceeds data.max_length (a row)."""
    cfg = plain(cfg)
    top = min(cfg.max_tokens, max_length) if cfg.max_tokens is not None else max_length
    short, long_ = n_tokens < cfg.min_tokens, n_tokens > top
    return ~(short | long_), {"min_tokens": np.flatnonzero(short), "max_tokens": np.flatnonzero(long_)}


def clean(examples: list[dict], cfg: CleanConfig | DictConfig) -> tuple[list[dict], dict[str, int], dict[str, list[dict]]]:
    """In-memory convenience (small corpora, tests): kept examples, drops per filter, samples.

    Token bounds need the template, so they run in prepare, not here.
    """
    cleaner = Cleaner(cfg)
    survivors = [ex for ex in examples if cleaner.keep(ex)]
    hashes, bands = cleaner.keys(survivors)
    keep = cleaner.dedup(hashes, bands if cleaner.cfg.near_dedup else None, lambda i: survivors[i])
    counts = {k: v for k, v in cleaner.counts.items() if k not in ("min_tokens", "max_tokens")}
    samples = {k: v for k, v in cleaner.samples.items() if k in counts}
    return [ex for ex, k in zip(survivors, keep) if k], counts, samples


def contaminated(train_bands: np.ndarray, heldout_bands: list[np.ndarray]) -> np.ndarray:
    """True for training rows that share an LSH band with any held-out row of any source.

    A held-out set is only honest if no copy of it is trained on: the same dialogue pasted into
    the general corpus would otherwise make val/loss_niche look better than it is.
    """
    if not heldout_bands or not len(train_bands):
        return np.zeros(len(train_bands), dtype=bool)
    return matches_any(train_bands, np.concatenate(heldout_bands))

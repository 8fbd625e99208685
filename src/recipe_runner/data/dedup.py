"""Duplicates at corpus scale: content hashes and MinHash LSH band keys, compared with numpy.

An in-memory LSH index (datasketch's MinHashLSH) keeps one dict entry per example and band:
at 1M examples and 8 bands that is several GB of Python objects. Here each example keeps
one uint64 content hash and `b` uint64 band keys (8 x 8 bytes at threshold 0.7, so 72 MB for
1M examples). Two examples are near-duplicate candidates when any band key matches, which is
exactly what an LSH query returns; "drop all but the first of each key" is one `np.unique` per
band. datasketch computes the signatures (MinHash.bulk) and the (bands, rows) split.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from functools import lru_cache

import numpy as np

NUM_PERM = 64  # 64 permutations: Jaccard estimates within ~0.06; 256 bytes per signature


def turns(ex: dict) -> list[str]:
    return [m["content"] for m in ex["messages"]] or [ex["text"]]


def shingles(ex: dict) -> list[bytes]:
    """Word 3-grams, lower-cased; one changed word in a 30-word reply costs 3 of ~30 (Jaccard ~0.8)."""
    words = " ".join(turns(ex)).lower().split()
    n = 3 if len(words) >= 3 else 1
    return list({" ".join(words[i : i + n]).encode() for i in range(max(len(words) - n + 1, 1))})


def _crc32(data: bytes) -> int:
    # 32-bit like datasketch's default sha1_hash32, ~5x cheaper; stable across processes (unlike hash())
    return zlib.crc32(data)


@lru_cache(maxsize=None)
def lsh_shape(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) that datasketch picks for this Jaccard threshold: 0.7 -> (8, 8)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    return lsh.b, lsh.r


# fixed odd multipliers: a band of r 32-bit hash values -> one uint64 key (sum of products, mod 2**64)
_MULT = np.random.default_rng(20261121).integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) * 2 + 1


def band_keys(examples: list[dict], threshold: float) -> np.ndarray:
    """(n, bands) uint64 LSH keys: equal key in any column = near-duplicate candidate."""
    from datasketch import MinHash

    b, r = lsh_shape(threshold)
    if not examples:
        return np.zeros((0, b), dtype=np.uint64)
    sigs = MinHash.bulk([shingles(e) for e in examples], num_perm=NUM_PERM, seed=1, hashfunc=_crc32)
    sig = np.stack([m.hashvalues for m in sigs]).astype(np.uint64)[:, : b * r].reshape(len(examples), b, r)
    with np.errstate(over="ignore"):  # uint64 wrap-around is the point
        return (sig * _MULT[: b * r].reshape(b, r)).sum(axis=2, dtype=np.uint64)


def content_hashes(examples: list[dict]) -> np.ndarray:
    """uint64 hash of the whitespace-normalised turns: equal hash = exact duplicate."""
    def one(ex: dict) -> int:
        key = json.dumps([[m["role"], " ".join(m["content"].split())] for m in ex["messages"]]
                         + [" ".join(ex["text"].split())], ensure_ascii=False)
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")

    return np.fromiter((one(e) for e in examples), dtype=np.uint64, count=len(examples))


def later_repeats(keys: np.ndarray) -> np.ndarray:
    """True where an earlier row has the same key (1-D) or shares any column's key (2-D)."""
    keys = keys.reshape(len(keys), -1)
    repeat = np.zeros(len(keys), dtype=bool)
    for col in keys.T:
        first = np.ones(len(keys), dtype=bool)
        first[np.unique(col, return_index=True)[1]] = False
        repeat |= first
    return repeat


def matches_any(keys: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """True where a row shares a band key (same column) with any reference row."""
    hit = np.zeros(len(keys), dtype=bool)
    for j in range(keys.shape[1] if keys.ndim == 2 else 0):
        hit |= np.isin(keys[:, j], reference[:, j])
    return hit

"""Bootstrap intervals over prompts: evaluation sets are small (12-40 prompts), so every persona
claim carries a 95 % interval, and a gain whose interval contains 0 is called noise.

Percentile bootstrap, resampling prompts with replacement. A gain over the baseline is paired:
the same prompts are resampled on both sides, so prompt difficulty cancels (on 12 prompts a
paired interval is typically half as wide as two independent ones). Fixed seed: the same
answers give the same interval on every run and every rank.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def interval(values, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float] | None:
    """(mean, low, high) of the mean of `values`; None when there is nothing to resample."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(low), float(high)


def paired_gain(tuned, base, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float] | None:
    """(mean, low, high) of tuned - base over the prompts both sides scored."""
    pairs = [(t, b) for t, b in zip(tuned, base) if t is not None and b is not None]
    return interval([t - b for t, b in pairs], resamples, seed)


def outside_noise(ci: tuple[float, float, float] | None) -> bool:
    """True when the interval excludes 0: the difference is more than resampling noise."""
    return ci is not None and (ci[1] > 0 or ci[2] < 0)

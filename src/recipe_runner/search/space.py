"""A search space written in Hydra's own sweep syntax, as Optuna distributions.

    train.lr: tag(log, interval(5e-4, 5e-3))   -> FloatDistribution(5e-4, 5e-3, log=True)
    lora.r: choice(4, 8, 16)  (or 4,8,16)      -> CategoricalDistribution([4, 8, 16])
    train.max_epochs: range(1, 4)              -> IntDistribution(1, 3)  (Hydra's end is exclusive)
    data.mix.general_ratio: tag(int, interval(1, 4)) -> IntDistribution(1, 4)
    eval.every_n_epochs: 1                     -> fixed: every trial gets it

Hydra writes `interval()` bounds as floats whatever they look like, so integers need the `int`
tag. The search file's params come first and the command line's after: a key given on the
command line replaces the file's (a single value fixes it, a sweep replaces its range).
"""

from __future__ import annotations

import math

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


class SpaceError(ValueError):
    pass


def parse(params: dict[str, str], arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(the search space by key, the fixed overrides every trial gets)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line in [f"{k}={v}" for k, v in params.items()] + list(arguments):
        try:
            override = parser.parse_override(line)
        except Exception as exc:
            raise SpaceError(f"`{line}`: {' '.join(str(exc).split())}") from None
        key = override.get_key_element()
        space.pop(key, None), fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(line, override)
        else:
            fixed[key] = line
    if not space:
        raise SpaceError("nothing to search: give hydra.sweeper.params in the search file or a swept key "
                         "(`train.lr=tag(log,interval(1e-4,1e-2))`) on the command line")
    return space, list(fixed.values())


def distribution(line: str, override) -> BaseDistribution:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = list(override.sweep_iterator())
        if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
            raise SpaceError(f"`{line}`: choices are numbers, strings or booleans (Optuna stores them)")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        if value.shuffle:
            raise SpaceError(f"`{line}`: shuffle() means nothing to a search: drop it")
        numbers = [value.start, value.stop, value.step]
        if all(isinstance(n, int) for n in numbers):
            last = value.start + value.step * ((value.stop - value.start - 1) // value.step)  # end is exclusive
            if last < value.start:
                raise SpaceError(f"`{line}`: an empty range")
            return IntDistribution(value.start, last, step=value.step)
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        low, high, log = value.start, value.end, "log" in value.tags
        if low >= high:
            raise SpaceError(f"`{line}`: interval(low, high) needs low < high")
        if log and low <= 0:
            raise SpaceError(f"`{line}`: a log interval needs low > 0")
        if "int" in value.tags:
            if low != math.floor(low) or high != math.floor(high):
                raise SpaceError(f"`{line}`: an int interval needs whole bounds")
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(low, high, log=log)
    raise SpaceError(f"`{line}`: a search takes choice(), a,b,c, range() or interval(); not {type(value).__name__}")


def override_value(value) -> str:
    """A sampled value as Hydra override text. Floats keep 4 significant digits: the folder name
    and the run use the same number, and 4 digits of a learning rate are past what a run can tell."""
    from hydra.core.override_parser.types import Override

    if isinstance(value, float):
        return f"{float(f'{value:.4g}')!r}"
    return Override._get_value_element_as_str(value)

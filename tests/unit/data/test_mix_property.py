"""Properties of the mix: token ratio within 1 %, seeded draws, caps on repetition."""

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from recipe_runner.errors import RecipeError
from recipe_runner.data.mixing import mix
from recipe_runner.data.prepare import SourceData
from recipe_runner.config.schema import DataConfig, Role


def source(name: str, role: Role, lengths: list[int], **kw) -> SourceData:
    """Synthetic rows: token counts only (the mix never looks at the text)."""
    ds = Dataset.from_dict({"row": list(range(len(lengths))), "n_tokens": lengths})
    return SourceData(name=name, role=role, weight=kw.get("weight", 1.0), upsample=kw.get("upsample", 1.0), ds=ds,
                      n_tokens=np.asarray(lengths), n_turns=np.ones(len(lengths), dtype=np.int64), bands=None,
                      read=len(lengths), bad_lines=0, cleaned={})


def data_cfg(**mix_kw) -> DataConfig:
    cfg = OmegaConf.structured(DataConfig(val_fraction=0.2, max_val_examples=None))
    cfg.clean.decontaminate = False  # these synthetic rows carry no text
    for k, v in mix_kw.items():
        cfg.mix[k] = v
    return cfg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(niche=st.lists(st.integers(20, 400), min_size=5, max_size=40),
       n_general=st.integers(200, 3000), ratio=st.sampled_from([1.0, 5.0, 10.0, 20.0]),
       seed=st.integers(0, 10_000))
def test_mix_hits_the_token_ratio_within_one_percent(niche, n_general, ratio, seed):
    general = np.random.default_rng(seed).integers(10, 61, n_general).tolist()  # sizes 10..60 tokens
    budget_ok = sum(general) * 0.75 >= ratio * sum(niche)  # 20 % held out, rounding to whole examples
    try:
        m = mix({"n": source("n", Role.niche, niche), "g": source("g", Role.general, general)},
                data_cfg(general_ratio=ratio, seed=seed))
    except RecipeError as exc:  # only allowed when the general pool is too small for the ratio
        assert not budget_ok, exc
        return
    niche_tokens = next(r.train_tokens for r in m.rows if r.source == "n")
    # the draw overshoots by less than one general example (<= 60 tokens)
    assert abs(m.ratio - ratio) * niche_tokens <= 60
    if ratio * niche_tokens >= 6000:  # budgets of 100+ examples: within 1 %
        assert abs(m.ratio - ratio) / ratio < 0.01


def test_each_epoch_draws_fresh_general_examples_and_is_seeded():
    rng = np.random.default_rng(0)
    srcs = {"n": source("n", Role.niche, [100] * 20), "g": source("g", Role.general, rng.integers(10, 60, 5000).tolist())}
    m = mix(srcs, data_cfg(general_ratio=5))
    epochs = [set(m.train_for_epoch(e).filter(lambda n: n < 70, input_columns="n_tokens")["row"]) for e in range(3)]
    assert len(epochs[0] & epochs[1]) == 0 and len(epochs[1] & epochs[2]) == 0  # 8k of ~140k tokens per epoch
    again = mix(srcs, data_cfg(general_ratio=5))
    assert again.train_for_epoch(1)["row"] == m.train_for_epoch(1)["row"]
    same = mix(srcs, data_cfg(general_ratio=5, fresh_each_epoch=False))
    assert same.train_for_epoch(1)["row"] == same.train_for_epoch(0)["row"]


def test_small_general_pool_repeats_up_to_the_cap_then_errors():
    srcs = {"n": source("n", Role.niche, [100] * 10), "g": source("g", Role.general, [50] * 50)}  # 40 train: 2,000 tok
    with pytest.raises(RecipeError, match=r"general_ratio=3.*must supply 2,400.*has 2,000.*max_repeats"):
        mix(srcs, data_cfg(general_ratio=3))  # 800 niche tokens x 3 = 2,400 > 2,000
    m = mix(srcs, data_cfg(general_ratio=3, max_repeats=2))
    g = next(r for r in m.rows if r.source == "g")
    assert g.train_tokens >= 2400 and 1.2 <= g.repeats <= 1.25


def test_niche_upsampling_and_example_units():
    srcs = {"n": source("n", Role.niche, [100] * 10, upsample=2.5), "g": source("g", Role.general, [10] * 2000)}
    with pytest.raises(RecipeError, match=r"data.sources.n.upsample=2.5 exceeds data.mix.max_repeats=1"):
        mix(srcs, data_cfg(general_ratio=1))
    m = mix(srcs, data_cfg(general_ratio=1, max_repeats=3))
    rows = {r.source: r for r in m.rows}
    assert rows["n"].train_examples == 20 and rows["n"].repeats == 2.5  # 8 train x 2.5
    assert rows["g"].train_tokens == 2000  # 1:1 of the upsampled 2,000 niche tokens
    by_examples = mix(srcs, data_cfg(general_ratio=4, max_repeats=3, unit="examples"))
    rows = {r.source: r for r in by_examples.rows}
    assert rows["g"].train_examples == 4 * rows["n"].train_examples == 80

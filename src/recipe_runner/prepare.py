"""Prepare: sources -> encoded examples -> held-out split -> token-exact mix.

Everything here runs before the model weights are loaded, so a data problem costs seconds.
"""

from __future__ import annotations

import json

from datasets import Dataset, disable_caching

from .cleaning import clean
from .corpus import load_source
from .errors import RecipeError
from .mixing import Mix, mix
from .schema import Role, SystemPrompt, TemplateConfig, TrainOn
from .templates import Encoder, apply_named_template, preflight, render_persona

disable_caching()  # encoded data is small and per-run; caching by content is issue #3's job


def prepare_data(cfg, tokenizer) -> Mix:
    tcfg: TemplateConfig = cfg.template
    apply_named_template(tokenizer, tcfg.chat_template)
    persona = render_persona(tcfg)
    systems = {n: SystemPrompt(s.system) for n, s in cfg.data.sources.items()}
    encoder = Encoder(tokenizer, tcfg, systems, persona)
    encoded, dropped, bad, cleaned, dropped_samples = {}, {}, {}, {}, {}
    for name, src in cfg.data.sources.items():
        loaded = load_source(name, src, tokenizer, dict(cfg.data.placeholders))
        bad[name] = loaded.bad_lines
        kept, cleaned[name], dropped_samples[name] = clean(loaded.examples, cfg.data.clean)
        if not kept:
            raise RecipeError(f"data.clean: every example of source {name!r} was dropped: {cleaned[name]}")
        # `original` keeps each example as read (JSON), for the held-out files; messages and text
        # are dropped after templating because their Arrow types differ between chat and text sources
        raw = Dataset.from_list([{**e, "original": json.dumps({"messages": e["messages"], "text": e["text"]},
                                                             ensure_ascii=False)} for e in kept])
        ds = raw.map(encoder, remove_columns=["messages", "text"], desc=f"templating {name}")
        kept = ds.filter(lambda n: n <= cfg.data.max_length, input_columns="n_tokens", desc=f"length {name}")
        dropped[name] = len(ds) - len(kept)
        if len(kept) == 0:
            raise RecipeError(f"data.max_length={cfg.data.max_length}: every example of source {name!r} is longer "
                              f"(shortest: {min(ds['n_tokens'])} tokens); raise data.max_length or shorten the system prompt")
        preflight(kept, encoder.eot, TrainOn(tcfg.train_on), name)
        encoded[name] = kept
    roles = {n: Role(s.role) for n, s in cfg.data.sources.items()}
    weights = {n: s.weight for n, s in cfg.data.sources.items()}
    result = mix(encoded, roles, weights, dropped, cfg.data, bad, cleaned)
    result.dropped_samples = dropped_samples
    return result

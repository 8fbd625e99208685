"""Config validation, before anything heavy loads (recipe safety: recipe_scan.py).

Types, unknown keys and the allowed values of every choice (the enums in schema.py) are already
enforced by the schema at composition. What is left are ranges, problems that involve several
keys, and the files a recipe points to; they are collected and reported together, so one run
shows every mistake. Each stage is validated for what it runs (its `checks` in stages.py, each
cfg -> a list of problems): `stage=compare` reads a finished sweep and is not held to a training
recipe's rules.
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recipe_runner.errors import RecipeErrors
from recipe_runner.config.schema import Loss, Precision, Quant, Role, Strategy
from recipe_runner.data.readers import is_hub_name
from recipe_runner.data.chat_format import NAMED_TEMPLATES
from recipe_runner.stages import load, stage_named


def metric_names(cfg: DictConfig) -> set[str]:
    """Every metric the module logs at validation, so early stopping can only watch a real one."""
    names = {"val/loss"} | {f"val/loss_{n}" for n in cfg.data.sources}
    names |= {f"val/loss_{Role(s.role).value}" for s in cfg.data.sources.values()}
    return names


def _langid_languages() -> list[str]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return list(LanguageIdentifier.from_model_file(MODEL_FILE).nb_classes)  # the languages its model knows


def validate(cfg: DictConfig, stage=None) -> None:
    """Raise RecipeErrors listing every problem of `cfg` for `stage` (a Stage or its name; default: cfg.stage)."""
    checks = stage_named(cfg.stage if stage is None else stage).checks
    problems = [problem for check in checks for problem in load(check)(cfg)]
    if problems:
        raise RecipeErrors(problems)


def compare_problems(cfg: DictConfig) -> list[str]:
    """stage=compare reads a finished sweep: its folder is all it needs."""
    return [] if cfg.sweep_dir else ["stage=compare needs sweep_dir=outputs/sweeps/<recipe>/<time>"]


def recipe_problems(cfg: DictConfig) -> list[str]:
    """Sources, mixing, cleaning, template, model and adapter settings."""
    problems: list[str] = []
    p = problems.append
    sources = cfg.data.sources
    if not sources:
        p("data.sources is empty: a recipe must name at least one source")
    roles = {}
    for name, src in sources.items():
        if OmegaConf.is_missing(src, "path"):
            p(f"data.sources.{name}.path is required")
            continue
        roles[name] = Role(src.role)
        hub = src.format == "hf_dataset" and is_hub_name(src.path)  # fetched (or refused) when read
        if not Path(src.path).exists() and not hub:
            made = Path(cfg.synth.out) in Path(src.path).parents  # the synthesis's accepted.jsonl
            p(f"data.sources.{name}.path: {src.path} does not exist (working directory: {Path.cwd()})"
              + ("; make it first: python run.py recipe=<this recipe> stage=synthesize" if made else ""))
        if src.upsample < 1 or src.upsample > cfg.data.mix.max_repeats:
            p(f"data.sources.{name}.upsample={src.upsample:g}: must be between 1 and data.mix.max_repeats="
              f"{cfg.data.mix.max_repeats:g}")
        if src.max_examples is not None and src.max_examples < 2:
            p(f"data.sources.{name}.max_examples={src.max_examples}: need at least 2 (one to train, one held out)")
        if src.chunk_overlap >= src.chunk_tokens:
            p(f"data.sources.{name}.chunk_overlap must be smaller than chunk_tokens")
        if src.weight <= 0:
            p(f"data.sources.{name}.weight must be > 0")
    if sources and Role.niche not in roles.values():
        p("data.sources: no source has role: niche, so there is no voice to learn")
    ratio = cfg.data.mix.general_ratio
    if ratio < 0:
        p(f"data.mix.general_ratio={ratio}: must be >= 0 (10 means 1 niche token : 10 general tokens)")
    if ratio > 0 and sources and Role.general not in roles.values():
        p(f"data.mix.general_ratio={ratio:g} but no source has role: general; add one or set data.mix.general_ratio=0")
    if cfg.data.mix.max_repeats < 1:
        p(f"data.mix.max_repeats={cfg.data.mix.max_repeats:g}: must be >= 1 (1 = never repeat an example in an epoch)")
    if cfg.data.clean.languages:
        known = set(_langid_languages())
        unknown = [x for x in cfg.data.clean.languages if x not in known]
        if unknown:
            p(f"data.clean.languages: {unknown} are not ISO 639-1 codes py3langid knows (e.g. en, ru, de)")
    if not 0 < cfg.data.val_fraction < 1:
        p(f"data.val_fraction={cfg.data.val_fraction}: must be between 0 and 1 (0.2 holds out 20 %)")
    if cfg.data.max_length < 16:
        p(f"data.max_length={cfg.data.max_length}: too short for a conversation")
    tmpl = cfg.template.chat_template
    if tmpl != "tokenizer" and tmpl not in NAMED_TEMPLATES:
        p(f"template.chat_template={tmpl!r} does not exist; choose tokenizer or one of {sorted(NAMED_TEMPLATES)}")
    bible = cfg.template.persona.bible
    if bible and not Path(bible).exists():
        p(f"template.persona.bible: {bible} does not exist")
    if any(s.system == "persona" for s in sources.values()) and not bible:
        p("a source has system: persona but template.persona.bible is not set")
    if cfg.model.full_finetune and Quant(cfg.model.quant) is not Quant.none:
        p("model.full_finetune=true needs model.quant=none (4-bit weights cannot be trained directly)")
    if not 0 < cfg.model.checkpoint_fraction <= 1:
        p(f"model.checkpoint_fraction={cfg.model.checkpoint_fraction}: must be in (0, 1]")
    if not 0 < cfg.data.clean.near_dup_threshold <= 1:
        p(f"data.clean.near_dup_threshold={cfg.data.clean.near_dup_threshold}: must be in (0, 1]")
    if cfg.lora.r <= 0 or cfg.lora.alpha <= 0:
        p(f"lora.r={cfg.lora.r}, lora.alpha={cfg.lora.alpha}: both must be > 0")
    if not 0 <= cfg.lora.dropout < 1:
        p(f"lora.dropout={cfg.lora.dropout}: must be in [0, 1)")
    if not cfg.lora.target_modules:
        p("lora.target_modules is empty")
    return problems


def _uses_gpu(accelerator: str) -> bool:
    # torch only here: a bad corpus is reported before torch loads (~3 s of a 2-core machine)
    from recipe_runner.model.qlora import uses_gpu

    return uses_gpu(accelerator)


def train_problems(cfg: DictConfig) -> list[str]:
    """Optimizer, loss, precision and scale settings: all checked before any weight loads."""
    problems: list[str] = []
    p = problems.append
    t = cfg.train
    precision, strategy = Precision(t.precision), Strategy(t.strategy)
    for key in ("max_epochs", "batch_size", "grad_accum"):
        if t[key] < 1:
            p(f"train.{key}={t[key]}: must be >= 1")
    if t.lr <= 0:
        p(f"train.lr={t.lr}: must be > 0")
    if Loss(t.loss) is Loss.eaft and t.eaft_top_k < 2:
        p(f"train.eaft_top_k={t.eaft_top_k}: must be >= 2 (the entropy of one token is always 0)")
    if t.kl_to_base < 0 or not math.isfinite(t.kl_to_base):
        p(f"train.kl_to_base={t.kl_to_base}: must be a finite weight >= 0 (0 = off)")
    if t.kl_to_base > 0 and cfg.model.full_finetune:
        p("train.kl_to_base > 0 needs a LoRA adapter (the base model is the same model with the adapter "
          "disabled); it does not work with model.full_finetune=true")
    if precision is Precision["16-mixed"] and not _uses_gpu(t.accelerator):
        p("train.precision='16-mixed': float16 autocast needs a GPU; on CPU use bf16-mixed or 32-true (or auto)")
    if strategy is Strategy.fsdp and precision is Precision["16-mixed"]:
        p("train.precision='16-mixed' with train.strategy=fsdp: Lightning's FSDP2 strategy has no float16 "
          "gradient scaler; use bf16-mixed (Ampere or newer) or 32-true")
    if t.num_nodes < 1:
        p(f"train.num_nodes={t.num_nodes}: must be >= 1")
    if cfg.data.sources and t.early_stopping.monitor not in metric_names(cfg):
        p(f"train.early_stopping.monitor={t.early_stopping.monitor!r} is never logged; "
          f"logged metrics: {sorted(metric_names(cfg))}")
    if t.resume not in (None, "last", "sweep") and not Path(t.resume).exists():
        p(f"train.resume={t.resume}: no such run folder or checkpoint")
    return problems


def eval_problems(cfg: DictConfig) -> list[str]:
    e, out = cfg.eval, []
    for key in ("ordinary_prompts", "persona_prompts", "dialogues"):
        if e[key] and not Path(e[key]).exists():
            out.append(f"eval.{key}: {e[key]} does not exist")
    if e.every_n_epochs < 1:
        out.append(f"eval.every_n_epochs={e.every_n_epochs}: must be >= 1")
    if e.select.metric not in ("combined", cfg.train.early_stopping.monitor):
        out.append(f"eval.select.metric={e.select.metric!r}: use combined or the early-stopping monitor "
                   f"({cfg.train.early_stopping.monitor})")
    if e.checks and e.persona_prompts and not cfg.template.persona.bible:
        out.append("eval.persona_prompts are scored against the bible, but template.persona.bible is not set")
    if e.judge.enabled:
        if not os.environ.get(e.judge.api_key_env):
            out.append(f"eval.judge.enabled=true but ${e.judge.api_key_env} is empty (eval.judge.api_key_env)")
    return out


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: an address only this machine reaches."""
    host = str(host).strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or an interface address: reachable from elsewhere
        return False


def _use_problems(cfg: DictConfig, stage: str, several: str = "") -> list[str]:
    """chat, serve and export: an adapter to use (or `several`, serve's alternative) and sane
    sampling. The adapter folders themselves are checked when they are resolved
    (train/adapter_card.py), before loading."""
    out, s = [], cfg.sampling
    if not cfg.adapter and not (several and cfg.serve.adapters):
        out.append(f"stage={stage} needs adapter=<adapter folder | run folder | last>"
                   + (f" or {several}" if several else ""))
    if s.temperature < 0 or not 0 < s.top_p <= 1 or s.max_new_tokens < 1 or s.repetition_penalty <= 0:
        out.append(f"sampling: temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, repetition_penalty > 0 "
                   f"(got {s.temperature}, {s.top_p}, {s.max_new_tokens}, {s.repetition_penalty})")
    return out


def chat_problems(cfg: DictConfig) -> list[str]:
    return _use_problems(cfg, "chat")


def serve_problems(cfg: DictConfig) -> list[str]:
    """An adapter (or serve.adapters), sane sampling, server limits, and a key beyond loopback."""
    out, v = _use_problems(cfg, "serve", several="serve.adapters='{name: folder, ...}'"), cfg.serve
    if not 0 < v.port < 65536:
        out.append(f"serve.port={v.port}: must be 1-65535")
    for key in ("max_body_bytes", "max_tokens", "max_context_tokens", "max_concurrent"):
        if v[key] < 1:
            out.append(f"serve.{key}={v[key]}: must be >= 1")
    if v.max_queue < 0:
        out.append(f"serve.max_queue={v.max_queue}: must be >= 0")
    if v.api_key_env and not os.environ.get(v.api_key_env):
        out.append(f"serve.api_key_env={v.api_key_env} but ${v.api_key_env} is empty")
    elif not v.api_key_env and not is_loopback(v.host):
        out.append(f"serve.host={v.host} serves beyond this machine without a key: set serve.api_key_env=NAME "
                   f"(an environment variable holding the key clients must send) or serve.host=127.0.0.1")
    return out


def export_problems(cfg: DictConfig) -> list[str]:
    out = _use_problems(cfg, "export")
    bad = [t for t in cfg.export.gguf_types if t not in ("f16", "q8_0")]
    if bad:
        out.append(f"export.gguf_types: {bad} unknown; choose from [f16, q8_0]")
    return out


def synth_problems(cfg: DictConfig) -> list[str]:
    """stage=synthesize: the bible, the plan, the templates, the checks and the generator."""
    import re

    from recipe_runner.data.bible import load_bible
    from recipe_runner.errors import RecipeError
    from recipe_runner.synthesize.prompts import template_problems

    out, s = [], cfg.synth
    p = out.append
    bible = cfg.template.persona.bible
    if not bible:
        p("stage=synthesize needs template.persona.bible: the character the dialogues are written for")
    else:
        try:
            load_bible(bible)
        except RecipeError as exc:
            p(str(exc))
    for key in ("synopses", "dialogues_per_synopsis", "candidates", "long_turns", "synopsis_tokens", "turn_tokens",
                "transcript_tokens"):
        if s[key] < 1:
            p(f"synth.{key}={s[key]}: must be >= 1")
    if not s.turns or any(t < 1 for t in s.turns):
        p(f"synth.turns={list(s.turns)}: a non-empty list of user-turn counts, each >= 1")
    for key, value in (("long_share", s.long_share), ("situations.bait_share", s.situations.bait_share),
                       ("check.min_marker_share", s.check.min_marker_share)):
        if not 0 <= value <= 1:
            p(f"synth.{key}={value}: must be between 0 and 1")
    if not 0 < s.check.near_dup_threshold <= 1:
        p(f"synth.check.near_dup_threshold={s.check.near_dup_threshold}: must be in (0, 1]")
    if not s.situations.moods or not s.situations.registers:
        p("synth.situations.moods and synth.situations.registers must not be empty")
    if s.temperature < 0 or not 0 < s.top_p <= 1:
        p(f"synth.temperature={s.temperature}, synth.top_p={s.top_p}: temperature >= 0, 0 < top_p <= 1")
    unknown = [x for x in s.situations.languages if x not in set(_langid_languages())]
    if unknown:
        p(f"synth.situations.languages: {unknown} are not ISO 639-1 codes py3langid knows (e.g. en, ru, de)")
    for i, pattern in enumerate(s.check.leak_patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            p(f"synth.check.leak_patterns[{i}] {pattern!r} is not a valid regex: {exc}")
    out += template_problems(s.prompts)
    if s.check.judge_min_score is not None:
        if not cfg.eval.judge.enabled:
            p("synth.check.judge_min_score is set but eval.judge.enabled=false: the judge's endpoint is a user "
              "setting (command line or ~/.config/recipe-runner/user.yaml)")
        elif not os.environ.get(cfg.eval.judge.api_key_env):
            p(f"synth.check.judge_min_score needs the judge's key, but ${cfg.eval.judge.api_key_env} is empty")
    g = s.generator
    if g.base_url:
        if not re.match(r"https?://[^/\s]+", g.base_url):
            p(f"synth.generator.base_url={g.base_url!r}: expected http(s)://host[:port]/v1")
        if not g.model:
            p("synth.generator.base_url is set but synth.generator.model is not: the model name the endpoint serves")
    if g.api_key_env and not os.environ.get(g.api_key_env):
        p(f"synth.generator.api_key_env={g.api_key_env} but ${g.api_key_env} is empty")
    for key in ("max_concurrent", "batch_size"):
        if g[key] < 1:
            p(f"synth.generator.{key}={g[key]}: must be >= 1")
    if g.retries < 0 or g.timeout_s <= 0 or g.backoff_s < 0:
        p(f"synth.generator: retries >= 0, timeout_s > 0, backoff_s >= 0 (got {g.retries}, {g.timeout_s}, {g.backoff_s})")
    for key in ("max_requests", "max_tokens"):
        if g[key] is not None and g[key] < 1:
            p(f"synth.generator.{key}={g[key]}: must be >= 1 (null = no limit)")
    return out

"""The data stage's result: everything before the weights load (model path, tokenizer, the mix
and its manifest)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from omegaconf import DictConfig

from recipe_runner.config.schema import Precision
from recipe_runner.data.diversity import Diversity, niche_diversity
from recipe_runner.data.manifest import build_manifest
from recipe_runner.data.mixing import Mix
from recipe_runner.data.prepare import prepare_data
from recipe_runner.model.embedded import resolve_model_path
from recipe_runner.model.qlora import resolve_precision


@dataclass
class Prepared:
    model_path: str  # a folder or hub id from_pretrained can open
    tokenizer: object
    mix: Mix
    manifest: dict
    precision: str  # resolved Lightning precision (auto -> bf16-mixed / 16-mixed / 32-true)

    @cached_property
    def diversity(self) -> dict[str, Diversity]:
        """Each niche source's answers: varied enough not to teach one line? (data/diversity.py)"""
        return niche_diversity(self.mix)

    def summary(self) -> dict:
        """Its section of summary.json."""
        return {"manifest_sha256": self.manifest["manifest_sha256"],
                "mix": {r.source: {"train_tokens": r.train_tokens, "share": r.share} for r in self.mix.rows},
                "general_to_niche_ratio": self.mix.ratio,
                "niche_diversity": {name: d.as_dict() for name, d in self.diversity.items()},
                "general_answers": self.mix.answers_by, "self_distilled": self.mix.distilled}


def load_prepared(cfg: DictConfig) -> Prepared:
    """Model path (converting an embedded model once), tokenizer, cleaned and mixed data, manifest.
    DDP ranks > 0 find rank 0's data in the cache."""
    from transformers import AutoTokenizer

    from recipe_runner.model.safe_load import CODE

    model_path = resolve_model_path(cfg.model.name_or_path, cfg.paths.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.model.revision, **CODE)
    mix = prepare_data(cfg, tokenizer, model_path)
    return Prepared(model_path, tokenizer, mix, build_manifest(cfg, mix, model_path),
                    resolve_precision(Precision(cfg.train.precision).value, cfg.train.accelerator))


"""persona.json: what an adapter folder needs to be used without its recipe.

Every adapter a run saves (adapters/epoch_NN, best, last) carries one beside peft's own files:
the exact system prompt it trained with, the chat template, the base model it belongs to (and
a sha256 of the base's weight files, so an adapter is never put on another base), the bible, the
recipe and run, the epoch and that epoch's checks. `stage=chat|serve|export` read nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.config.schema import Quant, Role, SystemPrompt
from recipe_runner.data.bible import load_bible
from recipe_runner.errors import RecipeError
from recipe_runner.model import safe_load
from recipe_runner.model.embedded import PREFIX
from recipe_runner.model.fingerprint import weights_sha256

CARD = "persona.json"
VERSION = 1


def run_card(cfg: DictConfig, tokenizer, model_path: str) -> dict:
    """The part of the card every adapter of this run shares."""
    persona = any(SystemPrompt(s.system) is SystemPrompt.persona for s in cfg.data.sources.values()
                  if Role(s.role) is Role.niche)
    bible = load_bible(cfg.template.persona.bible)
    return {
        "format": VERSION,
        "persona": bible.name if bible else None,
        "recipe": cfg.name,
        "system_prompt": bible.system_prompt(cfg.template.persona.system_prompt) if persona and bible else None,
        "chat_template": tokenizer.chat_template,
        "base": {"name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision,
                 "weights_sha256": weights_sha256(model_path),
                 "quant_in_training": Quant(cfg.model.quant).value},
        "bible": bible.as_dict() if bible else {},
        "max_length": cfg.data.max_length,
    }


def write_card(folder: Path, card: dict, **fields) -> None:
    (Path(folder) / CARD).write_text(json.dumps({**card, **fields}, indent=2, ensure_ascii=False, default=str))


def stamp_checks(adapters: Path, history: list[dict], best_epoch: int | None) -> None:
    """After the run: each saved adapter's card gets its epoch's checks (epoch_NN, best, last)."""
    rows = {r["epoch"]: r for r in history}
    folders = {p: int(p.name.split("_")[1]) for p in adapters.glob("epoch_*")}
    folders[adapters / "best"] = best_epoch
    folders[adapters / "last"] = max(rows) if rows else None
    for folder, epoch in folders.items():
        if (folder / CARD).exists():
            card = json.loads((folder / CARD).read_text())
            epoch = card["epoch"] if card.get("epoch") is not None else epoch
            write_card(folder, card, epoch=epoch, checks=rows.get(epoch))


def check_base(folder: Path, card: dict, model_path: str) -> None:
    """An adapter on another base than the one it trained on is garbage: refuse, naming both hashes
    (chat, serve and export all check it before loading weights)."""
    expected, local = card["base"].get("weights_sha256"), weights_sha256(model_path)
    if expected and local and expected != local:
        raise RecipeError(f"adapter {folder} was trained on {card['base']['name_or_path']} with weights sha256 "
                          f"{expected[:16]}..., but {model_path} has weights sha256 {local[:16]}...: "
                          f"not the base it trained on")


def check_base_source(folder: Path, card: dict, named: str | None) -> None:
    """A base that is a hub id is downloaded only when the user names it (`named`: the composed
    config's model.name_or_path): a shared adapter's card alone never makes this process fetch a
    model. A hub base already in the local Hugging Face cache loads as it is; the cache is read
    from disk, with no network. Checked before any weights load (chat, serve and export)."""
    base, revision = str(card["base"]["name_or_path"]), card["base"].get("revision")
    if base.startswith(PREFIX) or Path(base).expanduser().is_dir() or base == named:
        return
    if not is_hub_id(base):
        raise RecipeError(f"adapter {folder} was trained on the base {base}, which is no folder on this machine "
                          f"(nor a Hugging Face hub id)")
    if hub_cached(base, revision):
        return
    at = f" at revision {revision}" if revision else ""
    raise RecipeError(f"adapter {folder} wants the base {base}{at} from the Hugging Face hub, which is not in the "
                      f"local cache; a shared adapter never downloads a model by itself: to allow the download, "
                      f"name it on the command line: model.name_or_path={base}")


def is_hub_id(name: str) -> bool:
    """`name` or `owner/name`, as the hub spells repository ids (a path that is not here is not one)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(name).expanduser().is_absolute() or name.startswith((".", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_cached(repo_id: str, revision: str | None) -> bool:
    """Whether the hub model's config and safetensors weights are in the local Hugging Face cache
    (read from disk only: no request is made)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(config, str):
        return False
    snapshot = Path(config).parent
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, AttributeError):
            return False
        return all((snapshot / s).is_file() for s in shards)
    return any(snapshot.glob("*.safetensors"))


def read_card(folder: Path) -> dict:
    """The card of an adapter folder, or a one-line error naming what is missing. An adapter whose
    weights are only pickled (adapter_model.bin) is refused here, before anything loads."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise RecipeError(f"{folder} is not an adapter folder (no adapter_config.json)")
    if not (folder / safe_load.ADAPTER_WEIGHTS).is_file():  # peft would fall back to the pickle
        held = f" (only {safe_load.PICKLED_ADAPTER}, a pickle)" if (folder / safe_load.PICKLED_ADAPTER).exists() else ""
        raise RecipeError(f"adapter folder {folder} holds no {safe_load.ADAPTER_WEIGHTS}{held}; pickled weights "
                          f"are never loaded (unpickling can run code): save the adapter with safetensors")
    if not (folder / CARD).exists():
        raise RecipeError(f"{folder} has no {CARD}: it was not saved by recipe-runner (or by a version before "
                          f"adapters carried their system prompt and base); retrain, or use it with peft directly")
    card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    if card.get("format") != VERSION:
        raise RecipeError(f"{folder / CARD}: format {card.get('format')!r}, this recipe-runner reads {VERSION}")
    return card


def resolve_adapter(spec: str, output_dir: str) -> Path:
    """adapter=...: an adapter folder, a run folder (its adapters/best, else adapters/last) or `last`
    (the newest run under paths.output_dir that saved one)."""
    if spec == "last":
        runs = Path(output_dir) / "runs"
        found = sorted((p for p in runs.glob("*/*/adapters/best") if (p / CARD).exists()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise RecipeError(f"adapter=last: no run under {runs} has saved an adapter yet; run `python run.py` first")
        return found[-1]
    path = Path(spec).expanduser()
    if not path.exists():
        raise RecipeError(f"adapter={spec}: no such folder")
    if (path / "adapter_config.json").exists():
        return path
    for sub in ("adapters/best", "adapters/last"):
        if (path / sub / "adapter_config.json").exists():
            return path / sub
    raise RecipeError(f"adapter={spec}: neither an adapter folder (adapter_config.json) nor a run folder "
                      f"(adapters/best)")

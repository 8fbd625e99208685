"""Composition, the CLI and config errors: every one a real `python run.py` or Hydra compose."""

import json
from pathlib import Path

import pytest

from recipe_runner.config.schema import drop_null_sources
from omegaconf import OmegaConf

from conftest import REPO, compose_recipe, run_cli
from recipe_runner.validate import validate
from recipe_runner.errors import RecipeErrors
from recipe_runner.stages import STAGES

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_composes_and_passes_checks(name):
    cfg = compose_recipe(name)
    drop_null_sources(cfg)  # `data.sources.alex: null` drops an inherited source, as the runner does first
    assert cfg.name == name
    made = {n: s for n, s in cfg.data.sources.items() if s.path.startswith(cfg.synth.out + "/")}
    if made:  # its dialogues are made by stage=synthesize (recipes/rook_pirate_cpu.yaml): check that stage,
        validate(cfg, "synthesize")  # then the training stages as if they had been made
        for src in made.values():
            src.path = "data/alex/dialogues.jsonl"
    validate(cfg)  # files exist, ratios sane, monitor logged


def test_cfg_job_shows_default_recipe_with_overrides():
    res = run_cli("--cfg", "job", "lora.r=32", "train.max_epochs=12")
    assert res.returncode == 0, res.stderr
    cfg = OmegaConf.create(res.stdout)
    assert cfg.name == "alex_persona_cpu"
    assert cfg.lora.r == 32 and cfg.train.max_epochs == 12
    assert cfg.model.quant == "none"  # the CPU cut: plain LoRA on the float32 base (the GPU recipe: nf4)


def test_a_sweep_jobs_folder_is_taken_as_given(tmp_path):
    """A sweep or search job's folder has Hydra's `=` and `,` in its name: `adapter=` takes it as it is."""
    job = tmp_path / "5_lora.r=16,train.lr=0.004"
    job.mkdir()
    res = run_cli("stage=export", f"adapter={job}", "--cfg", "job")
    assert res.returncode == 0, res.stderr
    assert OmegaConf.create(res.stdout).adapter == str(job)
    res = run_cli("stage=export", f"adapter={tmp_path}/no=such,folder", "--cfg", "job")
    assert res.returncode != 0  # not a folder: Hydra's own reading (a sweep needs -m) stays


def test_a_source_is_added_on_the_command_line():
    res = run_cli("data.sources.extra={path: data/general/replay.jsonl, role: general, weight: 0.5}", "--cfg", "job")
    assert res.returncode == 0, res.stderr
    sources = OmegaConf.create(res.stdout).data.sources
    assert sources.extra.path == "data/general/replay.jsonl" and sources.extra.weight == 0.5
    assert sources.extra.format == "chat_jsonl" and "alex" in sources  # the schema's defaults; the recipe's stay
    named = run_cli("data.sources.extra={_target_: os.system, path: data/general/replay.jsonl}", "--cfg", "job")
    assert named.returncode != 0 and "Key '_target_' not in 'SourceConfig'" in named.stderr  # a source is data


def test_unknown_key_fails_with_key_path():
    res = run_cli("--cfg", "job", "lora.rank=8")
    assert res.returncode != 0
    assert "lora.rank" in res.stderr or "rank" in res.stderr


def test_wrong_type_fails_with_key_path():
    res = run_cli("--cfg", "job", "lora.r=many")
    assert res.returncode != 0
    assert "lora.r" in res.stderr and "many" in res.stderr


def test_recipe_with_target_is_refused_with_file_and_line(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("# @package _global_\nname: evil\nmodel:\n  _target_: os.system\n")
    res = run_cli(f"recipe={bad}", "--cfg", "job")
    assert res.returncode == 2
    assert f"{bad}:4" in res.stderr and "_target_" in res.stderr and "recipes are data" in res.stderr


def test_trust_remote_code_is_refused_in_recipe_and_override(tmp_path):
    bad = tmp_path / "remote.yaml"
    bad.write_text("# @package _global_\nname: remote\nmodel:\n  trust_remote_code: true\n")
    res = run_cli(f"recipe={bad}", "--cfg", "job")
    assert res.returncode == 2 and "trust_remote_code" in res.stderr
    res = run_cli("+model.trust_remote_code=true", "--cfg", "job")
    assert res.returncode == 2 and "trust_remote_code" in res.stderr


def test_recipe_given_by_path_runs_unchanged(tmp_path):
    shared = tmp_path / "from_a_friend.yaml"
    shared.write_text((REPO / "recipes" / "alex_persona.yaml").read_text().replace("name: alex_persona", "name: friend"))
    res = run_cli(f"recipe={shared}", "--cfg", "job")
    assert res.returncode == 0, res.stderr
    assert OmegaConf.create(res.stdout).name == "friend"


def test_unknown_recipe_lists_known_ones():
    res = run_cli("recipe=nope", "--cfg", "job")
    assert res.returncode == 2 and "alex_persona" in res.stderr


def test_cross_field_problems_are_reported_together():
    cfg = compose_recipe("alex_persona", "data.mix.general_ratio=-1", "train.early_stopping.monitor=val/acc",
                         "template.chat_template=vicuna", "data.val_fraction=1.5")
    with pytest.raises(RecipeErrors) as err:
        validate(cfg)
    text = str(err.value)
    for key in ("data.mix.general_ratio", "train.early_stopping.monitor", "template.chat_template", "data.val_fraction"):
        assert key in text
    assert len(err.value.problems) == 4


def test_cross_field_errors_stop_the_cli_before_loading(tmp_path):
    res = run_cli("train.early_stopping.monitor=val/nothing", "data.sources.alex.path=missing.jsonl",
                  f"paths.output_dir={tmp_path}")
    assert res.returncode == 2
    assert "val/nothing" in res.stderr and "missing.jsonl" in res.stderr
    assert "Loading weights" not in res.stderr + res.stdout
    assert list(Path(tmp_path).rglob("error.txt")), "the error is kept in the run folder"


@pytest.mark.slow  # prepares data through the CLI (~7-8 s)
def test_a_recipe_built_on_another_can_drop_an_inherited_source(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("# @package _global_\ndefaults:\n  - alex_persona_cpu\n  - _self_\nname: mine\n"
                    "data:\n  sources:\n    alex: null\n    diarist:\n"
                    "      path: data/eleanor/dialogues.sharegpt.jsonl\n      format: sharegpt\n"
                    "      role: niche\n      system: persona\n")
    res = run_cli(f"recipe={mine}", "stage=prepare", f"paths.output_dir={tmp_path / 'out'}",
                  "logger.wandb.enabled=false", "eval.persona_prompts=null", "template.persona.bible=null",
                  "data.sources.diarist.system=keep")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())
    assert set(manifest["sources"]) == {"diarist", "general"}


def test_help_names_the_stages_commands_and_outputs():
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for stage in STAGES:  # the page lists the table (the stage_list resolver)
        assert f"\n  {stage.name} " in out, f"stage {stage.name} missing from --help"
    assert "python run.py -m sweep=lora_grid" in out and "outputs/runs/RECIPE/TIME/" in out
    assert "docs/reference.md" in out
    assert out.index("Stages") < out.index("name: alex_persona_cpu"), "the guide comes before the config dump"


@pytest.mark.parametrize("override,allowed", [
    ("stage=evaluate", "[train, prepare, compare, chat, serve, export, synthesize]"),
    ("train.strategy=deepspeed", "[auto, ddp, fsdp]"),
    ("train.precision=bf16", "[auto, 32-true, bf16-mixed, 16-mixed]"),
    ("logger.wandb.mode=cloud", "[auto, offline, online, disabled]"),
])
def test_choices_are_enums_that_fail_at_composition(override, allowed, tmp_path):
    res = run_cli(override, f"paths.output_dir={tmp_path}")
    assert res.returncode != 0
    assert override.split("=")[0] in res.stderr and allowed in res.stderr, res.stderr[-2000:]
    assert not list(Path(tmp_path).rglob("manifest.json")), "nothing was prepared"


def test_hyphenated_precision_values_still_compose():
    cfg = compose_recipe("alex_persona_cpu", "train.precision=32-true")
    validate(cfg)
    assert cfg.train.precision.value == "32-true"


def test_loss_options_fail_before_any_data_or_model_loads(tmp_path):
    res = run_cli("train.loss=eaft", "train.eaft_top_k=1", "train.kl_to_base=-1", f"paths.output_dir={tmp_path}")
    assert res.returncode == 2
    assert "train.eaft_top_k=1" in res.stderr and "train.kl_to_base=-1" in res.stderr
    assert not list(Path(tmp_path).rglob("manifest.json")), "validation ran before the data stage"


def test_compare_is_not_held_to_the_training_recipe_rules(tmp_path):
    """stage=compare reads a finished sweep: a training-only problem (a missing source file) is not its business."""
    res = run_cli("stage=compare", f"sweep_dir={tmp_path / 'no_sweep'}", "data.sources.alex.path=missing.jsonl",
                  f"paths.output_dir={tmp_path / 'out'}")
    assert res.returncode == 2
    assert "no_sweep" in res.stderr and "missing.jsonl" not in res.stderr, res.stderr[-2000:]

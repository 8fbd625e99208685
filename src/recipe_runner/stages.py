"""The stages of a run, one row each: what `stage=NAME` checks, runs, where it writes, what it prints.

runner.py dispatches through this table, validate.py runs a stage's checks from it,
config/schema.py names the run folder from it, report/closing.py prints its closing lines from
it, and `python run.py --help` lists it (the `stage_list` resolver in conf/hydra/default.yaml).
The `Stage` enum in config/choices.py stays the schema's vocabulary (OmegaConf checks a choice
against an Enum); a test holds the two to the same names. docs/extending.md: adding a stage.

Functions are named as "module:function" strings and imported only when used: this module
imports nothing of the project, so the schema can read it, and a stage's heavy modules (torch,
Lightning, transformers) load only when that stage runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

_CHECKS = "recipe_runner.validate:"  # every check of today lives there; a new one may live anywhere


@dataclass(frozen=True)
class StageSpec:
    name: str  # the Stage value: stage=NAME on the command line
    help: str  # its entry on `python run.py --help`; a second line (an example command) is indented under it
    checks: tuple[str, ...]  # "module:function"s, each cfg -> a list of problems; all run, then all are reported
    run: str  # "module:function" doing the stage: (cfg, run_dir) -> the summary's fields (see writes_summary)
    folder: str  # the run folder under paths.output_dir, before its time stamp: {recipe} and {stage} filled in
    closing: str | None = None  # "module:function" (run_dir, summary) printing its closing lines; None: none
    # The training pipeline writes summary.json itself (rank 0 only, after the checks) and needs the
    # job's W&B names and start time: run is then (cfg, run_dir, job, started) -> summary. Otherwise
    # the runner writes {"stage": name, **fields} to summary.json.
    writes_summary: bool = False


STAGES: tuple[StageSpec, ...] = (  # in the order --help lists them
    StageSpec("train", "the default: data, training with the persona checks, adapters, summary",
              checks=(_CHECKS + "recipe_problems", _CHECKS + "train_problems", _CHECKS + "eval_problems"),
              run="recipe_runner.runner:pipeline", writes_summary=True, folder="runs/{recipe}",
              closing="recipe_runner.report.closing:train_lines"),
    StageSpec("prepare", "data only: mix and cleaning tables, length report, held-out sets; no weights load",
              # held to the training rules: the data it prepares is what `train` would train on
              checks=(_CHECKS + "recipe_problems", _CHECKS + "train_problems", _CHECKS + "eval_problems"),
              run="recipe_runner.runner:pipeline", writes_summary=True, folder="runs/{recipe}",
              closing="recipe_runner.report.closing:prepare_lines"),
    StageSpec("compare", "a finished sweep's leaderboard: stage=compare sweep_dir=outputs/sweeps/RECIPE/TIME",
              checks=(_CHECKS + "compare_problems",), run="recipe_runner.runner:compare", folder="runs/{recipe}",
              closing="recipe_runner.report.closing:compare_lines"),
    StageSpec("chat", "talk to a trained persona in the terminal:   stage=chat adapter=last",
              checks=(_CHECKS + "chat_problems",), run="recipe_runner.use.chat:chat", folder="use/{stage}"),
    StageSpec("serve", "an OpenAI-compatible server, several personas on one base:\n"
                       "stage=serve adapter=last   or   stage=serve serve.adapters='{alex: RUN, other: RUN}'",
              checks=(_CHECKS + "serve_problems",), run="recipe_runner.use.serve:serve", folder="use/{stage}"),
    StageSpec("export", "stage=export adapter=last export.format=merged|gguf [export.out=FOLDER]",
              checks=(_CHECKS + "export_problems",), run="recipe_runner.use.export:export", folder="use/{stage}",
              closing="recipe_runner.report.closing:export_lines"),
    StageSpec("synthesize", "training dialogues from the recipe's bible, checked against it, into synth.out:\n"
                            "stage=synthesize [synth.generator.base_url=URL synth.generator.model=NAME]",
              checks=(_CHECKS + "synth_problems",), run="recipe_runner.synthesize.stage:synthesize",
              folder="synth/{recipe}",  # the log; the dialogues themselves go to synth.out
              closing="recipe_runner.report.closing:synthesize_lines"),
)
_BY_NAME = {s.name: s for s in STAGES}


def stage_named(stage) -> StageSpec:
    """The row of `stage`: a name or a Stage member."""
    name = getattr(stage, "value", stage)
    if name not in _BY_NAME:
        raise ValueError(f"{name!r} is not a stage: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def load(path: str):
    """The function a "module:function" string names, importing its module now."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_folder(stage, recipe: str) -> str:
    """hydra.run.dir's middle part (a resolver): a training stage's folder is the recipe's run,
    runs/<recipe>; talking to, serving or exporting an adapter is not a run of the recipe:
    use/<stage>; synthesizing its dialogues logs to synth/<recipe>."""
    spec = stage_named(stage)
    return spec.folder.format(recipe=recipe, stage=spec.name)


def stage_list() -> str:
    """The stages' lines of `python run.py --help` (a resolver in conf/hydra/default.yaml)."""
    lines = []
    for spec in STAGES:
        first, *more = spec.help.split("\n")
        lines += [f"  {spec.name:<8}  {first}", *(" " * 12 + line for line in more)]
    return "\n".join(lines)

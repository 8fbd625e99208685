"""The Hydra entry point behind `python run.py`.

Before Hydra runs the job, the recipes and sweep files named on the command line (and the
recipes they build on) are scanned as text (config/recipe_scan.py), the user's own settings file
is added as overrides (config/user_settings.py), and the config is composed with and without the
shared files (config/composed_check.py): shared files are data. A recipe given by path is made
visible to Hydra as an ordinary option of the `recipe` group. User mistakes print one `error:`
message and exit 2.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
RECIPES = REPO / "recipes"
DEFAULT_RECIPE = "alex_persona_cpu"  # conf/config.yaml's default


def _recipe_files(argv: list[str]) -> tuple[list[str], dict[str, Path], Path | None]:
    """Rewrite `recipe=path/to/x.yaml` into a search-path option; return argv, the recipes the
    command may compose (Hydra's option name -> file) and the folder staging recipes given by path."""
    recipes, out, staged = {}, [], None
    for arg in argv:
        if not arg.startswith("recipe="):
            out.append(arg)
            continue
        names = []
        for value in arg.split("=", 1)[1].split(","):
            if value.endswith((".yaml", ".yml")) or os.sep in value:
                path = Path(value).expanduser().resolve()
                if not path.is_file():
                    raise_user(f"recipe={value}: no such file")
                if staged is None:
                    staged = Path(tempfile.mkdtemp(prefix="recipe-runner-"))
                    atexit.register(shutil.rmtree, staged, ignore_errors=True)
                (staged / "recipe").mkdir(exist_ok=True)
                option = f"file__{path.stem}"
                link = staged / "recipe" / f"{option}.yaml"
                if not link.exists():
                    link.symlink_to(path)
                recipes[option] = path
                names.append(option)
            elif any(c in value for c in "()*["):  # choice(...), glob(...): any recipe may be picked
                recipes.update({p.stem: p for p in sorted(RECIPES.glob("*.yaml"))})
                names.append(value)
            else:
                candidate = RECIPES / f"{value}.yaml"
                if not candidate.exists():
                    known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
                    raise_user(f"recipe={value}: no recipes/{value}.yaml; known recipes: {known}")
                recipes[value] = candidate
                names.append(value)
        out.append("recipe=" + ",".join(names))
    if staged:  # a flag, not an override: argparse rejects positionals split around --cfg
        out = ["--config-dir", str(staged), *out]
    if not recipes:
        recipes[DEFAULT_RECIPE] = RECIPES / f"{DEFAULT_RECIPE}.yaml"
    return out, recipes, staged


def _sweep_file(argv: list[str], group: str = "sweep") -> tuple[str, Path] | None:
    """`sweep=NAME` (conf/sweep/NAME.yaml) or `hparams_search=NAME` (conf/hparams_search/NAME.yaml):
    a shared file like a recipe."""
    names = [a.split("=", 1)[1] for a in argv if a.startswith(f"{group}=")]
    if not names or names[-1] == "none":
        return None
    name, folder = names[-1], CONF / group
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or ".." in name or not (folder / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise_user(f"{group}={name}: no conf/{group}/{name}.yaml; known {'sweeps' if group == 'sweep' else 'searches'}: "
                   f"{known}")
    return name, folder / f"{name}.yaml"


def _search(argv: list[str], search: tuple[str, Path] | None, sweep) -> list[str]:
    """`-m hparams_search=NAME` is an Optuna search: our sweeper, and a sweep folder named after the
    search rather than the time, so that the same command run again continues the same study."""
    if search is None:
        return argv
    if sweep is not None:
        raise_user(f"sweep={sweep[0]} and hparams_search={search[0]}: choose one (a search file holds its own params)")
    if not any(a in ("-m", "--multirun") for a in argv) and not any(a in ("-c", "--cfg", "-h", "--help") for a in argv):
        raise_user(f"hparams_search={search[0]} is a search of many runs: add -m (python run.py -m "
                   f"hparams_search={search[0]} ...)")
    at = next((i for i, a in enumerate(argv) if _is_override(a)), len(argv))
    added = [] if any(a.startswith("hydra/sweeper=") for a in argv) else ["hydra/sweeper=optuna"]
    if not any(a.startswith("hydra.sweep.dir=") for a in argv):
        added.append(f"hydra.sweep.dir=${{paths.output_dir}}/sweeps/${{name}}/search_{search[0]}")
    return argv[:at] + added + argv[at:]


SWEEP_MARKS = (",", "range(", "choice(", "glob(", "interval(")


def _name_jobs_by_swept_keys(argv: list[str]) -> list[str]:
    """In a sweep, name job folders (and W&B runs) after the swept keys only.

    `-m lora.r=8,16 data.sources.alex.path=/long/path` gives `0_lora.r=8`, not a folder nested
    under every fixed override.
    """
    if not any(a in ("-m", "--multirun") for a in argv):
        return argv
    from recipe_runner.config.schema import TRIAL_KEYS  # a search's bookkeeping (search/driver.py)

    overrides = [i for i, a in enumerate(argv) if _is_override(a)]
    fixed = [argv[i].split("=", 1)[0].lstrip("+~") for i in overrides
             if not any(m in argv[i].split("=", 1)[1] for m in SWEEP_MARKS)]
    if not overrides:
        return argv
    at = overrides[0]  # next to the other overrides: argparse rejects positionals split by flags
    exclude = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(["train.resume", *TRIAL_KEYS, *fixed]) + "]"
    return argv[:at] + [exclude] + argv[at:]


def raise_user(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    from recipe_runner.errors import RecipeError
    from recipe_runner.config.composed_check import SharedFiles, check_composed
    from recipe_runner.config.recipe_scan import scan_overrides, scan_shared_files
    from recipe_runner.config.user_settings import file_overrides, settings_file

    try:
        argv, recipes, staged = _recipe_files(_quote_folders(sys.argv[1:]))
        sweep = _sweep_file(argv)  # sweep and search files are shared like recipes: data only
        search = _sweep_file(argv, "hparams_search")
        argv = _search(argv, search, sweep)
        shared = [(p, "recipe") for p in recipes.values()] + ([(sweep[1], "sweep")] if sweep else []) + \
            ([(search[1], "search")] if search else [])
        locations = scan_shared_files(shared, RECIPES, CONF / "sweep", CONF)  # the fast line: file:line
        scan_overrides([a for a in argv if "=" in a])
        argv = _with_user_settings(argv, file_overrides(settings_file(), _override_keys(argv)))
        swept = SharedFiles(recipes, search, locations, "hparams_search") if search else SharedFiles(recipes, sweep, locations)
        check_composed(CONF, staged, argv, swept, REPO / "data")  # the firm one
    except RecipeError as exc:
        raise_user(str(exc))
    modes = [a for a in argv if a in ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "-r", "--run")]
    if len({m.lstrip("-")[0] for m in modes}) > 1:
        raise_user(f"{' and '.join(modes)}: choose one (--cfg prints one job's config: drop -m to see it)")
    if not any(a in ("-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help") for a in argv):
        _check_output_dir(argv)
    sys.argv = [sys.argv[0], *_name_jobs_by_swept_keys(_force_add_mappings(argv))]
    _hydra_main()


MIN_FREE_MB = 256  # a CPU run writes ~100 MB (adapters per epoch, last.ckpt, W&B files); an export 500+


def _check_output_dir(argv: list[str]) -> None:
    """paths.output_dir (a user setting: the command line, the user's file or `outputs`) must take
    files before anything runs: otherwise Hydra fails creating the run folder with a traceback, or a
    run fails at its first checkpoint, minutes in."""
    values = [a.split("=", 1)[1].strip("'\"") for a in argv if a.lstrip("+").startswith("paths.output_dir=")]
    folder = Path(values[-1] if values else "outputs").expanduser()
    if "${" in str(folder):
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
        free_mb = shutil.disk_usage(folder).free / 2**20
    except OSError as exc:
        raise_user(f"paths.output_dir={folder}: cannot write there ({exc.strerror or exc}); choose another "
                   f"folder: python run.py ... paths.output_dir=DIR")
    if free_mb < MIN_FREE_MB:
        raise_user(f"paths.output_dir={folder}: only {free_mb:.0f} MB free; a run needs about {MIN_FREE_MB} MB "
                   f"(adapters, checkpoints, logs): free some space or choose another folder")


HYDRA_SPECIAL = set("=,()[]{} \t'\"\\")


def _quote_folders(argv: list[str]) -> list[str]:
    """`adapter=outputs/sweeps/x/5_lora.r=16,train.lr=0.004`: a sweep or search job's folder has
    Hydra's `=` and `,` in its name, which Hydra's override parser refuses (or reads as a sweep). A
    value that is an existing file or folder goes in quoted, as the user meant it."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if (_is_override(arg) and value and value[0] not in "'\"" and HYDRA_SPECIAL & set(value)
                and "'" not in value and Path(value).expanduser().exists()):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def _force_add_mappings(argv: list[str]) -> list[str]:
    """`serve.adapters={alex: RUN, other: RUN}` sets a mapping of the user's own names: Hydra merges
    a plain override into the schema's (empty) mapping and refuses new keys, so it goes in as `++`.
    `data.sources.mine={path: ..., role: general}` adds a source: OmegaConf cannot set a new key of a
    mapping of SourceConfig to a dict, but merges `data.sources={mine: {...}}`, so it goes in as that."""
    out = []
    for a in argv:
        key, _, value = a.partition("=")
        if _is_override(a) and a[0] not in "+~" and value.lstrip().startswith("{"):
            parts = key.split(".")
            if len(parts) == 3 and parts[:2] == ["data", "sources"]:
                a = f"data.sources={{{parts[2]}: {value}}}"
            a = "++" + a
        out.append(a)
    return out


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def _override_keys(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0].lstrip("+~") for a in argv if _is_override(a)}


def _with_user_settings(argv: list[str], settings: list[str]) -> list[str]:
    """The user's settings file goes in just before the first override, so the command line wins."""
    at = next((i for i, a in enumerate(argv) if _is_override(a)), len(argv))
    return argv[:at] + settings + argv[at:]


def _hydra_main() -> None:
    import hydra

    from recipe_runner.config.schema import register

    register()

    @hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
    def job(cfg) -> float | None:
        return run_job(cfg)

    job()


def run_job(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from recipe_runner.errors import RecipeError
    from recipe_runner.train.launch import (DIST_ENV, ddp_children_rerun_this_job, launch_rank, one_gpu_per_parallel_job,
                         reset_distributed)
    from recipe_runner.config.schema import Strategy
    from recipe_runner.report.closing import closing_lines
    from recipe_runner.report import wandb_log
    from recipe_runner.runner import run
    from recipe_runner.train.resume import finished_earlier

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    argv, dist_env = sys.argv, {k: os.environ.get(k) for k in DIST_ENV}
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)
        job = {"group": f"{cfg.name}-{sweep.name}", "name": f"{hc.job.num}_{hc.job.override_dirname or 'base'}"}
    else:
        job = {"group": None, "name": f"{cfg.name}-{run_dir.name}"}
    gpu_lock = None
    try:
        done = finished_earlier(cfg, run_dir, hc.mode == RunMode.MULTIRUN)  # train.resume=sweep
        if done is not None:
            print(f"{job['name']}: finished in {done}; copied, not run again (train.resume=sweep)", flush=True)
            return json.loads((run_dir / "summary.json").read_text()).get("best_score")
        strategy = Strategy(cfg.train.strategy)
        if strategy is not Strategy.auto:  # ddp and fsdp start their other ranks by re-running the command
            ddp_children_rerun_this_job(hc, run_dir, strategy.value)
        gpu_lock = one_gpu_per_parallel_job(cfg, hc)
        summary = run(cfg, run_dir, job)
    except RecipeError as exc:
        (run_dir / "error.txt").write_text(str(exc) + "\n")
        if hc.mode == RunMode.MULTIRUN:
            raise  # Hydra records it, runs the other jobs, and reports the failure at the end
        raise_user(str(exc))
    except Exception as exc:  # a crash (out of memory, a bug): recorded in the job folder too
        import traceback

        (run_dir / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        raise
    finally:
        sys.argv = argv
        if gpu_lock is not None:
            gpu_lock.close()  # the next job of this worker (or another worker) may take the GPU
        wandb_log.finish()  # in a sweep the next job must start its own W&B run
        reset_distributed(dist_env)  # the next DDP job of a sweep starts its own ranks
    if (run_dir / "summary.json").exists() and launch_rank() == 0:  # the headline comes last
        closing_lines(run_dir, summary)
    return summary.get("best_score")

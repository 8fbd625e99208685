"""`hydra/sweeper=optuna`: recipe-runner's Hydra sweeper on current Optuna (ask/tell).

Hydra imports every module under `hydra_plugins` when it starts, so this one stays light: the
sweeper's config schema (registered as hydra/sweeper=optuna) and a class that hands the sweep to
recipe_runner.search.driver, where Optuna is imported. `python run.py -m hparams_search=NAME`
chooses it (cli.py); conf/hparams_search/*.yaml hold the search spaces.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

from recipe_runner.config.choices import SearchObjective, SearchPruner, SearchSampler


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.recipe_runner_optuna.optuna_sweeper.OptunaSweeper"
    n_trials: int = 8  # trials in the study (a rerun of the same command continues it up to this many)
    n_jobs: int = 1  # trials launched together through hydra/launcher (parallel, slurm): your machine's, not a file's
    sampler: SearchSampler = SearchSampler.tpe  # how the next trial is chosen
    seed: int = 0  # the sampler's seed
    objectives: List[SearchObjective] = field(
        default_factory=lambda: [SearchObjective.gain, SearchObjective.forgetting])  # one or two
    pruner: SearchPruner = SearchPruner.median  # stops weak trials by their per-epoch eval/combined
    params: Dict[str, Any] = field(default_factory=dict)  # key -> Hydra sweep syntax (interval, choice, range) or a value


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="recipe_runner")


class OptunaSweeper(Sweeper):
    def __init__(self, n_trials: int, n_jobs: int, sampler, seed: int, objectives, pruner,
                 params: Optional[Dict[str, Any]] = None) -> None:
        self.n_trials, self.n_jobs, self.seed = int(n_trials), int(n_jobs), int(seed)
        self.sampler, self.objectives, self.pruner = sampler, list(objectives), pruner
        self.params = dict(params or {})
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        from recipe_runner.search.driver import run_search

        if self.n_trials < 1 or self.n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials={self.n_trials}, n_jobs={self.n_jobs}: both at least 1")
        run_search(self, arguments)

"""The study on disk: one Optuna journal file in the sweep folder, two studies in it.

- `<name>`: the search itself, one or two objectives (the Pareto front is its result).
- `<name>-pruning`: one value per trial and epoch (eval/combined), for the pruner. Optuna's
  pruners work on single-objective studies only, so the per-epoch scores go to this twin study,
  trial for trial; a trial it prunes is told PRUNED in both.

A journal file (not SQLite): it takes appends from several processes at once through a lock file,
also on the NFS of a SLURM cluster (JournalFileOpenLock), and optuna-dashboard opens it.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from recipe_runner.config.choices import SearchPruner, SearchSampler
from recipe_runner.search.objectives import DIRECTION

JOURNAL = "study.journal"


def storage(journal: str | Path):
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    return JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal))))


def startup_trials(n_trials: int) -> int:
    """Random trials before the model-based samplers take over: Optuna's default of 10 would make a
    search of 8 trials a random one; half the budget, 2 to 10."""
    return max(2, min(10, n_trials // 2))


def sampler(name: SearchSampler, seed: int, n_trials: int):
    s = optuna.samplers
    if name is SearchSampler.tpe:
        return s.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup_trials(n_trials))
    if name is SearchSampler.random:
        return s.RandomSampler(seed=seed)
    if name is SearchSampler.gp:
        return s.GPSampler(seed=seed, n_startup_trials=startup_trials(n_trials))
    return s.NSGAIISampler(seed=seed, population_size=max(2, startup_trials(n_trials)))


def pruner(name: SearchPruner):
    if name is SearchPruner.median:
        # from the 2nd finished trial on, from the first checked epoch on
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name is SearchPruner.halving:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.NopPruner()


def open_studies(journal: Path, name: str, objectives, sampler_name: SearchSampler, seed: int, n_trials: int,
                 pruner_name: SearchPruner, signature: dict):
    """(the search, its pruning twin), created or loaded. A folder holding a study of another search
    (other space, objectives or fixed overrides) is refused: resuming it would mix two searches."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage(journal)
    study = optuna.create_study(storage=store, study_name=name, load_if_exists=True,
                                directions=[DIRECTION[o] for o in objectives],
                                sampler=sampler(sampler_name, seed, n_trials))
    twin = optuna.create_study(storage=store, study_name=twin_name(name), load_if_exists=True,
                               direction="maximize", pruner=pruner(pruner_name))
    text = json.dumps(signature, sort_keys=True)
    earlier = study.user_attrs.get("signature")
    if earlier is None:
        study.set_user_attr("signature", text)
    elif earlier != text:
        raise StudyMismatch(journal, json.loads(earlier), signature)
    return study, twin


class StudyMismatch(RuntimeError):
    def __init__(self, journal: Path, earlier: dict, now: dict):
        diff = [f"{k}: {earlier.get(k)!r} -> {now.get(k)!r}" for k in sorted(earlier.keys() | now.keys())
                if earlier.get(k) != now.get(k)]
        super().__init__(f"{journal} holds a study of another search ({'; '.join(diff)}): rerun the command that "
                         f"started it to continue it, or start a new one with hydra.sweep.dir=ANOTHER_FOLDER")


def twin_name(study: str) -> str:
    return f"{study}-pruning"


def trial_pruner(journal: str, study: str, number: int, pruner_name: SearchPruner):
    """In the trial's own process: its twin trial, to report per-epoch scores and ask whether to stop
    (the pruner is not stored in the journal: each process that asks names it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    twin = optuna.load_study(study_name=twin_name(study), storage=storage(journal), pruner=pruner(pruner_name))
    trial_id = twin._storage.get_trial_id_from_study_id_trial_number(twin._study_id, number)
    return optuna.trial.Trial(twin, trial_id)

"""The search loop behind hydra/sweeper=optuna: ask the study for trials, launch them through
whatever hydra/launcher is set (one after another, `parallel`, `slurm`), tell it what each trial's
summary.json says, and leave compare.md with the Pareto front in the sweep folder.

Resume: rerunning the same command finds the study in the sweep folder (study.py). Trials that
finished or were pruned count; a trial left running (the sweep was killed) is marked failed and
asked again with the same values; a trial whose job failed (error.txt) counts and is not rerun.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from optuna.trial import TrialState

from recipe_runner.config.choices import SearchObjective, SearchPruner, SearchSampler
from recipe_runner.config.schema import TRIAL_KEYS
from recipe_runner.console import console
from recipe_runner.search.objectives import values
from recipe_runner.search.space import SpaceError, parse, override_value
from recipe_runner.search.study import JOURNAL, open_studies


class SearchError(RuntimeError):
    pass


def run_search(sweeper, arguments: list[str]) -> None:
    cfg = sweeper.config
    sweep_dir = Path(str(cfg.hydra.sweep.dir)).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        space, fixed = parse({str(k): str(v) for k, v in (sweeper.params or {}).items()}, arguments)
    except SpaceError as exc:
        raise SearchError(f"hydra.sweeper.params: {exc}") from None
    objectives = [SearchObjective(o) for o in sweeper.objectives]
    if not 1 <= len(objectives) <= 2 or len(set(objectives)) != len(objectives):
        raise SearchError(f"hydra.sweeper.objectives={[o.value for o in objectives]}: one or two different objectives")
    sampler, pruner = SearchSampler(sweeper.sampler), SearchPruner(sweeper.pruner)
    name = f"{cfg.name}-{sweep_dir.name}"  # also the W&B group of every trial (cli.run_job)
    journal = sweep_dir / JOURNAL
    signature = {"space": {k: repr(d) for k, d in sorted(space.items())}, "fixed": sorted(fixed),
                 "objectives": [o.value for o in objectives], "sampler": sampler.value, "seed": sweeper.seed,
                 "pruner": pruner.value}
    study, twin = open_studies(journal, name, objectives, sampler, sweeper.seed, sweeper.n_trials, pruner, signature)
    retry_killed(study, twin)
    exclude = [*dict.fromkeys([*cfg.hydra.job.config.override_dirname.exclude_keys, *TRIAL_KEYS]),
               *(line.split("=", 1)[0].lstrip("+~") for line in fixed)]
    console.print(f"search         {name}: {sweeper.n_trials} trials, {sampler.value} sampler (seed {sweeper.seed}), "
                  f"{' and '.join(o.value for o in objectives)}, pruner {pruner.value}; study: {journal}", highlight=False)
    failed = []
    while (left := sweeper.n_trials - finished(study)) > 0:
        batch = [(study.ask(space), twin.ask()) for _ in range(min(sweeper.n_jobs, left))]
        jobs = [fixed + [f"{k}={override_value(v)}" for k, v in sorted(t.params.items())] +
                [f"trial.journal={override_value(str(journal))}", f"trial.study={override_value(name)}",
                 f"trial.number={t.number}", f"trial.pruning_number={p.number}", f"trial.pruner={pruner.value}",
                 f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]"] for t, p in batch]
        started = time.time()
        for (t, _), job in zip(batch, jobs):
            shown = " ".join(j for j in job if not j.startswith(("trial.", "hydra.")) and j not in fixed)
            console.print(f"{label(t.number)}{shown}", highlight=False)
        returns = launch(sweeper, batch, jobs)
        for (t, p), ret in zip(batch, returns):
            error = record(study, twin, t, p, ret, objectives, sweep_dir, time.time() - started)
            if error:
                failed.append(f"trial {t.number}: {error}")
    front(study, objectives, sweep_dir)
    if failed:
        raise SearchError(f"{len(failed)} trial(s) failed (their folders hold error.txt): " + "; ".join(failed))


def label(number: int) -> str:
    return f"{f'trial {number}':<15}"  # the console's column of stage names (search, train, evaluation)


def retry_killed(study, twin) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        console.print(f"{label(t.number)}did not finish (the sweep was stopped): asked again with the same "
                      f"values", highlight=False)
    for t in twin.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        twin.tell(t.number, state=TrialState.FAIL)


def finished(study) -> int:
    """Trials that count toward n_trials: finished, pruned, or failed by their job (not killed)."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
               (t.state is TrialState.FAIL and "error" in t.user_attrs) for t in study.get_trials(deepcopy=False))


def launch(sweeper, batch, jobs) -> list:
    """Job folders are numbered by trial: consecutive trial numbers go to the launcher together."""
    returns, i = [], 0
    while i < len(batch):
        j = i + 1
        while j < len(batch) and batch[j][0].number == batch[j - 1][0].number + 1:
            j += 1
        sweeper.validate_batch_is_legal(jobs[i:j])
        returns += list(sweeper.launcher.launch(jobs[i:j], initial_job_idx=batch[i][0].number))
        i = j
    return returns


def job_folder(ret, sweep_dir: Path, number: int) -> Path | None:
    try:
        return Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
    except Exception:
        found = sorted(sweep_dir.glob(f"{number}_*"))
        return found[0] if found else None


def record(study, twin, t, p, ret, objectives, sweep_dir: Path, seconds: float) -> str | None:
    """Tell both studies what the trial's summary.json says; the job's error, if it failed."""
    from hydra.core.utils import JobStatus

    folder = job_folder(ret, sweep_dir, t.number)
    summary_file = folder / "summary.json" if folder else None
    error = None
    if ret.status is not JobStatus.COMPLETED or summary_file is None or not summary_file.exists():
        err = folder / "error.txt" if folder else None
        error = (err.read_text().strip().splitlines() or ["(empty error.txt)"])[0] if err and err.exists() \
            else f"no summary.json ({ret._return_value!r})"
    else:
        summary = json.loads(summary_file.read_text())
        search = summary.get("search") or {}
        scores = search.get("epoch_scores") or {}
        if search.get("pruned_at_epoch") is not None:
            study.tell(t, state=TrialState.PRUNED)
            twin.tell(p, state=TrialState.PRUNED)
            console.print(f"{label(t.number)}pruned at epoch {search['pruned_at_epoch']} ({seconds:.0f} s)", highlight=False)
            return None
        vals, error = values(summary, objectives)
        if vals is not None:
            study.tell(t, vals)
            last = [v for _, v in sorted(scores.items(), key=lambda kv: int(kv[0]))]
            if last:
                twin.tell(p, last[-1])
            else:
                twin.tell(p, state=TrialState.FAIL)
            console.print(f"{label(t.number)}" + ", ".join(f"{o.value} {v:+.3f}" for o, v in zip(objectives, vals))
                          + f" ({seconds:.0f} s)", highlight=False)
            return None
    t.set_user_attr("error", error)
    study.tell(t, state=TrialState.FAIL)
    twin.tell(p, state=TrialState.FAIL)
    console.print(f"{label(t.number)}[red]failed[/]: {error}", highlight=False)
    return error


def front(study, objectives, sweep_dir: Path) -> None:
    """compare.md/csv with the Pareto trials marked, the gain-vs-forgetting plot, the front printed."""
    from recipe_runner.report.compare import compare

    best = [t.number for t in study.best_trials] if any(t.state is TrialState.COMPLETE for t in study.trials) else []
    (sweep_dir / "pareto.json").write_text(json.dumps(
        {"objectives": [o.value for o in objectives], "trials": best,
         "values": {t.number: t.values for t in study.best_trials} if best else {}}, indent=2))
    compare(str(sweep_dir))
    console.print(f"search         Pareto front: trials {best or 'none (no trial finished)'}; "
                  f"{sweep_dir / 'compare.md'}", highlight=False)

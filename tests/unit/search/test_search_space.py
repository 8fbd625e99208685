"""The search's pieces without training: Hydra sweep syntax -> Optuna distributions, the samplers by
name on two objectives, the objectives read from a summary."""

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from recipe_runner.config.choices import SearchObjective, SearchPruner, SearchSampler
from recipe_runner.search.objectives import values
from recipe_runner.search.space import SpaceError, override_value, parse
from recipe_runner.search.study import open_studies


def test_hydra_sweep_syntax_becomes_optuna_distributions_and_the_command_line_wins():
    space, fixed = parse({"train.lr": "tag(log, interval(1e-4, 1e-2))", "lora.r": "choice(4, 8, 16)",
                          "train.max_epochs": "range(1, 4)", "data.mix.general_ratio": "tag(int, interval(1, 4))",
                          "lora.dropout": "interval(0.0, 0.1)", "eval.every_n_epochs": "1", "lora.alpha": "16,32"},
                         ["lora.r=8", "train.seed=choice(0,1)"])
    assert space["train.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["train.max_epochs"] == IntDistribution(1, 3)  # Hydra's range end is exclusive
    assert space["data.mix.general_ratio"] == IntDistribution(1, 4)
    assert space["lora.dropout"] == FloatDistribution(0.0, 0.1)
    assert space["lora.alpha"] == CategoricalDistribution([16, 32])
    assert space["train.seed"] == CategoricalDistribution([0, 1])
    assert "lora.r" not in space and fixed == ["eval.every_n_epochs=1", "lora.r=8"]  # a single value fixes it
    assert parse({}, ["train.max_epochs=range(2,9,3)"])[0]["train.max_epochs"] == IntDistribution(2, 8, step=3)


@pytest.mark.parametrize("params, named", [
    ({"train.lr": "interval(1e-2, 1e-4)"}, "low < high"),
    ({"train.lr": "tag(log, interval(0, 1))"}, "low > 0"),
    ({"lora.r": "tag(int, interval(1.5, 4))"}, "whole bounds"),
    ({"recipe": "glob(*)"}, "a search takes"),
    ({"eval.every_n_epochs": "1"}, "nothing to search"),
])
def test_a_space_a_search_cannot_use_is_named(params, named):
    with pytest.raises(SpaceError, match=named):
        parse(params, [])


def test_values_reach_the_run_as_override_text():
    assert override_value(0.0026734567) == "0.002673" and override_value(8) == "8"
    assert override_value("alex persona") == "alex\\ persona" and override_value(True) == "True"  # Hydra reads True as true


@pytest.mark.parametrize("sampler", list(SearchSampler))
def test_every_sampler_runs_a_two_objective_study_from_its_name(sampler, tmp_path):
    objectives = [SearchObjective.gain, SearchObjective.forgetting]
    study, twin = open_studies(tmp_path / "study.journal", "s", objectives, sampler, 0, 6, SearchPruner.median,
                               {"space": "x"})
    space = parse({"x": "interval(0.0, 1.0)", "r": "choice(4, 8)"}, [])[0]
    for _ in range(6):
        t = study.ask(space)
        study.tell(t, [t.params["x"], t.params["x"] ** 2 + (t.params["r"] == 8)])
    assert len(study.best_trials) >= 1 and all(t.state.name == "COMPLETE" for t in study.trials)
    with pytest.raises(Exception, match="another search"):  # the same folder, another space
        open_studies(tmp_path / "study.journal", "s", objectives, sampler, 0, 6, SearchPruner.median, {"space": "y"})


def test_objectives_come_from_the_chosen_epochs_checks():
    summary = {"checks_best": {"persona/adherence_gain": 0.2, "forget/ordinary_nll_delta": 0.01, "combined": 0.15},
               "val_loss": {"val/loss": 1.3}}
    assert values(summary, list(SearchObjective)) == ([0.2, 0.01, 0.15, 1.3], None)
    got, why = values({"checks_best": {}}, [SearchObjective.gain])
    assert got is None and "persona checks did not run" in why

"""Hyper-parameter search (hydra/sweeper=optuna, hparams_search=NAME): the space, the study, the
objectives read from each trial's summary.json, pruning by the per-epoch checks, the driver loop.
The Hydra plugin (src/hydra_plugins/recipe_runner_optuna) only hands the sweep to search/driver.py."""

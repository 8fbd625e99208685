"""recipe-runner: declarative persona fine-tuning.

Packages by stage, data flowing one way (docs/architecture.md has the map):
config (schema, validation, shared-file safety) -> data (read, clean, template, cache, mix,
batches) -> model (base weights + LoRA) -> train (module, losses, fit, adapters, scale) ->
evaluate (checks against the prompt-only baseline) -> report (tables, report.md, summary, W&B).
`runner.py` runs them as a sequence of stages; `cli.py` is `python run.py`.
"""

__version__ = "0.1.0"

"""recipe-runner: declarative persona fine-tuning.

Data flows one way:
recipe -> config (schema, checks) -> corpus -> templates (tokens + labels) -> mixing (split,
ratio) -> batches -> module (Lightning) -> checkpoints/adapters -> summary.
"""

__version__ = "0.1.0"

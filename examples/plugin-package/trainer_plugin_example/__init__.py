"""Example plugins for trainer, registered as entry points in pyproject.toml.

Nothing is imported here on purpose: trainer imports `qa_pairs` or `loss_log` only when a config
chooses it, so each plugin module stays independent and cheap to load.
"""

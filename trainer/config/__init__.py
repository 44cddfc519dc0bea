"""Layer 0, the config language: the schema, YAML with line numbers, overrides, errors, and the fact tables
(optimizers, local paths). Imports nothing else of trainer.
"""

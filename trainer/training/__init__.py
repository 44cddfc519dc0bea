"""Layer 5, the framework layer: our TRL trainer subclass, the callbacks around it and the final
save. Every use of a private TRL, transformers, accelerate or torch API in trainer/ and plugins/ lives
in this package, each marked with a comment naming the version it was written against and why the
public API does not serve (docs/architecture.md lists them; tests/test_architecture.py keeps them
here).
"""

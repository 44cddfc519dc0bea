"""Layer 5, the framework layer: our TRL trainer subclass and the callbacks around it. Every use of a
private TRL, transformers or accelerate API lives in this package, each marked with the version it was
written against.
"""

"""Built-in generation metrics (`trainer.metrics` entry points)."""

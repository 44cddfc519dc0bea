"""Built-in eval plugins (`trainer.evals` entry points): loss, generation, lm_eval."""

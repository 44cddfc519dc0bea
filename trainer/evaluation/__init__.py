"""Measure a model: the `evals:` of a config (eval plugins: loss, generation metrics, lm-eval tasks)
run on a model in memory, before and after training or from `trainer evaluate`."""

"""Built-in reward functions (the `trainer.rewards` plugins) that `grpo` calls: answer_match, answer_similarity."""

"""Built-in reward functions (`trainer.rewards` plugins) for grpo: answer_match, answer_similarity."""

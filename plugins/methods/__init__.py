"""Built-in training methods (the `trainer.methods` plugins): sft, dpo, kto, orpo, simpo, reward, grpo."""

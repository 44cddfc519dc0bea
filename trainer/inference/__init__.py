"""Use what was trained: load any run folder (or Hugging Face model folder) for generation, render
prompts as the run was trained, generate in batches or as a stream. The generate, chat, serve and
evaluate commands are thin front ends over this package."""

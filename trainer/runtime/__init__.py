"""Layer 6, running a config: assembling tokenizer, model and trainer from the resolved config, launching
processes, and the run from start to saved model.
"""

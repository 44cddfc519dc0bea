"""trainer: fine-tune LLMs from one validated YAML file, assembled from plugins on top of TRL."""

__version__ = "0.1.0"

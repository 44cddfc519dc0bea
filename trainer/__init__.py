"""trainer: fine-tune LLMs from one validated YAML file, assembled from plugins on top of TRL."""

import logging

__version__ = "0.1.0"

# transformers imports torchao whenever it is installed (the `qat` extra); torchao 0.18 then warns on
# every start about each CUDA extension a CPU machine cannot load, and torch 2.13 about the Enum types
# torchao registers with pytree. Neither is about the run: only their errors are shown.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
del _name

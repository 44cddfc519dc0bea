"""`sft`: supervised fine-tuning with TRL's SFTTrainer (the default method).

method: sft        # or leave `method` out
"""

from __future__ import annotations

from trainer.api import Method, Options


class Sft(Method[Options]):
    """Supervised fine-tuning: the loss on the trained tokens of each example."""

    name = "sft"
    data = ("sft",)
    packing = True

    def trainer(self) -> tuple[type, type]:
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer, SFTConfig

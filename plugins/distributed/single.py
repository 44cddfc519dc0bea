"""`none`: one process (the default). Still works when started under torchrun/accelerate launch."""

from __future__ import annotations

from trainer.api import Distributed


class SingleProcess(Distributed):
    name = "none"

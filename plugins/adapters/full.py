"""`full`: every weight of the model trains. The output is a complete Hugging Face model."""

from __future__ import annotations

from trainer.api import Adapter


class Full(Adapter):
    name = "full"

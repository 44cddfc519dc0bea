"""One rule for whether a model or dataset name means a local path or a Hugging Face hub id."""

from __future__ import annotations

import os


def looks_local(name: str) -> bool:
    """A local path rather than a hub id (`org/name`, one slash): absolute, relative (`./`, `../`),
    under home (`~`), an existing file or folder, or more than one slash."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or os.sep * 2 in name
        or os.path.exists(name)
    )

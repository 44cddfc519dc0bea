"""The one rule for "a local path or a hub id", used by validate and merge alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config.paths import looks_local


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("meta-llama/Llama-3.2-1B", False),  # a hub id: one slash
        ("gpt2", False),
        ("./models/tiny", True),
        ("../models/tiny", True),
        ("~/models/tiny", True),
        ("/abs/models/tiny", True),
        ("models/tiny/v2", True),  # two slashes: no hub id has them
        ("models//tiny", True),
    ],
)
def test_local_or_hub(name: str, local: bool) -> None:
    assert looks_local(name) is local


def test_an_existing_folder_is_local_even_if_it_looks_like_a_hub_id(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert looks_local("org/model") and not looks_local("org/other")

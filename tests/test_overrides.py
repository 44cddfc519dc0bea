"""Command-line overrides: key parsing, applying them to the YAML data, and validation like file
values (trainer.config.overrides, through trainer.resolve.validate.load_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config.errors import ConfigErrors
from trainer.config.overrides import apply_overrides, parse_key
from trainer.resolve.validate import load_config


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("learning_rate", ("learning_rate",)),
        ("adapter.r", ("adapter", "r")),
        ("datasets[0].path", ("datasets", 0, "path")),
        ("datasets[12]", ("datasets", 12)),
        ("a[1][2].b-c", ("a", 1, 2, "b-c")),
        ("trainer_args.logging_steps", ("trainer_args", "logging_steps")),
    ],
)
def test_parse_key(key: str, path: tuple[str | int, ...]) -> None:
    assert parse_key(key) == path


@pytest.mark.parametrize("key", ["", "a..b", "a.", "0a", "a[x]", "a[0", "[0]", "a b"])
def test_parse_key_rejects_malformed(key: str) -> None:
    with pytest.raises(ValueError, match="cannot parse key"):
        parse_key(key)


def test_values_are_parsed_as_yaml() -> None:
    data: dict = {}
    problems, where = apply_overrides(
        data,
        [
            "lr=1e-4",
            "big=2E5",
            "neg=-3.5e-2",
            "dotted=1.0e-4",
            "count=8",
            "flag=true",
            "none=null",
            "word=abc",
            "quoted='8'",
            "items=[q_proj, v_proj]",
            "block={type: lora, r: 4}",
            "empty=",
            "eq=a=b",
        ],
    )
    assert problems == []
    assert data == {
        "lr": 1e-4,
        "big": 2e5,
        "neg": -3.5e-2,
        "dotted": 1e-4,
        "count": 8,
        "flag": True,
        "none": None,
        "word": "abc",
        "quoted": "8",
        "items": ["q_proj", "v_proj"],
        "block": {"type": "lora", "r": 4},
        "empty": "",
        "eq": "a=b",
    }
    assert type(data["lr"]) is float and type(data["big"]) is float and type(data["count"]) is int
    assert where[("lr",)] == "lr=1e-4"


def test_file_values_read_exponents_as_floats_too() -> None:
    from trainer.config.yaml_lines import load_yaml_text

    data, source = load_yaml_text("lr: 1e-4\ntrainer_args:\n  adam_epsilon: 1E-8\nname: e5\n", "cfg.yml")
    assert data == {"lr": 1e-4, "trainer_args": {"adam_epsilon": 1e-8}, "name": "e5"}
    assert source.where(("trainer_args", "adam_epsilon")) == "cfg.yml:3"


def test_nested_keys_and_list_indexes() -> None:
    data = {
        "adapter": {"type": "lora", "r": 16},
        "datasets": [{"path": "a.jsonl", "type": "completion"}, {"path": "b.jsonl", "type": "alpaca"}],
    }
    problems, where = apply_overrides(
        data,
        [
            "adapter.r=8",
            "datasets[1].path=c.jsonl",
            "datasets[0].field=body",
            "trainer_args.logging_first_step=false",
            "datasets[2]={path: d.jsonl, type: completion}",  # the next index appends
        ],
    )
    assert problems == []
    assert data == {
        "adapter": {"type": "lora", "r": 8},
        "datasets": [
            {"path": "a.jsonl", "type": "completion", "field": "body"},
            {"path": "c.jsonl", "type": "alpaca"},
            {"path": "d.jsonl", "type": "completion"},
        ],
        "trainer_args": {"logging_first_step": False},
    }
    assert where == {
        ("adapter", "r"): "adapter.r=8",
        ("datasets", 1, "path"): "datasets[1].path=c.jsonl",
        ("datasets", 0, "field"): "datasets[0].field=body",
        ("trainer_args", "logging_first_step"): "trainer_args.logging_first_step=false",
        ("datasets", 2): "datasets[2]={path: d.jsonl, type: completion}",
    }


def test_option_on_a_bare_plugin_name_turns_it_into_a_block() -> None:
    data = {"adapter": "lora", "attention": "sdpa"}
    problems, _ = apply_overrides(data, ["adapter.r=8", "adapter.alpha=16"])
    assert problems == []
    assert data == {"adapter": {"type": "lora", "r": 8, "alpha": 16}, "attention": "sdpa"}


def test_bad_overrides_are_problems_not_exceptions() -> None:
    data = {"adapter": {"type": "lora"}, "datasets": [{"path": "a.jsonl"}], "seed": 1}
    problems, where = apply_overrides(
        data, ["nonsense", "a..b=1", "datasets[3].path=x", "seed.sub=1", "adapter[0]=x", "x=[", "seed=2"]
    )
    rendered = [p.render() for p in problems]
    assert rendered[:5] == [
        "override 'nonsense'  <root>: an override must look like key.sub=value",
        "override 'a..b=1'  <root>: cannot parse key 'a..b' (expected a.b or a[0].b)",
        "override 'datasets[3].path=x'  datasets[3].path: index 3 is out of range (the list has 1 items)",
        "override 'seed.sub=1'  seed.sub: is not a mapping, cannot set a key in it",
        "override 'adapter[0]=x'  adapter[0]: is not a list, cannot index it",
    ]
    assert rendered[5].startswith("override 'x=['  x: cannot read the value: invalid YAML: ")
    assert len(problems) == 6
    assert data["seed"] == 2 and where == {("seed",): "seed=2"}  # the good one still applies


@pytest.fixture
def config(write_config, tiny_model: Path, toy_data: Path, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    return write_config(
        f"""
        base_model: {tiny_model}
        datasets:
          - path: {toy_data / "train.jsonl"}
            type: prompt_completion
        adapter: lora
        learning_rate: 2.0e-4
        output_dir: {tmp_path / "out"}
        """
    )


def test_overrides_reach_the_resolved_config(config: Path, toy_data: Path) -> None:
    resolved = load_config(
        str(config),
        ["learning_rate=1e-4", "adapter.r=8", "datasets[0].completion_field=generation", "seed=7"],
    )
    assert resolved.config.learning_rate == 1e-4
    assert resolved.config.seed == 7
    assert resolved.adapter.entry.name == "lora"
    assert resolved.adapter.plugin.options.r == 8  # type: ignore[attr-defined]
    assert resolved.formatters[0].plugin.options.completion_field == "generation"  # type: ignore[attr-defined]
    data = resolved.to_dict()
    assert data["adapter"]["r"] == 8 and data["adapter"]["type"] == "lora"
    assert data["datasets"][0]["completion_field"] == "generation"


def test_overrides_are_validated_like_file_values(config: Path) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_config(
            str(config),
            ["adapter.r=abc", "adapter.rr=4", "learning_rat=1", "micro_batch_size=0", "adapter.type=lorra"],
        )
    rendered = [p.render() for p in caught.value.problems]
    # adapter options are not checked while the adapter itself is unknown
    assert sorted(rendered) == sorted(
        [
            "override 'adapter.type=lorra'  adapter.type: unknown adapter 'lorra' (did you mean 'lora'?); "
            "known: full, galore, lora, qlora",
            "override 'learning_rat=1'  learning_rat: unknown key 'learning_rat' "
            "(did you mean 'learning_rate'?)",
            "override 'micro_batch_size=0'  micro_batch_size: input should be greater than 0 (got 0)",
        ]
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(config), ["adapter.r=abc", "adapter.rr=4"])
    assert [p.render() for p in caught.value.problems] == [
        "override 'adapter.r=abc'  adapter.r: input should be a valid integer, unable to parse string as an "
        "integer (got 'abc')",
        "override 'adapter.rr=4'  adapter.rr: unknown key 'rr' (did you mean 'r'?)",
    ]


def test_override_of_a_value_from_the_file_is_located_at_the_override(config: Path) -> None:
    """A problem in a value an override replaced points at the override, not at the file line."""
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(config), ["learning_rate=-1"])
    assert [p.render() for p in caught.value.problems] == [
        "override 'learning_rate=-1'  learning_rate: input should be greater than 0 (got -1)"
    ]

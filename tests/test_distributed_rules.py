"""Validate-time rules of the distributed backends: combinations that cannot run fail with the
reason and the line, before any process starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import toy_config, write_yaml
from trainer.config.errors import ConfigErrors
from trainer.config.validate import load_config

GALORE = {"type": "galore", "target_modules": ["mlp"]}
LORA_8BIT = {"type": "lora", "load_in_8bit": True}


def problems(tmp_path: Path, tiny_model: Path, toy_data: Path, **overrides: Any) -> str:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **overrides)
    path = write_yaml(tmp_path / "cfg.yml", config)
    try:
        load_config(str(path))
    except ConfigErrors as err:
        return str(err)
    return ""


def test_valid_backends_pass(tmp_path, tiny_model, toy_data):
    for block in ({"type": "fsdp"}, {"type": "fsdp", "version": 1, "sharding": "hybrid_shard"}):
        assert problems(tmp_path, tiny_model, toy_data, distributed=block) == ""
    pytest.importorskip("deepspeed")
    assert problems(tmp_path, tiny_model, toy_data, distributed={"type": "deepspeed", "stage": 3}) == ""


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"distributed": "fsdp", "trainer_args": {"deepspeed": {"zero_optimization": {"stage": 2}}}},
         "trainer_args.deepspeed and distributed: fsdp cannot run together"),
        ({"distributed": "ddp", "trainer_args": {"fsdp": True}},
         "trainer_args.fsdp and distributed: ddp cannot run together"),
        ({"distributed": {"type": "fsdp", "sharding": "no_shard"}},
         "distributed.sharding: 'no_shard' needs version: 1"),
        ({"distributed": {"type": "fsdp", "activation_checkpointing": True}, "gradient_checkpointing": True},
         "set this or the top-level gradient_checkpointing, not both"),
        ({"distributed": "fsdp", "adapter": GALORE},
         "GaLore cannot run under fsdp"),
        ({"distributed": {"type": "ddp", "nnodes": 2, "node_rank": 2}},
         "distributed.node_rank: 2 must be below nnodes (2)"),
    ],
)  # fmt: skip
def test_fsdp_and_launch_rules(tmp_path, tiny_model, toy_data, overrides, expected):
    assert expected in problems(tmp_path, tiny_model, toy_data, **overrides)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"distributed": {"type": "deepspeed", "stage": 2}, "adapter": GALORE},
         "GaLore cannot run under deepspeed"),
        ({"distributed": {"type": "deepspeed", "offload_optimizer": "cpu"}, "optimizer": "adamw_8bit"},
         "distributed.offload_optimizer: offloading runs DeepSpeed's own CPU Adam"),
        ({"distributed": {"type": "deepspeed", "stage": 3}, "adapter": LORA_8BIT},
         "distributed.stage: ZeRO-3 cannot partition an 8-bit"),
        ({"distributed": {"type": "deepspeed", "stage": 2, "offload_param": "cpu"}},
         "offloads weights, which only stage 3 shards"),
        ({"distributed": {"type": "deepspeed", "stage": 3, "offload_param": "nvme"}},
         "distributed.nvme_path: nvme offload needs nvme_path"),
        ({"distributed": {"type": "deepspeed", "config_file": "missing.json"}},
         "distributed.config_file: cannot read missing.json"),
    ],
)  # fmt: skip
def test_deepspeed_rules(tmp_path, tiny_model, toy_data, overrides, expected):
    pytest.importorskip("deepspeed")
    assert expected in problems(tmp_path, tiny_model, toy_data, **overrides)

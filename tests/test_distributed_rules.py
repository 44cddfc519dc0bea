"""Validate-time rules of the distributed backends: combinations that cannot run fail with the
reason and the line, before any process starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import toy_config, write_yaml
from trainer.config.errors import ConfigErrors
from trainer.resolve.validate import load_config

GALORE = {"type": "galore", "target_modules": ["mlp"]}
LORA_8BIT = {"type": "lora", "load_in_8bit": True}


def problems(tmp_path: Path, tiny_model: Path, toy_data: Path, **overrides: Any) -> str:
    """The config's own problems (what this machine lacks for it is check_machine's, tested below)."""
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **overrides)
    path = write_yaml(tmp_path / "cfg.yml", config)
    try:
        load_config(str(path), skip_machine_checks=True)
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
        ({"distributed": {"type": "deepspeed", "config_file": "."}},
         "distributed.config_file: cannot read .: Is a directory"),
    ],
)  # fmt: skip
def test_deepspeed_rules(tmp_path, tiny_model, toy_data, overrides, expected):
    pytest.importorskip("deepspeed")
    assert expected in problems(tmp_path, tiny_model, toy_data, **overrides)


def test_a_missing_deepspeed_file_is_the_machines(tmp_path, tiny_model, toy_data):
    """The JSON a config names lives on the machine that trains: a note under --skip-machine-checks,
    an error where the run would start."""
    pytest.importorskip("deepspeed")
    block = {"type": "deepspeed", "config_file": str(tmp_path / "zero2.json")}
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", distributed=block)
    path = str(write_yaml(tmp_path / "cfg.yml", config))
    skipped = load_config(path, skip_machine_checks=True).skipped
    assert [(p.path, p.message, p.machine) for p in skipped] == [
        (("distributed", "config_file"), f"{tmp_path / 'zero2.json'} does not exist", True)
    ]
    with pytest.raises(ConfigErrors, match=r"zero2\.json does not exist"):
        load_config(path)


def resolved_config(tmp_path: Path, tiny_model: Path, toy_data: Path, overrides=None, **keys: Any):
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **keys)
    return load_config(str(write_yaml(tmp_path / "cfg.yml", config)), overrides, skip_machine_checks=True)


def test_fsdp1_sharded_resume_is_refused(tmp_path, tiny_model, toy_data):
    block = {"type": "fsdp", "version": 1}
    found = problems(tmp_path, tiny_model, toy_data, distributed=block, resume="auto")
    assert "distributed.version: FSDP1's sharded checkpoints resume without the optimizer state" in found
    full = {**block, "checkpoint_state_dict": "full"}
    assert problems(tmp_path, tiny_model, toy_data, distributed=full, resume="auto") == ""


def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype(tmp_path, tiny_model, toy_data):
    pytest.importorskip("bitsandbytes")
    import torch

    qlora = {"type": "qlora", "r": 4}
    for distributed, storage in (("fsdp", torch.float32), ("ddp", torch.uint8)):
        resolved = resolved_config(tmp_path, tiny_model, toy_data, adapter=qlora, distributed=distributed)
        quantization = resolved.adapter.plugin.bnb_config(resolved.config)  # type: ignore[attr-defined]
        assert quantization.bnb_4bit_quant_storage == storage, distributed
    found = problems(
        tmp_path, tiny_model, toy_data, adapter={**qlora, "quant_storage": "uint8"}, distributed="fsdp"
    )
    assert "adapter.quant_storage: FSDP shards weights of one dtype" in found


def test_one_process_per_gpu():
    from trainer.runtime.run import too_many_processes

    assert "4 processes per node but this machine has 2 GPU(s)" in str(too_many_processes(4, 2))
    assert too_many_processes(2, 2) is None
    assert too_many_processes(8, 0) is None  # CPU: gloo processes, any number


def test_fsdp1_with_an_adapter_is_refused_at_start_on_cpu(tmp_path, tiny_model, toy_data):
    import torch

    from trainer.runtime.run import check_machine

    if torch.cuda.is_available():
        pytest.skip("the rule is for CPU-only machines")
    resolved = resolved_config(
        tmp_path, tiny_model, toy_data, adapter="lora", distributed={"type": "fsdp", "version": 1}
    )
    with pytest.raises(ConfigErrors, match=r"distributed\.version: FSDP1 cannot save a PEFT adapter"):
        check_machine(resolved)
    check_machine(resolved_config(tmp_path, tiny_model, toy_data, adapter="lora", distributed="fsdp"))


@pytest.mark.parametrize(
    ("block", "refusal"),
    [
        (
            {"version": 1, "cpu_offload": True},
            r"distributed\.cpu_offload: moves GPU weights to CPU RAM; this",
        ),
        (
            {"version": 2, "cpu_offload": True},
            r"distributed\.cpu_offload: moves GPU weights to CPU RAM; this",
        ),
        (
            {"version": 1, "checkpoint_state_dict": "full"},
            r"checkpoint_state_dict: 'full' needs a GPU under FSDP1",
        ),
    ],
)
def test_fsdp_options_that_need_a_gpu_are_refused_at_start_on_cpu(
    tmp_path, tiny_model, toy_data, block, refusal
):
    """Offloading to CPU RAM on a machine without a GPU (the weights are there already, and PyTorch's
    offload pins memory, which fails without an accelerator); FSDP1 gathering a full state dict for a
    checkpoint (process 0 dies of SIGSEGV on CPU): refused before any process starts."""
    import torch

    from trainer.runtime.run import check_machine

    if torch.cuda.is_available():
        pytest.skip("the rule is for CPU-only machines")
    resolved = resolved_config(tmp_path, tiny_model, toy_data, distributed={"type": "fsdp", **block})
    with pytest.raises(ConfigErrors, match=refusal):
        check_machine(resolved)


@pytest.mark.parametrize(
    ("optimizer", "trainer_args", "own_optimizer"),
    [
        ("adamw_torch", {}, False),
        ("adamw_torch_fused", {"adam_epsilon": 1e-8}, False),
        ("adamw_torch", {"adam_beta2": 0.95}, True),
        ("adamw_torch", {"optim_args": "amsgrad=True"}, True),
        ("sgd", {}, True),
        ("adafactor", {}, True),
    ],
)
def test_offloading_never_swaps_the_optimizer_silently(
    tmp_path, tiny_model, toy_data, optimizer, trainer_args, own_optimizer
):
    """accelerate swaps DeepSpeed's CPU Adam (lr and weight decay only) in for any optimizer when
    offload_optimizer is on: only plain AdamW survives that; every other optimizer steps itself."""
    pytest.importorskip("deepspeed")
    block = {"type": "deepspeed", "stage": 2, "offload_optimizer": "cpu"}
    extra = {"trainer_args": trainer_args} if trainer_args else {}
    resolved = resolved_config(
        tmp_path, tiny_model, toy_data, distributed=block, optimizer=optimizer, **extra
    )
    generated = resolved.distributed.plugin.contribute(resolved.config).sft_args["deepspeed"]
    assert generated.get("zero_force_ds_cpu_optimizer", True) is not own_optimizer
    without = resolved_config(
        tmp_path, tiny_model, toy_data, distributed={**block, "offload_optimizer": "none"}
    )
    assert (
        "zero_force_ds_cpu_optimizer"
        not in without.distributed.plugin.contribute(without.config).sft_args["deepspeed"]
    )


def test_launch_keys_from_the_environment(tmp_path, tiny_model, toy_data):
    resolved = resolved_config(
        tmp_path, tiny_model, toy_data, ["distributed.node_rank=1"], distributed={"type": "ddp", "nnodes": 2}
    )
    plugin = resolved.distributed.plugin
    environ = {"NNODES": "4", "PET_NODE_RANK": "3", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29600"}
    notes = plugin.apply_environment(environ, given={"node_rank"})  # type: ignore[attr-defined]
    assert notes == ["nnodes=4 (from $NNODES)", "master_addr=10.0.0.7 (from $MASTER_ADDR)",
                     "master_port=29600 (from $MASTER_PORT)"]  # fmt: skip
    assert plugin.launcher_args() == [  # type: ignore[attr-defined]
        "--nproc_per_node=2", "--nnodes=4", "--node_rank=1", "--master_addr=10.0.0.7", "--master_port=29600",
    ]  # fmt: skip  # node_rank from the command line, the rest from the environment
    with pytest.raises(ConfigErrors, match=r"distributed\.nnodes: .*integer.*from the environment"):
        plugin.apply_environment({"NNODES": "two"}, given=set())  # type: ignore[attr-defined]
    with pytest.raises(ConfigErrors, match="node_rank: 5 must be below nnodes"):
        plugin.apply_environment({"NODE_RANK": "5"}, given=set())  # type: ignore[attr-defined]


def test_a_multi_process_backend_with_one_process_still_launches(tmp_path, tiny_model, toy_data):
    from trainer.runtime.run import wants_relaunch

    one = resolved_config(tmp_path, tiny_model, toy_data, distributed={"type": "ddp", "num_processes": 1})
    assert wants_relaunch(one)
    assert not wants_relaunch(resolved_config(tmp_path, tiny_model, toy_data, distributed="none"))


def test_failed_processes_are_named_the_killed_one_first_the_launchers_stop_last():
    """What the train command says when processes die: a process killed by a signal (the likely cause)
    first, error exits next (usually a peer that lost it), the launcher's own SIGTERM stops last."""
    from trainer.runtime.launcher import describe_failures

    failures = [
        {"rank": 0, "pid": 100, "exitcode": -15, "signal": "SIGTERM"},
        {"rank": 2, "pid": 102, "exitcode": 1, "signal": None},
        {"rank": 3, "pid": 103, "exitcode": -9, "signal": "SIGKILL"},
    ]
    assert describe_failures(failures, 4) == (
        "process 3 of 4 (pid 103) was killed by SIGKILL; "
        "process 2 of 4 (pid 102) exited with status 1 (its error is above); "
        "process 0 of 4 (pid 100) was stopped (SIGTERM)"
    )

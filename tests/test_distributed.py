"""Multi-process training on CPU (gloo), offline and real: the train command starting its own processes,
external launchers (torchrun, accelerate launch), and two torchrun "nodes" on 127.0.0.1.

Each run must save exactly once, and data parallelism must be equivalent to one process at the same
global batch: 2 processes x micro_batch_size 2 == 1 process x micro_batch_size 4, same rows, SGD.
Token weighting across processes: with transformers' `average_tokens_across_devices` (on by default)
every process divides its summed token loss by the token count gathered over *all* processes and
multiplies by the number of processes; DDP then averages the gradients over processes. The result is
sum(all token losses) / all tokens, the same as one process, however unevenly the tokens fall on the
two processes. (Without it, DDP would average two per-process means: the accumulation bug again.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_api, run_command, write_yaml

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]  # they use both cores: one at a time

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 240
STEPS = 4
FINAL_FILES = {
    "config.json",
    "config.resolved.yml",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
    "training_args.bin",
    "training_curves.png",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROCESS_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
"""What the started processes get: one torch thread each (2 processes on 2 cores)."""


def env() -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    return {**clean, **PROCESS_ENV}


def run(command: list[str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done


def train(*args: object, cwd: Path, status: int = 0) -> subprocess.CompletedProcess[str]:
    """`python -m trainer.cli.train ARGS` from `cwd`; its own part runs in this process (it only
    starts the others), the processes it starts (the launcher, then one per rank) are real ones."""
    done = run_command("train", *args, cwd=cwd, env=PROCESS_ENV)
    assert done.returncode == status, f"{args}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done


def varied_rows(path: Path, n: int = 8) -> Path:
    """Rows whose trained parts differ a lot in length, so token weighting matters."""
    import random

    rng = random.Random(0)
    lengths = [1, 36, 3, 20, 2, 28, 6, 12, 9, 30, 4, 16][:n]
    rows = []
    for length in lengths:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length))
        rows.append({"prompt": f"Reverse: {word[:4]}\n", "generation": word})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sgd_config(model: Path, data: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "prompt_completion", "completion_field": "generation"}],
        "sequence_len": 64,  # every row whole: none dropped as too long
        "micro_batch_size": 2,
        "max_steps": STEPS,
        "optimizer": "sgd",
        "learning_rate": 0.2,
        "lr_scheduler": "constant",
        "max_grad_norm": 0,
        "weight_decay": 0,
        "trainer_args": {"optim_args": "momentum=0.9"},  # optimizer state, which a resume must restore
        "save_strategy": "no",
        "logging_steps": 1,
        "output_dir": str(output_dir),
    }
    config.update(overrides)
    return config


def weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def assert_saved_once(out: Path, extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The final outputs, each once, nothing half-written or left over; returns trainer_state."""
    names = set(os.listdir(out))
    assert names == FINAL_FILES | extra, names ^ (FINAL_FILES | extra)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    losses = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in losses] == list(range(1, STEPS + 1))  # logged once, by one process
    return state


def assert_same_model(out: Path, reference: dict[str, Any], start: dict[str, Any]) -> None:
    got = weights(out)
    if "lm_head.weight" in got and "lm_head.weight" not in reference:
        # ZeRO-1/2 and FSDP2 also save the tied output layer: it must be the embedding itself.
        assert torch.equal(got.pop("lm_head.weight"), got["model.embed_tokens.weight"])
    assert got.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(got[name], reference[name], atol=2e-5, rtol=0), name
    # The models moved (so "close" is not trivially "unchanged"), and by the same update.
    moved = torch.sqrt(sum(((reference[k] - start[k]) ** 2).sum() for k in reference))
    diff = torch.sqrt(sum(((got[k] - reference[k]) ** 2).sum() for k in reference))
    assert moved > 1e-2 and diff / moved < 1e-4, (float(moved), float(diff))


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return varied_rows(tmp_path_factory.mktemp("rows") / "varied.jsonl")


@pytest.fixture(scope="module")
def start_weights(tiny_model: Path) -> dict[str, Any]:
    return weights(tiny_model)


def losses(state: dict[str, Any]) -> list[float]:
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def single_run(tiny_model: Path, rows: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, micro_batch_size 4: the same global batch as 2 processes x 2."""
    tmp = tmp_path_factory.mktemp("single")
    out = tmp / "out"
    run_api(tmp, sgd_config(tiny_model, rows, out, micro_batch_size=4))  # in-process: the same run
    assert_saved_once(out)
    return out


@pytest.fixture(scope="module")
def reference(single_run: Path) -> dict[str, Any]:
    return weights(single_run)


def test_external_torchrun(tiny_model, rows, reference, start_weights, tmp_path):
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path / "cfg.yml", sgd_config(tiny_model, rows, out, distributed="ddp"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = run([*command, "-m", "trainer.cli.train", str(cfg)], cwd=tmp_path)
    assert "launching:" not in done.stdout  # used the launcher's processes, started none itself
    assert "x processes 2" in done.stdout
    assert_saved_once(out)
    assert_same_model(out, reference, start_weights)


def test_accelerate_launch(tiny_model, rows, reference, start_weights, tmp_path):
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path / "cfg.yml", sgd_config(tiny_model, rows, out, distributed="none"))
    # `--cpu` with 2 processes needs MPI in accelerate; `--multi_gpu` launches 2 processes through
    # torchrun, and the run itself then goes to the CPU (gloo) because there is no accelerator.
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    done = run([*command, "-m", "trainer.cli.train", str(cfg)], cwd=tmp_path)
    assert "x processes 2" in done.stdout
    assert_saved_once(out)
    assert_same_model(out, reference, start_weights)


def test_two_nodes_on_localhost(tiny_model, rows, reference, start_weights, tmp_path):
    out = tmp_path / "out"
    distributed = {
        "type": "ddp",
        "num_processes": 1,
        "nnodes": 2,
        "node_rank": 0,
        "master_addr": "127.0.0.1",
        "master_port": free_port(),
    }
    cfg = write_yaml(tmp_path / "cfg.yml", sgd_config(tiny_model, rows, out, distributed=distributed))
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "trainer.cli.train", str(cfg), f"distributed.node_rank={rank}"],
            cwd=tmp_path,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=TIMEOUT)
            results.append((node.returncode, stdout, stderr))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for rank, (code, stdout, stderr) in enumerate(results):
        assert code == 0, f"node {rank}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    assert "--nnodes=2" in results[0][1] and "--node_rank=1" in results[1][1]
    assert "train loss: first logged" in results[0][1]  # global rank 0 lives on node 0
    assert "train loss: first logged" not in results[1][1]
    assert_saved_once(out)
    assert_same_model(out, reference, start_weights)


def test_ddp_with_sample_packing_matches_one_process(tiny_model, toy_data, start_weights, tmp_path):
    """Packed rows shard over processes like plain rows: 2 processes x 1 packed row per step ==
    1 process x 2 rows, same weights. 12 toy examples of 35-41 tokens make 6 rows of 100 (3 steps per
    epoch); equal lengths span rows, so the second epoch's re-deal changes which examples share a
    row, hence step 4's examples, and every process must re-deal as the single process does."""
    packed = {"sample_packing": True, "sequence_len": 100, "max_train_samples": 12}
    data = toy_data / "train.jsonl"
    single = tmp_path / "single"
    config = sgd_config(tiny_model, data, single / "out", micro_batch_size=2, **packed)
    built = run_api(single, config)
    assert built.train_dataset.summary().startswith("packing: 12 examples -> 6 rows")
    reference = weights(single / "out")
    double = tmp_path / "double"
    distributed = {"type": "ddp", "num_processes": 2}
    config = sgd_config(
        tiny_model, data, double / "out", micro_batch_size=1, distributed=distributed, **packed
    )
    train(write_yaml(double / "cfg.yml", config), cwd=double)
    assert_saved_once(double / "out")
    assert_same_model(double / "out", reference, start_weights)


BACKENDS = {
    "ddp": ({"type": "ddp"}, "DDP", "100%"),
    "fsdp1": ({"type": "fsdp", "version": 1}, "FSDP1 (full_shard)", "50%"),
    "fsdp2": ({"type": "fsdp", "version": 2}, "FSDP2 (full_shard)", "50%"),
    "zero2": ({"type": "deepspeed", "stage": 2}, "DeepSpeed ZeRO-2", "100%"),
    "zero3": ({"type": "deepspeed", "stage": 3}, "DeepSpeed ZeRO-3", "50%"),
}
"""Each backend's block, the name the run reports, and the share of the weights process 0 holds."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_one_process_saves_whole_and_resumes(
    tiny_model, rows, single_run, reference, start_weights, tmp_path, backend
):
    """2 processes x micro-batch 2 == 1 process x 4: the same per-step losses and final weights; the
    backend really runs (it reports what accelerate wrapped and how much of the weights process 0
    holds: sharded ones hold half); the final save is whole tensors that from_pretrained loads; and
    resuming from the step-2 checkpoint (re-run from the run's own config.resolved.yml, overwriting
    its output_dir) continues the same loss curve to the same weights."""
    block, name, held = BACKENDS[backend]
    if block["type"] == "deepspeed":
        pytest.importorskip("deepspeed", reason="needs the deepspeed extra: pip install 'trainer[deepspeed]'")
    out = tmp_path / "out"
    config = sgd_config(
        tiny_model, rows, out, distributed={**block, "num_processes": 2}, save_strategy="steps", save_steps=2
    )
    cfg = write_yaml(tmp_path / "cfg.yml", config)
    done = train(cfg, cwd=tmp_path)
    assert "trainer.runtime.launcher --nproc_per_node=2" in done.stdout  # it started them itself
    assert "data prepared once for every process" in done.stdout  # before the processes started
    assert done.stdout.count("reused the prepared dataset") == 1  # printed by the main process
    assert f"parallel: {name} on 2 process(es); process 0 holds {held} of the weights" in done.stdout
    assert "x processes 2" in done.stdout
    assert done.stdout.count("train loss: first logged") == 1  # reported by the main process only
    checkpoints = frozenset({"checkpoint-2", "checkpoint-4", "README.md"})
    ds_json = frozenset({"deepspeed_config.json"}) if block["type"] == "deepspeed" else frozenset()
    state = assert_saved_once(out, checkpoints | ds_json)
    assert state["train_batch_size"] == 2
    expected = losses(json.loads((single_run / "trainer_state.json").read_text()))
    assert losses(state) == pytest.approx(expected, rel=1e-5)
    assert_same_model(out, reference, start_weights)  # every tensor whole, and the same
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key, tensor in reference.items():
        assert torch.allclose(loaded[key], tensor, atol=2e-5, rtol=0), key
    if ds_json:
        filled = json.loads((out / "deepspeed_config.json").read_text())
        assert filled["train_micro_batch_size_per_gpu"] == 2 and filled["train_batch_size"] == 4
        assert filled["zero_optimization"]["stage"] == block["stage"]

    if backend == "ddp":  # the refusal comes before any launch, the same for every backend
        assert_rerun_refused(cfg, out, tmp_path)
    if backend == "fsdp1":  # its sharded checkpoints would resume without the optimizer state
        assert_resume_refused(out, tmp_path)
        return
    resume_and_compare(out, state, checkpoints | ds_json, tmp_path)
    if backend == "ddp":
        overwrite_from_resolved(out, reference, start_weights, checkpoints, tmp_path)


OPTIONS = {
    "ddp-knobs": (
        {"type": "ddp", "backend": "gloo", "find_unused_parameters": True, "bucket_cap_mb": 1},
        "DDP",
        "100%",
    ),
    "zero0": ({"type": "deepspeed", "stage": 0}, "DeepSpeed ZeRO-0", "100%"),
    "zero1": (
        {"type": "deepspeed", "stage": 1, "allgather_bucket_size": 100_000},
        "DeepSpeed ZeRO-1",
        "100%",
    ),
    "zero3-offload": (
        {"type": "deepspeed", "stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"},
        "DeepSpeed ZeRO-3",
        "50%",
    ),
    "fsdp2-options": (
        {
            "type": "fsdp",
            "version": 2,
            "sharding": "shard_grad_op",
            "activation_checkpointing": True,
            "wrap_layer": ["LlamaDecoderLayer"],
        },
        "FSDP2 (shard_grad_op)",
        "50%",
    ),
    "fsdp1-shard-grad-op": (
        {"type": "fsdp", "version": 1, "sharding": "shard_grad_op"},
        "FSDP1 (shard_grad_op)",
        "50%",
    ),
}
"""The other options each backend offers: its block, the name the run reports, process 0's share."""


@pytest.mark.parametrize("case", OPTIONS)
def test_backend_options_equal_one_process(
    tiny_model, rows, single_run, reference, start_weights, tmp_path, case
):
    """Each backend with its other options set (ZeRO stages 0 and 1, ZeRO-3 offloading weights and
    optimizer to the CPU, FSDP2 shard_grad_op with its own activation checkpointing and a named wrap
    layer, DDP's knobs): the options reach the run, which still equals one process. The offloaded
    optimizer is the configured SGD with momentum (accelerate would swap in DeepSpeed's CPU Adam,
    which would not match). On a machine without a GPU, FSDP's cpu_offload and FSDP1's full-state
    checkpoints are refused at start (test_distributed_rules)."""
    block, name, held = OPTIONS[case]
    if block["type"] == "deepspeed":
        pytest.importorskip("deepspeed", reason="needs the deepspeed extra: pip install 'trainer[deepspeed]'")
    out = tmp_path / "out"
    config = sgd_config(tiny_model, rows, out, distributed={**block, "num_processes": 2})
    done = train(write_yaml(tmp_path / "cfg.yml", config), cwd=tmp_path)
    assert f"parallel: {name} on 2 process(es); process 0 holds {held} of the weights" in done.stdout
    ds_json = frozenset({"deepspeed_config.json"}) if block["type"] == "deepspeed" else frozenset()
    state = assert_saved_once(out, ds_json)
    expected = losses(json.loads((single_run / "trainer_state.json").read_text()))
    assert losses(state) == pytest.approx(expected, rel=1e-5)
    assert_same_model(out, reference, start_weights)

    args = torch.load(out / "training_args.bin", weights_only=False)  # written by this run
    if block["type"] == "ddp":
        assert (args.ddp_backend, args.ddp_find_unused_parameters, args.ddp_bucket_cap_mb) == (
            "gloo",
            True,
            1,
        )
    elif block["type"] == "fsdp":
        fsdp = args.fsdp_config
        assert fsdp["reshard_after_forward"] in (False, "shard_grad_op")
        assert fsdp["activation_checkpointing"] is block.get("activation_checkpointing", False)
        assert fsdp.get("transformer_layer_cls_to_wrap") == block.get("wrap_layer")
    else:
        zero = json.loads((out / "deepspeed_config.json").read_text())["zero_optimization"]
        assert zero["stage"] == block["stage"]
        for key in ("offload_optimizer", "offload_param"):
            assert zero.get(key, {}).get("device") == block.get(key), key


def assert_rerun_refused(cfg: Path, out: Path, tmp_path: Path) -> None:
    """The same command again is refused before any process starts: exit 2, files untouched."""
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = train(cfg, cwd=tmp_path, status=2)
    assert "output_dir" in again.stderr, again.stderr[-2000:]
    assert "launching:" not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def assert_resume_refused(out: Path, tmp_path: Path) -> None:
    """FSDP1's sharded checkpoint is refused as a resume point (exit 2, nothing launched or changed)."""
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = train(out / "config.resolved.yml", "resume=auto", cwd=tmp_path, status=2)
    assert "resume without the optimizer state" in again.stderr and "launching:" not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def resume_and_compare(out: Path, state: dict[str, Any], files: frozenset[str], tmp_path: Path) -> None:
    """Pre-empted after step 2: resume in place from the run's own config.resolved.yml; steps 3 and
    4 and the final weights come out the same."""
    first_weights, first_losses = weights(out), losses(state)
    shutil.rmtree(out / "checkpoint-4")
    train(out / "config.resolved.yml", "resume=auto", cwd=tmp_path)
    resumed = assert_saved_once(out, files)
    assert losses(resumed)[2:] == pytest.approx(first_losses[2:], rel=1e-6)  # steps 3 and 4
    for key, tensor in weights(out).items():
        assert torch.allclose(tensor, first_weights[key], atol=1e-6, rtol=0), key


def overwrite_from_resolved(
    out: Path, reference: dict[str, Any], start: dict[str, Any], files: frozenset[str], tmp_path: Path
) -> None:
    """Overwriting from the resolved file inside output_dir: the processes it starts must still find
    that file (output_dir is cleared only after every process has read its config)."""
    train(out / "config.resolved.yml", "overwrite_output_dir=true", "resume=null", cwd=tmp_path)
    assert_saved_once(out, files)
    assert_same_model(out, reference, start)


def lora_config(
    model: Path, data: Path, out: Path, adapter: str = "lora", **overrides: Any
) -> dict[str, Any]:
    block = {"type": adapter, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    return sgd_config(model, data, out, adapter=block, learning_rate=0.05, **overrides)


def adapter_weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def single_adapters(tiny_model, rows, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """One process, micro-batch 4: the LoRA and QLoRA adapters the 2-process runs must equal."""
    found = {}
    for adapter in ("lora", "qlora"):
        if adapter == "qlora":
            pytest.importorskip("bitsandbytes")
        tmp = tmp_path_factory.mktemp(f"single-{adapter}")
        config = lora_config(tiny_model, rows, tmp / "out", adapter, micro_batch_size=4, max_steps=2)
        run_api(tmp, config)
        found[adapter] = adapter_weights(tmp / "out")
    return found


@pytest.mark.parametrize(("adapter", "backend"), [("lora", "fsdp2"), ("lora", "zero3"), ("qlora", "fsdp2")])
def test_adapter_under_sharding_saves_whole_tensors(
    tiny_model, rows, single_adapters, start_weights, tmp_path, adapter, backend
):
    """A LoRA adapter saved under FSDP or ZeRO-3 holds whole tensors (not one process's shard), equal
    to one process's; QLoRA under FSDP stores its 4-bit weights in the compute dtype, so they shard
    with the rest (process 0 holds about half of the weights). The ZeRO-3 run brings its own DeepSpeed
    JSON with "auto" values, which are filled from the config."""
    block, name, _ = BACKENDS[backend]
    if block["type"] == "deepspeed":
        pytest.importorskip("deepspeed")
        own = {
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        }
        (tmp_path / "ds.json").write_text(json.dumps(own))
        block = {"type": "deepspeed", "config_file": str(tmp_path / "ds.json")}
    out = tmp_path / "out"
    config = lora_config(
        tiny_model, rows, out, adapter, distributed={**block, "num_processes": 2}, max_steps=2
    )
    done = train(write_yaml(tmp_path / "cfg.yml", config), cwd=tmp_path)
    held = re.search(rf"parallel: {re.escape(name)} on 2 process\(es\); process 0 holds (\d+)%", done.stdout)
    assert held and 45 <= int(held.group(1)) <= 55, done.stdout[-3000:]
    got, expected = adapter_weights(out), single_adapters[adapter]
    assert {k: tuple(t.shape) for k, t in got.items()} == {k: tuple(t.shape) for k, t in expected.items()}
    moved = max(float(t.abs().max()) for k, t in expected.items() if "lora_B" in k)
    assert moved > 1e-3  # B starts at zero: the adapters trained
    if "config_file" in block:
        filled = json.loads((out / "deepspeed_config.json").read_text())
        assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"]) == (2, 1)
        assert filled["gradient_clipping"] == 0  # max_grad_norm: 0 in the config
    for key, tensor in expected.items():
        assert torch.allclose(got[key], tensor, atol=1e-5, rtol=0), key
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)  # loads back


KILL_STEPS = 24
KILL_RUN = {"max_steps": KILL_STEPS, "learning_rate": 0.05}
"""Long enough to kill it mid-run; a gentler rate than the 4-step runs, so that 24 steps of summing
in another order (2 processes) stay within float32 noise of one process."""


@pytest.fixture(scope="module")
def long_single(tiny_model: Path, rows: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, micro-batch 4, KILL_STEPS steps: what the interrupted 2-process runs resume to."""
    single = tmp_path_factory.mktemp("long-single")
    run_api(single, sgd_config(tiny_model, rows, single / "out", micro_batch_size=4, **KILL_RUN))
    return single / "out"


def test_killed_process_stops_the_run_names_it_and_resume_completes(
    tiny_model, rows, start_weights, long_single, tmp_path
):
    """One of 2 processes SIGKILLed mid-run (as the out-of-memory killer does): the train command
    exits non-zero within a minute naming that process, no process of the run is left (a gloo peer
    could otherwise wait forever in a collective), and `resume=auto` continues from the newest
    complete checkpoint to the same losses and weights as an uninterrupted run."""
    import signal
    import time

    import psutil

    expected = losses(json.loads((long_single / "trainer_state.json").read_text()))
    out = tmp_path / "out"
    distributed = {"type": "ddp", "num_processes": 2}
    config = sgd_config(
        tiny_model,
        rows,
        out,
        distributed=distributed,
        save_strategy="steps",
        save_steps=4,
        **KILL_RUN,
    )
    cfg = write_yaml(tmp_path / "cfg.yml", config)
    command = [sys.executable, "-m", "trainer.cli.train", str(cfg)]
    running = subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "checkpoint-4").is_dir():  # training is under way; kill in a later step
            assert running.poll() is None and time.monotonic() < deadline, running.communicate()
            time.sleep(0.02)
        family = psutil.Process(running.pid).children(recursive=True)
        victim = next(p for p in family if p.environ().get("RANK") == "1")
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        stdout, stderr = running.communicate(timeout=120)
        took = time.monotonic() - killed_at
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 1, (running.returncode, stdout[-2000:])  # "exits 1 naming it"
    assert took < 60, took
    assert f"process 1 of 2 (pid {victim.pid}) was killed by SIGKILL" in stderr, stderr[-3000:]
    assert "Resume with:" in stderr
    time.sleep(0.5)
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.cmdline()) for p in left]
    assert not (out / "model.safetensors").exists()  # the run did not finish

    resumed = train(out / "config.resolved.yml", "resume=auto", cwd=tmp_path)
    start = re.search(r"resuming from .*checkpoint-(\d+)", resumed.stdout)
    assert start, resumed.stdout[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == KILL_STEPS
    assert losses(state)[int(start.group(1)) :] == pytest.approx(expected[int(start.group(1)) :], rel=1e-5)
    assert_same_model(out, weights(long_single), start_weights)


def test_sigterm_stops_every_process_at_one_step_and_resume_completes(
    tiny_model, rows, start_weights, long_single, tmp_path
):
    """SIGTERM to the train command of a 2-process run (as a scheduler pre-empting a job sends it):
    passed on to every process, they agree on a step, save one checkpoint there (each process's RNG
    state in it) and stop; the command exits 143 naming that checkpoint and the resume command, no
    process is left, and `resume=auto` ends with the uninterrupted run's losses and weights."""
    import signal
    import time

    import psutil

    out = tmp_path / "out"
    distributed = {"type": "ddp", "num_processes": 2}
    config = sgd_config(
        tiny_model, rows, out, distributed=distributed, save_strategy="steps", save_steps=1000, **KILL_RUN
    )
    cfg = write_yaml(tmp_path / "cfg.yml", config)
    command = [sys.executable, "-m", "trainer.cli.train", str(cfg)]
    running = subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert running.stdout is not None
    family: list[psutil.Process] = []
    try:
        for line in running.stdout:  # the main process prints each step's log: training is under way
            if "'loss'" in line:
                family = psutil.Process(running.pid).children(recursive=True)
                running.send_signal(signal.SIGTERM)
                break
        stdout, stderr = running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 128 + signal.SIGTERM, (running.returncode, stderr[-3000:])
    assert "SIGTERM received: saving a checkpoint at the end of this step" in stdout, stdout[-3000:]
    found = re.search(r"stopped by SIGTERM: the newest checkpoint is (\S+)\.", stderr)
    assert found, stderr[-3000:]
    checkpoint = Path(found.group(1))
    stopped = int(checkpoint.name.removeprefix("checkpoint-"))
    assert 1 <= stopped < KILL_STEPS and checkpoint.parent == out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [checkpoint.name]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(checkpoint))  # both stopped there
    assert f"Resume with: python -m trainer.cli.train {out / 'config.resolved.yml'} resume=auto" in stderr
    assert not (out / "model.safetensors").exists()
    time.sleep(0.5)
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.cmdline()) for p in left]

    resumed = train(out / "config.resolved.yml", "resume=auto", cwd=tmp_path)
    assert f"resuming from {checkpoint}" in resumed.stdout, resumed.stdout[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    expected = losses(json.loads((long_single / "trainer_state.json").read_text()))
    assert losses(state)[stopped:] == pytest.approx(expected[stopped:], rel=1e-5)
    assert_same_model(out, weights(long_single), start_weights)

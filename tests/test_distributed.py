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
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import write_yaml

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

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
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}


def run(command: list[str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
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
        "save_strategy": "no",
        "logging_steps": 1,
        "output_dir": str(output_dir),
    }
    config.update(overrides)
    return config


def weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def assert_saved_once(out: Path) -> dict[str, Any]:
    """The final outputs, each once, nothing half-written or left over; returns trainer_state."""
    names = set(os.listdir(out))
    assert names == FINAL_FILES, names ^ FINAL_FILES
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    losses = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in losses] == list(range(1, STEPS + 1))  # logged once, by one process
    return state


def assert_same_model(out: Path, reference: dict[str, Any], start: dict[str, Any]) -> None:
    got = weights(out)
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


@pytest.fixture(scope="module")
def reference(tiny_model: Path, rows: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process, micro_batch_size 4: the same global batch as 2 processes x 2."""
    tmp = tmp_path_factory.mktemp("single")
    out = tmp / "out"
    cfg = write_yaml(tmp / "cfg.yml", sgd_config(tiny_model, rows, out, micro_batch_size=4))
    run([sys.executable, "-m", "trainer.cli.train", str(cfg)], cwd=tmp)
    assert_saved_once(out)
    return weights(out)


def test_ddp_starts_its_own_processes_and_matches_one_process(
    tiny_model, rows, reference, start_weights, tmp_path
):
    out = tmp_path / "out"
    distributed = {"type": "ddp", "num_processes": 2}
    cfg = write_yaml(tmp_path / "cfg.yml", sgd_config(tiny_model, rows, out, distributed=distributed))
    done = run([sys.executable, "-m", "trainer.cli.train", str(cfg)], cwd=tmp_path)
    assert "torch.distributed.run --nproc_per_node=2" in done.stdout
    assert "x processes 2" in done.stdout
    assert done.stdout.count("train loss: first logged") == 1  # reported by the main process only
    state = assert_saved_once(out)
    assert state["train_batch_size"] == 2
    assert_same_model(out, reference, start_weights)

    # The same command again is refused before any process starts: exit 2, files untouched.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = subprocess.run(
        [sys.executable, "-m", "trainer.cli.train", str(cfg)],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert again.returncode == 2 and "output_dir" in again.stderr, again.stderr[-2000:]
    assert "launching:" not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # Re-run from the resolved file inside output_dir, overwriting it: the processes it starts must
    # still find that file (the output_dir is cleared only after every process has read its config).
    resolved = out / "config.resolved.yml"
    done = run(
        [sys.executable, "-m", "trainer.cli.train", str(resolved), "overwrite_output_dir=true"], cwd=tmp_path
    )
    assert_saved_once(out)
    assert yaml.safe_load(resolved.read_text())["overwrite_output_dir"] is True
    assert_same_model(out, reference, start_weights)


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
    done = run(
        [sys.executable, "-m", "trainer.cli.train", str(write_yaml(single / "cfg.yml", config))], cwd=single
    )
    assert "packing: 12 examples -> 6 rows" in done.stdout
    reference = weights(single / "out")
    double = tmp_path / "double"
    distributed = {"type": "ddp", "num_processes": 2}
    config = sgd_config(
        tiny_model, data, double / "out", micro_batch_size=1, distributed=distributed, **packed
    )
    run([sys.executable, "-m", "trainer.cli.train", str(write_yaml(double / "cfg.yml", config))], cwd=double)
    assert_saved_once(double / "out")
    assert_same_model(double / "out", reference, start_weights)


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_full_shard_matches_one_process_and_saves_full_weights(
    tiny_model, rows, reference, start_weights, tmp_path, version
):
    """FSDP full_shard on 2 processes (gloo): the same update as one process at the same global
    batch, and the final save holds every tensor whole (not one rank's shard)."""
    out = tmp_path / "out"
    distributed = {"type": "fsdp", "num_processes": 2, "version": version}
    cfg = write_yaml(tmp_path / "cfg.yml", sgd_config(tiny_model, rows, out, distributed=distributed))
    done = run([sys.executable, "-m", "trainer.cli.train", str(cfg)], cwd=tmp_path)
    assert "x processes 2" in done.stdout
    assert_saved_once(out)
    saved = weights(out)
    assert {name: tuple(t.shape) for name, t in saved.items()} == {
        name: tuple(t.shape) for name, t in start_weights.items()
    }
    assert_same_model(out, reference, start_weights)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_one_process_and_saves_full_weights(
    tiny_model, rows, reference, start_weights, tmp_path, stage
):
    """DeepSpeed ZeRO on 2 processes (gloo): the same update as one process at the same global
    batch; under ZeRO-3 the model is created partitioned and the save gathers whole tensors."""
    pytest.importorskip("deepspeed", reason="needs the deepspeed extra: pip install 'trainer[deepspeed]'")
    out = tmp_path / "out"
    distributed = {"type": "deepspeed", "num_processes": 2, "stage": stage}
    cfg = write_yaml(tmp_path / "cfg.yml", sgd_config(tiny_model, rows, out, distributed=distributed))
    run([sys.executable, "-m", "trainer.cli.train", str(cfg)], cwd=tmp_path)
    assert_saved_once(out)
    saved = weights(out)
    saved.pop("lm_head.weight", None)  # ZeRO-1/2 saves the tied output layer too (same tensor)
    assert {name: tuple(t.shape) for name, t in saved.items()} == {
        name: tuple(t.shape) for name, t in start_weights.items()
    }
    for name in reference:
        assert torch.allclose(saved[name], reference[name], atol=2e-5, rtol=0), name

"""What the parts of bench/throughput.py share: the four runs, one run's settings (`Spec`) and
measured result (`Run`), the TRL side (a plain `SFTTrainer` script), our YAML config, the probe
plugin installed for our CLI and read back after a run, and the command that runs this benchmark's
child modes (`throughput.py --child-...`) in a fresh process.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import install_callback_plugin
from throughput_probe import PROBE_FILE, probe_callback

SCRIPT = Path(__file__).resolve().with_name("throughput.py")  # the entry point, which has the child modes
PROBE_SOURCE = Path(__file__).resolve().with_name("throughput_probe.py")
RUNS = {
    "a": ("trl", False, "TRL SFTTrainer, padding"),
    "b": ("trl", True, "TRL SFTTrainer, packing=True bfd"),
    "c": ("ours", False, "ours, no packing"),
    "d": ("ours", True, "ours, sample_packing"),
}

PLUGIN_MODULE = '''\
"""Entry point for bench/throughput.py's probe, which is defined in bench/throughput_probe.py."""

import importlib.util
import os
import sys

from trainer.api import Callback, Contribution

_spec = importlib.util.spec_from_file_location("throughput_probe", {probe!r})
_probe = sys.modules.setdefault("throughput_probe", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_probe)


class BenchProbe(Callback):
    name = "bench_probe"

    def contribute(self, config):
        path = os.path.join(config.output_dir, _probe.PROBE_FILE)
        return Contribution(callbacks=[_probe.probe_callback(path)])
'''


@dataclass
class Spec:
    """What one run trains with (both sides; `packed` picks TRL packing or ours' sample_packing)."""

    label: str
    side: str
    packed: bool
    model: str
    train_file: str
    output_dir: str
    seq_len: int
    micro_batch: int
    grad_accum: int
    attention: str
    lr: float
    seed: int
    optimizer: str
    scheduler: str
    logging_steps: int
    bf16: bool = False
    max_steps: int | None = None


def trl_trainer(spec: Spec, callbacks: list[Any]) -> Any:
    """The plain TRL script: model + tokenizer, the JSONL as a dataset, SFTConfig, SFTTrainer."""
    import dataclasses

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    model = AutoModelForCausalLM.from_pretrained(
        spec.model, dtype=torch.float32, attn_implementation=spec.attention
    )
    dataset = load_dataset("json", data_files=spec.train_file, split="train")
    packing = {"packing": True, "packing_strategy": "bfd"} if spec.packed else {}
    fields = {f.name for f in dataclasses.fields(SFTConfig)}  # transformers' new name, where it has one
    checkpointing = (
        "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    )
    config = SFTConfig(
        output_dir=spec.output_dir,
        per_device_train_batch_size=spec.micro_batch,
        gradient_accumulation_steps=spec.grad_accum,
        num_train_epochs=1,
        max_length=spec.seq_len,
        learning_rate=spec.lr,
        lr_scheduler_type=spec.scheduler,
        optim=spec.optimizer,
        seed=spec.seed,
        data_seed=spec.seed,  # ours sets data_seed = seed too
        bf16=False,  # TRL's default is bf16; fp32, like ours
        logging_steps=spec.logging_steps,
        logging_first_step=True,  # as ours
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        **packing,
        **{checkpointing: False},  # TRL's default is on; ours is off
    )
    return SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )


def trl_child(spec: Spec) -> dict[str, Any]:
    trainer = trl_trainer(spec, [probe_callback(os.path.join(spec.output_dir, PROBE_FILE))])
    trainer.train()
    trainer.save_model()  # ours saves the final model too (after the loop; not in train_runtime)
    return {"log_history": trainer.state.log_history}


def our_config(spec: Spec, probe: bool = True) -> str:
    lines = [
        f"base_model: {json.dumps(spec.model)}",
        "datasets:",
        f"  - path: {json.dumps(spec.train_file)}",
        "    type: prompt_completion",
        f"sequence_len: {spec.seq_len}",
        "shuffle: false  # file order, as TRL loads it: both samplers then draw the same rows",
        f"sample_packing: {str(spec.packed).lower()}",
        "adapter: full",
        f"attention: {spec.attention}",
        f"bf16: {str(spec.bf16).lower()}",
        f"micro_batch_size: {spec.micro_batch}",
        f"gradient_accumulation_steps: {spec.grad_accum}",
        "num_epochs: 1",
        *([f"max_steps: {spec.max_steps}"] if spec.max_steps else []),
        f"learning_rate: {spec.lr}",
        f"lr_scheduler: {spec.scheduler}",
        f"optimizer: {spec.optimizer}",
        f"seed: {spec.seed}",
        f"logging_steps: {spec.logging_steps}",
        'save_strategy: "no"',
        *(["callbacks: [bench_probe]"] if probe else []),
        f"output_dir: {json.dumps(spec.output_dir)}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    label: str
    repeat: int
    train_runtime: float  # the trainer's own training-loop time (wall)
    loop_cpu: float  # CPU seconds of the process during the loop (probe)
    wall: float  # end-to-end wall time of the process
    cpu: float  # end-to-end user + sys seconds of the process
    load: float  # 1-minute load average just before the run
    train_loss: float
    feed: dict[str, Any] = field(repr=False)

    @property
    def trainable_per_s(self) -> float:
        return self.feed["trainable"] / self.train_runtime

    @property
    def real_per_s(self) -> float:
        return self.feed["real"] / self.train_runtime

    @property
    def trainable_per_cpu_s(self) -> float:
        return self.feed["trainable"] / self.loop_cpu

    @property
    def efficiency(self) -> float:
        return self.feed["real"] / self.feed["processed"]


def install_probe(work: Path) -> Path:
    """Write the probe's plugin module and its entry-point metadata into a directory for PYTHONPATH."""
    module = PLUGIN_MODULE.format(probe=str(PROBE_SOURCE))
    entry_point = "bench_probe = bench_throughput_probe:BenchProbe"
    return install_callback_plugin(work, "bench_throughput_probe", module, "trainer-bench-probe", entry_point)


def read_probe(output_dir: str, name: str) -> dict[str, Any]:
    path = Path(output_dir) / PROBE_FILE
    if not path.is_file():
        sys.exit(f"{name}: the probe wrote no {path}")
    probe = json.loads(path.read_text(encoding="utf-8"))
    if probe["mask_disagrees"]:
        sys.exit(
            f"{name}: {probe['mask_disagrees']} batches whose attention mask disagrees with input_ids != pad"
        )
    return probe


def self_command(mode: str, *paths: Path) -> list[str]:
    """The command that runs throughput.py in child mode `mode` on the given files."""
    return [sys.executable, str(SCRIPT), mode, *map(str, paths)]

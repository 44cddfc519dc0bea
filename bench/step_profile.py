"""Where each training step's time goes: ours, plain TRL and a plain transformers `Trainer` (the loop
Axolotl runs: `model(**batch).loss`, no extra metrics) on the same batches, phase by phase.

All train the same tiny Llama (scripts/make_tiny_model.py) from the same tokenized rows
(long-tailed prompt/completion, as bench/throughput.py writes them) in file order (a sequential
sampler, so every trainer sees the same examples in the same batches), batched by our collator:
padding-free for ours (its default), padded rows for the peers (as they batch) and for
"ours-padded" (`padding_free: false`, the same batches as the peers through our loop), the first `--steps`
optimizer steps, fp32, sdpa, AdamW, one torch thread, no dataloader workers,
logging every 10 steps, in one process, alternating the trainers `--rounds` times. Phases are timed by
wrapping the trainer's own methods on the instance (the product is not changed):

* data:      `get_batch_samples` (fetching and collating the step's micro-batches)
* forward:   `compute_loss` (forward, loss, and whatever metrics the trainer computes per step)
* backward:  `accelerator.backward`
* optimizer: the optimizer's `step` and `zero_grad`
* other:     the rest of `train_runtime` (callbacks, logging, scheduler, syncs)

    python bench/step_profile.py [--steps 60] [--rounds 3] [--rows 1200] [--seq-len 512] [--packed]
                                 [--profile] [--json out.json]

`--packed` profiles our packed run alone (TRL packs its own way and takes no packed view of our rows;
bench/throughput.py compares the packed loops end to end). `--profile` also runs torch.profiler on one
of our runs and prints its top operators.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchlib import SCRIPTS
from throughput_data import write_rows

PHASES = ("data", "forward", "backward", "optimizer", "other")


class PhaseTimer:
    """Seconds spent in each wrapped method of one trainer (summed over the run)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        setattr(owner, name, timed)


def instrument(trainer: Any) -> PhaseTimer:
    timer = PhaseTimer()
    timer.wrap(trainer, "get_batch_samples", "data")
    timer.wrap(trainer, "compute_loss", "forward")
    timer.wrap(trainer.accelerator, "backward", "backward")
    create = trainer.create_optimizer

    def create_and_wrap(*args: Any, **kwargs: Any) -> Any:
        optimizer = create(*args, **kwargs)
        timer.wrap(optimizer, "step", "optimizer")
        timer.wrap(optimizer, "zero_grad", "optimizer")
        return optimizer

    trainer.create_optimizer = create_and_wrap
    return timer


def our_trainer(config_path: Path) -> Any:
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import build_trainer

    return build_trainer(load_config(str(config_path))).trainer


def peer_trainer(kind: str, ours: Any, out: Path, steps: int) -> Any:
    """A plain TRL SFTTrainer or transformers Trainer on our tokenized rows and collator."""
    import trl
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(
        ours.model.name_or_path, dtype="float32", attn_implementation="sdpa"
    )
    settings = {
        "output_dir": str(out),
        "per_device_train_batch_size": ours.args.per_device_train_batch_size,
        "gradient_accumulation_steps": ours.args.gradient_accumulation_steps,
        "max_steps": steps,
        "learning_rate": ours.args.learning_rate,
        "lr_scheduler_type": ours.args.lr_scheduler_type,
        "seed": ours.args.seed,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": [],
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "bf16": False,
        "train_sampling_strategy": "sequential",
        "gradient_checkpointing": False,  # TRL 1.x SFTConfig turns it on by default; ours and Axolotl do not
    }
    collator = dataclasses.replace(ours.data_collator, padding_free=False)  # padded rows, as peers batch

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(collator(rows))
        batch.pop("num_real_tokens", None)
        return batch

    dataset = ours.train_dataset
    if kind == "trl":
        args = trl.SFTConfig(**settings, max_length=ours.args.max_length, dataset_text_field="text")
        return trl.SFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    args = TrainingArguments(**settings, remove_unused_columns=False)
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)


def config_text(
    model: Path, rows: Path, out: Path, seq_len: int, steps: int, packed: bool, padding_free: bool = True
) -> str:
    return "\n".join(
        [
            f"base_model: {model}",
            "datasets:",
            f"  - path: {rows}",
            "    type: prompt_completion",
            f"sequence_len: {seq_len}",
            "shuffle: false",
            f"sample_packing: {str(packed).lower()}",
            f"padding_free: {str(padding_free).lower()}",
            "attention: sdpa",
            "micro_batch_size: 8",
            "gradient_accumulation_steps: 1",
            f"max_steps: {steps}",
            "learning_rate: 1.0e-3",
            "logging_steps: 10",
            'save_strategy: "no"',
            f"output_dir: {out}",
            "overwrite_output_dir: true",
            "trainer_args: {train_sampling_strategy: sequential}  # the same batches for every trainer",
        ]
    )


def run_one(kind: str, work: Path, steps: int) -> dict[str, Any]:
    ours = our_trainer(work / ("padded.yml" if kind == "ours-padded" else "cfg.yml"))
    peer = kind in ("trl", "transformers")
    trainer = peer_trainer(kind, ours, work / f"out-{kind}", steps) if peer else ours
    timer = instrument(trainer)
    result = trainer.train()
    total = float(result.metrics["train_runtime"])
    timer.seconds["other"] = total - sum(v for k, v in timer.seconds.items() if k != "other")
    return {"kind": kind, "runtime": total, "phases": timer.seconds, "loss": float(result.training_loss)}


def profile_ours(config_path: Path) -> str:
    import torch

    trainer = our_trainer(config_path)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="step-profile-") as tmp:
        work = Path(tmp)
        model = work / "model"
        subprocess.run([sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--out", str(model)], check=True)
        rows = work / "rows.jsonl"
        write_rows(rows, args.rows, args.seq_len, median=60, sigma=0.9, seed=0)
        config_path = work / "cfg.yml"
        config_path.write_text(config_text(model, rows, work / "out", args.seq_len, args.steps, args.packed))
        padded = config_text(model, rows, work / "out", args.seq_len, args.steps, False, padding_free=False)
        (work / "padded.yml").write_text(padded)
        # TRL packs its own way (bfd, padding-free) and takes no packed view of our rows: packed is ours only
        kinds = ("ours",) if args.packed else ("ours", "ours-padded", "trl", "transformers")
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for round_ in range(args.rounds):
            for kind in kinds:
                results[kind].append(run_one(kind, work, args.steps))
                print(f"round {round_ + 1} {kind}: {results[kind][-1]['runtime']:.2f} s", flush=True)
        print(
            f"\nmedian seconds over {args.rounds} rounds, {args.steps} steps, load {os.getloadavg()[0]:.2f}"
        )
        print(f"{'phase':<10}" + "".join(f"{k:>14}" for k in kinds))
        for phase in (*PHASES, "total"):
            cells = []
            for kind in kinds:
                values = [r["runtime"] if phase == "total" else r["phases"][phase] for r in results[kind]]
                cells.append(f"{statistics.median(values):>14.3f}")
            print(f"{phase:<10}" + "".join(cells))
        if args.profile:
            print(profile_ours(config_path))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

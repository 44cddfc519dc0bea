"""The CPU benchmark of bench/throughput.py: ours against TRL's `SFTTrainer`, each with and without
packing (runs a b c d), on the tiny model. Every run is a fresh process; rounds alternate a b c d /
d c b a; the script stops unless every run trained the same examples and trainable tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchlib import child_env, run_child
from throughput_common import RUNS, Run, Spec, install_probe, our_config, read_probe, self_command
from throughput_data import build_model, write_rows
from throughput_isolation import check_isolation
from throughput_report import print_report, summarize


def run_record(r: Run) -> dict[str, Any]:
    """A run for the JSON record: its fields and the rates derived from them."""
    derived = ("trainable_per_s", "real_per_s", "trainable_per_cpu_s", "efficiency")
    return {**asdict(r), **{key: getattr(r, key) for key in derived}}


def train_once(
    spec: Spec, work: Path, site: Path, name: str, threads: int
) -> tuple[float, float, float, dict]:
    """One training run in a fresh process: (wall, CPU, load before, log history)."""
    env = child_env(threads, work / "hf-datasets" / name, site)
    load = os.getloadavg()[0]
    if spec.side == "ours":
        config = work / f"{name}.yml"
        config.write_text(our_config(spec), encoding="utf-8")
        _, wall, cpu = run_child(
            [sys.executable, "-m", "trainer.cli.train", str(config)], env, work / f"{name}.log"
        )
        state = Path(spec.output_dir) / "trainer_state.json"
        history = json.loads(state.read_text(encoding="utf-8"))["log_history"]
    else:
        spec_file, result = work / f"{name}.spec.json", work / f"{name}.result.json"
        spec_file.write_text(json.dumps(asdict(spec)), encoding="utf-8")
        _, wall, cpu = run_child(self_command("--child-trl", spec_file, result), env, work / f"{name}.log")
        history = json.loads(result.read_text(encoding="utf-8"))["log_history"]
    return wall, cpu, load, history


def run_once(spec: Spec, work: Path, site: Path, repeat: int, threads: int) -> Run:
    """Train one run from an empty output directory and read back its log history and probe."""
    name = f"{spec.label}-{repeat}"
    shutil.rmtree(spec.output_dir, ignore_errors=True)
    wall, cpu, load, history = train_once(spec, work, site, name, threads)
    final = [h for h in history if "train_runtime" in h]
    if not final:
        sys.exit(f"{name}: no train_runtime in the trainer's log history")
    probe = read_probe(spec.output_dir, name)
    shutil.rmtree(spec.output_dir, ignore_errors=True)
    runtime, loss = float(final[-1]["train_runtime"]), float(final[-1]["train_loss"])
    feed = {k: v for k, v in probe.items() if k not in ("per_batch", "steps")}
    return Run(spec.label, repeat, runtime, probe["loop_cpu"], wall, cpu, load, loss, feed)


def check_same_data(runs: list[Run], tolerance: int) -> list[str]:
    """Stop unless every run trained the same trainable tokens (within `tolerance`) and examples."""
    notes = []
    first = runs[0]
    for run in runs[1:]:
        a, b = first.feed, run.feed
        gap = abs(a["trainable"] - b["trainable"])
        if gap > tolerance or a["examples"] != b["examples"]:
            sys.exit(
                f"({first.label}) and ({run.label}) trained on different data: {a['examples']} vs "
                f"{b['examples']} examples, {a['trainable']} vs {b['trainable']} trainable tokens. With "
                "rows no longer than sequence_len nothing should be truncated or dropped; a gap means "
                "one side tokenizes or filters differently, and the comparison would not be like for like."
            )
        if a["example_set"] != b["example_set"]:
            notes.append(
                f"({run.label}) trained examples whose tokens or labels differ from ({first.label})'s"
            )
    return notes


def run_specs(args: argparse.Namespace, model: Path, train_file: Path, work: Path, mean_len: float) -> dict:
    """The settings of runs a b c d; packed runs accumulate about a padded step's real tokens."""
    packed_accum = args.packed_grad_accum or max(
        1, round(args.micro_batch * args.grad_accum * mean_len / args.seq_len)
    )
    specs = {}
    for label, (side, packed, _) in RUNS.items():
        specs[label] = Spec(
            label=label, side=side, packed=packed, model=str(model), train_file=str(train_file),
            output_dir=str(work / "runs" / label), seq_len=args.seq_len,
            micro_batch=1 if packed else args.micro_batch,
            grad_accum=packed_accum if packed else args.grad_accum, attention=args.attention, lr=args.lr,
            seed=args.seed, optimizer=args.optimizer, scheduler=args.scheduler,
            logging_steps=args.logging_steps,
        )  # fmt: skip
    return specs


def cpu_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Model, rows, isolation check, the rounds of the four runs, the report; the JSON record."""
    model_info = build_model(work, "tiny-llama", None, args.seq_len, "float32")
    train_file = work / "train.jsonl"
    data = write_rows(train_file, args.examples, args.seq_len, args.median_len, args.sigma, args.seed)
    site = install_probe(work)
    specs = run_specs(args, work / "tiny-llama", train_file, work, data["mean"])
    for label, spec in specs.items():
        unit = "packed row(s)" if spec.packed else "examples"
        print(
            f"({label}) {RUNS[label][2]}: micro-batch {spec.micro_batch} {unit} "
            f"x accumulation {spec.grad_accum}"
        )
    print("isolation check of the packed runs (b, d) ...", flush=True)
    isolation = check_isolation(specs, work, site, args)
    runs: list[Run] = []
    for index in range(args.warmup + args.repeats):
        order = list(RUNS) if index % 2 == 0 else list(reversed(RUNS))
        measured = index >= args.warmup
        done = [run_once(specs[label], work, site, index, args.threads) for label in order]
        done.sort(key=lambda r: r.label)
        head = f"round {index - args.warmup + 1}/{args.repeats}" if measured else f"warmup {index + 1}"
        cells = ", ".join(f"({r.label}) {r.trainable_per_s:,.0f}" for r in done)
        print(f"{head} ({' '.join(order)}): trainable tokens/s {cells}", flush=True)
        if measured:
            for r in done:
                r.repeat = index - args.warmup
            runs.extend(done)
    notes = check_same_data(runs, args.token_tolerance)
    by = {label: next(r for r in runs if r.label == label) for label in RUNS}
    same = by["a"].feed["example_order"] == by["c"].feed["example_order"]
    notes.append(f"(c) fed its examples in the same order and batches as (a): {'yes' if same else 'no'}")
    summary = summarize(runs, isolation)
    print_report(runs, summary, specs, isolation, data, model_info, args, notes)
    return {
        "data": data,
        "model": model_info,
        "specs": {k: asdict(s) for k, s in specs.items()},
        "isolation": isolation,
        "runs": [run_record(r) for r in runs],
        "summary": summary,
        "notes": notes,
    }

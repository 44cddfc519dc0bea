"""Overhead of `python -m trainer.cli.train` against a plain, hand-written TRL `SFTTrainer` script.

Both sides fine-tune the same tiny Llama (built by `scripts/make_tiny_model.py`) on the same toy
task (`scripts/make_toy_data.py`) with the same settings: full fine-tuning, sdpa attention, fp32,
micro batch, gradient accumulation, max_steps, sequence length, learning rate and schedule,
optimizer, seed, logging steps; no eval, no checkpoints (each side saves the final model once,
after training, which only counts in the end-to-end time).

Each run is a fresh subprocess with its own empty `datasets` cache, so neither side reuses the
other's (or its own earlier) work. Runs alternate ours, TRL, ours, TRL, ...

Throughput is tokens/s of the training loop: the real (non-pad) tokens the trainer fed the model
(`num_tokens` in TRL's logs, the sum of the batches' attention masks) divided by the trainer's own
`train_runtime` (which starts after model loading and data preparation). Both sides must train on
the same tokens (same tokenization, same sampler order); the script stops if the counts differ.

On a shared machine wall-clock time swings with whatever else runs, so the loop's CPU time is
measured too (tokens per CPU-second; with one torch thread it counts the work done, not the time
spent waiting for a core). A small callback records it on both sides: for ours it is installed as
a `trainer.callbacks` plugin through entry-point metadata in the work directory (the way any
third-party plugin is), for the plain script it is passed in `callbacks=[...]`.

    python bench/overhead.py [--repeats 5] [--steps 100] [--micro-batch 8] [--grad-accum 2]
                             [--seq-len 128] [--threads 1] [--json result.json]

Without `--work-dir` everything goes into a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import (
    REPO,
    SCRIPTS,
    child_env,
    install_callback_plugin,
    run_child,
    versions,
    work_dir,
    write_json,
)

TARGET = 0.95
CLOCK_FILE = "bench_clock.json"

CLOCK_MODULE = f'''\
"""Loop clock for bench/overhead.py: wall and CPU seconds from on_train_begin to on_train_end."""

import json
import os
import time

from trainer.api import Callback, Contribution


def clock_callback(path):
    from transformers import TrainerCallback

    class LoopClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = (time.perf_counter(), time.process_time())

        def on_train_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({{"wall": wall, "cpu": cpu}}, handle)

    return LoopClock()


class BenchClock(Callback):
    name = "bench_clock"

    def contribute(self, config):
        return Contribution(callbacks=[clock_callback(os.path.join(config.output_dir, "{CLOCK_FILE}"))])
'''


@dataclass
class Settings:
    """What both sides train with."""

    model: str
    train_file: str
    output_dir: str
    steps: int
    micro_batch: int
    grad_accum: int
    seq_len: int
    lr: float
    seed: int
    logging_steps: int
    optimizer: str
    scheduler: str


@dataclass
class Run:
    side: str  # "ours" or "trl"
    repeat: int
    tokens: int  # non-pad tokens trained on
    train_runtime: float  # the trainer's own train loop time (wall)
    loop_cpu: float  # CPU seconds of the process during the train loop
    wall: float  # end-to-end wall time of the process
    cpu: float  # end-to-end user + sys seconds of the process
    load: float  # 1-minute load average just before the run
    train_loss: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_runtime

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.loop_cpu


# --------------------------------------------------------------------------------------------------
# The plain TRL side: what a user would write by hand. Runs in its own process (`--plain-trl`).


def plain_trl(settings: Settings) -> dict:
    """Load model + tokenizer, map `generation` -> `completion`, SFTConfig + SFTTrainer, train."""
    import torch
    from bench_clock import clock_callback  # the loop clock; ours gets the same one as a plugin
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    model = AutoModelForCausalLM.from_pretrained(
        settings.model, dtype=torch.float32, attn_implementation="sdpa"
    )
    dataset = load_dataset("json", data_files=settings.train_file, split="train")
    dataset = dataset.rename_column("generation", "completion")
    config = SFTConfig(
        output_dir=settings.output_dir,
        per_device_train_batch_size=settings.micro_batch,
        gradient_accumulation_steps=settings.grad_accum,
        max_steps=settings.steps,
        max_length=settings.seq_len,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.scheduler,
        optim=settings.optimizer,
        seed=settings.seed,
        bf16=False,  # TRL's default is bf16 (and not possible on this CPU): fp32, like ours
        gradient_checkpointing=False,  # TRL's default is True; ours is False
        logging_steps=settings.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock_callback(os.path.join(settings.output_dir, CLOCK_FILE))],
    )
    trainer.train()
    trainer.save_model()  # ours saves the final model too
    return {"log_history": trainer.state.log_history, "total_train_tokens": trainer._total_train_tokens}


# --------------------------------------------------------------------------------------------------
# Driver


def our_config(settings: Settings) -> str:
    return f"""\
base_model: {json.dumps(settings.model)}
datasets:
  - path: {json.dumps(settings.train_file)}
    type: prompt_completion
    prompt_field: prompt
    completion_field: generation
sequence_len: {settings.seq_len}
shuffle: false  # file order, as the plain script loads it; both samplers then draw the same rows
adapter: full
attention: sdpa
micro_batch_size: {settings.micro_batch}
gradient_accumulation_steps: {settings.grad_accum}
max_steps: {settings.steps}
learning_rate: {settings.lr}
lr_scheduler: {settings.scheduler}
optimizer: {settings.optimizer}
seed: {settings.seed}
logging_steps: {settings.logging_steps}
save_strategy: "no"
callbacks: [bench_clock]
output_dir: {json.dumps(settings.output_dir)}
"""


def install_clock(work: Path) -> Path:
    """Write the loop-clock module and its entry-point metadata into a directory for PYTHONPATH."""
    entry_point = "bench_clock = bench_clock:BenchClock"
    return install_callback_plugin(work, "bench_clock", CLOCK_MODULE, "trainer-bench-clock", entry_point)


def read_metrics(log_history: list[dict], steps: int, where: str) -> tuple[int, float, float]:
    """(tokens trained on, train_runtime, train_loss) from a trainer's log history."""
    logged = [h for h in log_history if "num_tokens" in h]
    final = [h for h in log_history if "train_runtime" in h]
    if not logged or not final:
        sys.exit(f"{where}: no num_tokens / train_runtime in the trainer's log history")
    last = max(logged, key=lambda h: h["step"])
    if last["step"] != steps:
        sys.exit(
            f"{where}: last num_tokens logged at step {last['step']}, not {steps} "
            "(steps must be a multiple of --logging-steps)"
        )
    return int(last["num_tokens"]), float(final[-1]["train_runtime"]), float(final[-1]["train_loss"])


def read_clock(output_dir: str, where: str) -> float:
    path = Path(output_dir) / CLOCK_FILE
    if not path.is_file():
        sys.exit(f"{where}: the loop clock wrote no {path}")
    return float(json.loads(path.read_text(encoding="utf-8"))["cpu"])


def run_ours(settings: Settings, work: Path, site: Path, repeat: str, threads: int) -> Run:
    name = f"ours-{repeat}"
    cfg = work / f"{name}.yml"
    cfg.write_text(our_config(settings), encoding="utf-8")
    env = child_env(threads, work / "hf-datasets" / name, site)
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "trainer.cli.train", str(cfg)]
    _, wall, cpu = run_child(command, env, work / f"{name}.log")
    state = json.loads((Path(settings.output_dir) / "trainer_state.json").read_text(encoding="utf-8"))
    tokens, runtime, loss = read_metrics(state["log_history"], settings.steps, name)
    loop_cpu = read_clock(settings.output_dir, name)
    return Run("ours", int(repeat), tokens, runtime, loop_cpu, wall, cpu, load, loss)


def run_trl(settings: Settings, work: Path, site: Path, repeat: str, threads: int) -> Run:
    name = f"trl-{repeat}"
    spec, result = work / f"{name}.json", work / f"{name}.result.json"
    spec.write_text(json.dumps(asdict(settings)), encoding="utf-8")
    env = child_env(threads, work / "hf-datasets" / name, site)
    load = os.getloadavg()[0]
    command = [sys.executable, str(Path(__file__).resolve()), "--plain-trl", str(spec), str(result)]
    _, wall, cpu = run_child(command, env, work / f"{name}.log")
    out = json.loads(result.read_text(encoding="utf-8"))
    tokens, runtime, loss = read_metrics(out["log_history"], settings.steps, name)
    if tokens != out["total_train_tokens"]:
        sys.exit(f"{name}: logged num_tokens {tokens} != trainer total {out['total_train_tokens']}")
    loop_cpu = read_clock(settings.output_dir, name)
    return Run("trl", int(repeat), tokens, runtime, loop_cpu, wall, cpu, load, loss)


def build_inputs(work: Path) -> tuple[Path, Path]:
    """The tiny model and the toy data, built by the repo's own scripts (deterministic)."""
    model, data = work / "tiny-llama", work / "toy"
    for script, out in (("make_tiny_model.py", model), ("make_toy_data.py", data)):
        command = [sys.executable, str(SCRIPTS / script), "--out", str(out)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{script} failed:\n{done.stdout}{done.stderr}")
    return model, data / "train.jsonl"


METRICS = (
    "tokens",
    "train_runtime",
    "tokens_per_s",
    "loop_cpu",
    "tokens_per_cpu_s",
    "wall",
    "cpu",
    "train_loss",
)


def summarize(runs: list[Run]) -> dict:
    sides = {side: [r for r in runs if r.side == side] for side in ("ours", "trl")}
    median = {
        side: {key: statistics.median(getattr(r, key) for r in rs) for key in METRICS}
        for side, rs in sides.items()
    }
    pairs = list(zip(sides["ours"], sides["trl"], strict=True))
    pair_wall = [o.tokens_per_s / t.tokens_per_s for o, t in pairs]
    pair_cpu = [o.tokens_per_cpu_s / t.tokens_per_cpu_s for o, t in pairs]
    return {
        "median": median,
        "range": {
            side: {
                k: [min(getattr(r, k) for r in rs), max(getattr(r, k) for r in rs)]
                for k in ("tokens_per_s", "tokens_per_cpu_s")
            }
            for side, rs in sides.items()
        },
        "ratio": median["ours"]["tokens_per_s"] / median["trl"]["tokens_per_s"],
        "pair_ratios": pair_wall,
        "pair_ratio_median": statistics.median(pair_wall),
        "cpu_ratio": median["ours"]["tokens_per_cpu_s"] / median["trl"]["tokens_per_cpu_s"],
        "cpu_pair_ratios": pair_cpu,
        "cpu_pair_ratio_median": statistics.median(pair_cpu),
        "wall_ratio": median["ours"]["wall"] / median["trl"]["wall"],
    }


def print_report(runs: list[Run], summary: dict, args: argparse.Namespace, info: dict) -> None:
    print()
    head = f"{'run':<8} {'tokens':>7} {'loop s':>7} {'tok/s':>7} {'loop cpu':>8} {'tok/cpu-s':>9}"
    print(f"{head} {'wall s':>7} {'cpu s':>6} {'load':>5} {'loss':>7}")
    for r in runs:
        print(
            f"{r.side}-{r.repeat:<3} {r.tokens:>7} {r.train_runtime:>7.2f} {r.tokens_per_s:>7.0f} "
            f"{r.loop_cpu:>8.2f} {r.tokens_per_cpu_s:>9.0f} {r.wall:>7.1f} {r.cpu:>6.1f} {r.load:>5.2f} "
            f"{r.train_loss:>7.4f}"
        )
    med = summary["median"]
    print()
    title = f"median of {args.repeats} runs per side"
    print(f"{title:<40} | {'trainer (ours)':>14} | {'plain TRL':>10} | ours/TRL")
    print(f"{'-' * 40}-+-{'-' * 14}-+-{'-' * 10}-+---------")
    rows = [
        ("tokens trained on (non-pad)", "tokens", "{:.0f}"),
        ("train loop time, s (train_runtime)", "train_runtime", "{:.2f}"),
        ("train loop tokens/s", "tokens_per_s", "{:.0f}"),
        ("train loop CPU time, s", "loop_cpu", "{:.2f}"),
        ("train loop tokens per CPU-second", "tokens_per_cpu_s", "{:.0f}"),
        ("end-to-end wall time, s", "wall", "{:.1f}"),
        ("end-to-end CPU time, s", "cpu", "{:.1f}"),
        ("train loss", "train_loss", "{:.4f}"),
    ]
    for label, key, fmt in rows:
        ours, trl = med["ours"][key], med["trl"][key]
        print(f"{label:<40} | {fmt.format(ours):>14} | {fmt.format(trl):>10} | {ours / trl:.3f}")
    for label, key in (("tokens/s range", "tokens_per_s"), ("tokens/CPU-s range", "tokens_per_cpu_s")):
        lo_hi = {s: "{:.0f}..{:.0f}".format(*summary["range"][s][key]) for s in ("ours", "trl")}
        print(f"{label:<40} | {lo_hi['ours']:>14} | {lo_hi['trl']:>10} |")
    print()
    verdict = "meets" if summary["ratio"] >= TARGET else "BELOW"
    print(f"throughput ratio ours/TRL, median tokens/s: {summary['ratio']:.3f}  ({verdict} target {TARGET})")
    print(
        "  per pair: "
        + ", ".join(f"{p:.3f}" for p in summary["pair_ratios"])
        + f"  (median {summary['pair_ratio_median']:.3f})"
    )
    print(f"CPU-time ratio ours/TRL, median tokens/CPU-s: {summary['cpu_ratio']:.3f}")
    print(
        "  per pair: "
        + ", ".join(f"{p:.3f}" for p in summary["cpu_pair_ratios"])
        + f"  (median {summary['cpu_pair_ratio_median']:.3f})"
    )
    print(f"end-to-end wall time ratio ours/TRL: {summary['wall_ratio']:.3f}  (>1: ours slower)")
    print(
        f"settings: steps {args.steps}, micro batch {args.micro_batch}, grad accum {args.grad_accum}, "
        f"seq len {args.seq_len}, threads {args.threads}, lr {args.lr} {args.scheduler}, {args.optimizer}, "
        f"logging steps {args.logging_steps}, seed {args.seed}, fp32, sdpa, full fine-tuning"
    )
    print(
        f"machine: {info['cpus']} CPUs ({info['machine']}); "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    loads = [r.load for r in runs]
    print(f"1-min load average before each run: {min(loads):.2f}..{max(loads):.2f} on {info['cpus']} CPUs")
    if max(loads) > args.threads + 0.5:
        print(
            "  other processes were competing for the CPU: single runs are noisy; read the medians, the "
            "per-pair medians and the CPU-time ratio (see bench/README.md)"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per side (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured pairs run first (default 1)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default 100)")
    parser.add_argument("--micro-batch", type=int, default=8, help="default 8")
    parser.add_argument("--grad-accum", type=int, default=2, help="default 2")
    parser.add_argument("--seq-len", type=int, default=128, help="max tokens per example (default 128)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run, via OMP/MKL_NUM_THREADS (default 1)"
    )
    parser.add_argument("--logging-steps", type=int, default=10, help="default 10")
    parser.add_argument("--lr", type=float, default=1e-3, help="default 1e-3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", default="adamw_torch", help="default adamw_torch (trainer's default)")
    parser.add_argument("--scheduler", default="cosine", help="default cosine (trainer's default)")
    parser.add_argument("--work-dir", type=Path, help="keep models, data, configs and logs here")
    parser.add_argument("--json", type=Path, help="also write every run and the summary as JSON")
    parser.add_argument("--plain-trl", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.plain_trl:
        if min(args.repeats, args.steps, args.logging_steps, args.threads) < 1 or args.warmup < 0:
            parser.error("--repeats, --steps, --logging-steps and --threads must be >= 1, --warmup >= 0")
        if args.steps % args.logging_steps:
            parser.error(
                "--steps must be a multiple of --logging-steps (the last log carries the token count)"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_trl:
        spec, result = args.plain_trl
        out = plain_trl(Settings(**json.loads(Path(spec).read_text(encoding="utf-8"))))
        Path(result).write_text(json.dumps(out), encoding="utf-8")
        return 0

    with work_dir(args.work_dir, "trainer-bench-") as work:
        model, train_file = build_inputs(work)
        site = install_clock(work)
        info = {"cpus": os.cpu_count(), "machine": platform.machine(), "versions": versions()}
        runs: list[Run] = []
        for index in range(args.warmup + args.repeats):
            measured = index >= args.warmup
            repeat = str(index - args.warmup) if measured else f"-{index + 1}"
            pair = []
            for side, runner in (("ours", run_ours), ("trl", run_trl)):
                out_dir = work / "runs" / f"{side}-{index}"
                shutil.rmtree(out_dir, ignore_errors=True)
                settings = Settings(
                    model=str(model),
                    train_file=str(train_file),
                    output_dir=str(out_dir),
                    steps=args.steps,
                    micro_batch=args.micro_batch,
                    grad_accum=args.grad_accum,
                    seq_len=args.seq_len,
                    lr=args.lr,
                    seed=args.seed,
                    logging_steps=args.logging_steps,
                    optimizer=args.optimizer,
                    scheduler=args.scheduler,
                )
                pair.append(runner(settings, work, site, repeat, args.threads))
                shutil.rmtree(out_dir, ignore_errors=True)
            ours, trl = pair
            label = (
                f"run {int(repeat) + 1}/{args.repeats}" if measured else f"warmup {index + 1}/{args.warmup}"
            )
            print(
                f"{label}: tokens/s ours {ours.tokens_per_s:.0f}, TRL {trl.tokens_per_s:.0f} "
                f"(ratio {ours.tokens_per_s / trl.tokens_per_s:.3f}); tokens/CPU-s ours "
                f"{ours.tokens_per_cpu_s:.0f}, TRL {trl.tokens_per_cpu_s:.0f} "
                f"(ratio {ours.tokens_per_cpu_s / trl.tokens_per_cpu_s:.3f}); "
                f"wall {ours.wall:.1f}s / {trl.wall:.1f}s",
                flush=True,
            )
            if ours.tokens != trl.tokens:
                sys.exit(
                    f"the two sides trained on different token counts (ours {ours.tokens}, "
                    f"TRL {trl.tokens}); the comparison would not be like for like"
                )
            if measured:
                runs.extend(pair)
        summary = summarize(runs)
        print_report(runs, summary, args, info)
        if args.json:
            records = [
                {**asdict(r), "tokens_per_s": r.tokens_per_s, "tokens_per_cpu_s": r.tokens_per_cpu_s}
                for r in runs
            ]
            write_json(args.json, args, ("plain_trl",), info=info, runs=records, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

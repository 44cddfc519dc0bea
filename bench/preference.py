"""Preference training (DPO): ours against a plain TRL `DPOTrainer` script, and packed against unpacked.

Two comparisons on the tiny Llama of `scripts/make_tiny_model.py --pad-token` (1.77M parameters,
byte-level tokenizer: one token a character), full fine-tuning, fp32, sdpa, DPO (sigmoid loss,
beta 0.1, a frozen reference copy of the model), one torch thread, each run a fresh subprocess
with its own empty `datasets` cache:

1. **same work** (`--part same`): `python -m trainer.cli.train cfg.yml` with `method: dpo` and
   `padding_free: false` (TRL's own padded batches) against the `DPOTrainer` + `DPOConfig` script a
   user would write by hand (`plain_trl()` below: the JSONL text, TRL's own tokenization). Both
   sides read the pairs in file order (`shuffle: false` on ours) and draw them with the same seeded
   sampler, so they train on the same batches: a probe on the policy's forward hashes every
   micro-batch (input ids, attention mask) and counts its real tokens, and the script stops if the
   two sides' hashes or token counts (the probe's and TRL's logged `num_tokens`) differ. Metric:
   real tokens / `train_runtime`, ratio ours / TRL (target >= 0.97).
2. **packed vs unpacked** (`--part packing`): long-tailed pairs, ours three ways: `padding_free:
   false` (padded: what TRL's DPO does, the baseline), the default padding-free batches (the same
   micro-batches of `--micro-batch` pairs, each run as one row of its real tokens) and
   `sample_packing: true` (pairs grouped best-fit-decreasing into groups of up to 2 x sequence_len
   tokens, a micro-batch of N groups, N chosen so a micro-batch holds about `--micro-batch` pairs on
   average). One epoch each. Metrics: real tokens/s and pairs/s, ratios to padded (target >= 1.5).

Data (generated here, seeded): per pair, the longer of its two sequences (BOS + prompt + completion
+ EOS) has a log-normal length clipped to [8, sequence_len], the prompt takes 20-70% of its text and
the other completion 30-100% of the longer one. Part 1: median 48 tokens (sigma 0.5, sequence_len
128, like the toy SFT rows of overhead.py); part 2: median 64, sigma 1.0, sequence_len 512 (a
long tail up to 512).

The loop's CPU time (`time.process_time()` from `on_train_begin` to `on_train_end`) is measured on
every run by the probe's callback, registered for ours as a `trainer.callbacks` plugin through
entry-point metadata in the work directory and passed to the plain script in `callbacks=[...]`.
Runs alternate (ours, TRL / TRL, ours; padded, padding-free, packed / the reverse) and the
summary takes medians. The 1-minute load average is printed before each run and at the start and
end.

    python bench/preference.py               # 3 rounds of both parts, 1 warm-up pair: ~13 min, 2 CPU cores
    python bench/preference.py --quick       # 1 round, 20 steps: ~4 min
    python bench/preference.py --smoke --json out.json  # tiny sets, numbers meaningless (1.5-3 min: the test)
    python bench/preference.py --part same --repeats 5 --json same.json

Without `--work-dir` everything goes into a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Run as `python bench/preference.py` the folder is sys.path[0]; loaded by path it is not.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from benchlib import (
    SCRIPTS,
    child_env,
    install_callback_plugin,
    run_child,
    versions,
    work_dir,
    write_json,
)
from throughput_data import Words

SCRIPT = Path(__file__).resolve()
TARGET_SAME = 0.97  # ours / plain TRL, tokens/s of the training loop
TARGET_PACKING = 1.5  # packed (or padding-free) / padded, real tokens/s
PROBE_FILE = "bench_probe.json"
PLUGIN = "bench_pref_probe"
VARIANTS = ("padded", "padding_free", "packed")
NAMES = {
    "ours": "ours",
    "trl": "plain TRL",
    "padded": "padded (padding_free: false)",
    "padding_free": "padding-free (default)",
    "packed": "packed (sample_packing)",
}


@dataclass(frozen=True)
class Shape:
    """A preference set: pairs whose longer sequence is log-normal (median, sigma) in [8, seq_len]."""

    seq_len: int
    median: float
    sigma: float


SAME_SHAPE = Shape(seq_len=128, median=48, sigma=0.5)
LONG_SHAPE = Shape(seq_len=512, median=64, sigma=1.0)
SMOKE_SAME = Shape(seq_len=64, median=24, sigma=0.5)
SMOKE_LONG = Shape(seq_len=128, median=24, sigma=1.0)

PROBE_MODULE = f'''\
"""Loop clock and batch probe for bench/preference.py: wall and CPU seconds from on_train_begin to
on_train_end, and, for every training forward of the policy (grad on), a hash of its input ids and
attention mask, its real tokens (mask sum), its token slots (ids.numel()) and its rows; also the
time Python's garbage collector took during the loop and the objects it tracked at the start."""

import gc
import hashlib
import json
import os
import time

from trainer.api import Callback, Contribution


def probe_callback(path):
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.digest = hashlib.sha256()
            self.counts = {{"forwards": 0, "rows": 0, "tokens": 0, "slots": 0}}
            self.handle = model.register_forward_pre_hook(self.see, with_kwargs=True)
            self.objects = len(gc.get_objects())
            self.gc = {{"gc_s": 0.0, "gc_collections": 0, "gc_full": 0}}
            gc.callbacks.append(self.collecting)
            self.start = (time.perf_counter(), time.process_time())

        def collecting(self, phase, info):
            if phase == "start":
                self.gc_started = time.perf_counter()
                return
            self.gc["gc_s"] += time.perf_counter() - self.gc_started
            self.gc["gc_collections"] += 1
            self.gc["gc_full"] += info["generation"] == 2

        def see(self, module, args, kwargs):
            if not (module.training and torch.is_grad_enabled()):
                return None  # the reference model, evaluation: not the policy's training forward
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(ids)
            self.digest.update(str(tuple(ids.shape)).encode())
            self.digest.update(ids.masked_fill(mask == 0, -1).cpu().numpy().tobytes())
            self.counts["forwards"] += 1
            self.counts["rows"] += int(ids.shape[0])
            self.counts["tokens"] += int(mask.sum())
            self.counts["slots"] += int(ids.numel())
            return None

        def on_train_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
            self.handle.remove()
            gc.callbacks.remove(self.collecting)
            record = {{"wall": wall, "cpu": cpu, "digest": self.digest.hexdigest(), **self.counts, **self.gc}}
            record["gc_objects"] = self.objects
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(record, handle)

    return Probe()


class BenchProbe(Callback):
    name = "{PLUGIN}"

    def contribute(self, config):
        return Contribution(callbacks=[probe_callback(os.path.join(config.output_dir, "{PROBE_FILE}"))])
'''


@dataclass
class Settings:
    """What a run trains with (both sides of part 1 use the same)."""

    model: str
    train_file: str
    output_dir: str
    seq_len: int
    micro_batch: int
    grad_accum: int
    lr: float
    beta: float
    seed: int
    logging_steps: int
    optimizer: str
    scheduler: str


@dataclass
class Run:
    part: str  # "same" or "packing"
    side: str  # "ours" / "trl" (same), "padded" / "padding_free" / "packed" (packing)
    repeat: int  # -1, -2, ...: warm-up
    tokens: int  # real tokens the policy's training forwards saw (probe)
    logged_tokens: int  # TRL's num_tokens at the last log
    slots: int  # token slots of those forwards' padded batches (ids.numel())
    pairs: int  # preference pairs trained on (rows / 2)
    forwards: int  # micro-batches
    steps: int  # optimizer steps
    digest: str  # hash of every micro-batch's ids and mask, in order
    train_runtime: float  # the trainer's own training-loop time (wall)
    loop_cpu: float  # CPU seconds of the process during the loop
    wall: float  # the whole process
    cpu: float
    load: float  # 1-minute load average just before the run
    train_loss: float
    micro_batch: int = 0  # pairs (packed: groups) per micro-batch
    gc_s: float = 0.0  # seconds Python's garbage collector took during the loop
    gc_full: int = 0  # full (generation 2) collections during the loop
    gc_objects: int = 0  # objects the collector tracked when the loop started

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_runtime

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.train_runtime

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.loop_cpu

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / token slots of the collated (padded) batches, before any flattening."""
        return self.tokens / self.slots

    @property
    def computed(self) -> int:
        """Token positions the model computes: every slot of a padded batch; only the real tokens
        when ours runs the batch padding-free (the default, and under sample_packing)."""
        return self.tokens if self.side in ("padding_free", "packed") else self.slots

    def record(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "tokens_per_s": self.tokens_per_s,
            "pairs_per_s": self.pairs_per_s,
            "tokens_per_cpu_s": self.tokens_per_cpu_s,
            "padding_efficiency": self.padding_efficiency,
            "computed": self.computed,
        }


@dataclass
class Data:
    """A generated preference set."""

    path: Path
    shape: Shape
    pairs: int
    tokens: int  # both sequences of every pair: 2 x (BOS + prompt) + chosen + EOS + rejected + EOS
    pair_tokens: list[int] = field(repr=False)
    longest: list[int] = field(repr=False)  # the longer sequence of each pair

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.longest)
        return {
            "pairs": self.pairs,
            "tokens": self.tokens,
            "sequence_len": self.shape.seq_len,
            "median_setting": self.shape.median,
            "sigma": self.shape.sigma,
            "longer_sequence_median": statistics.median(ordered),
            "longer_sequence_mean": round(statistics.fmean(ordered), 1),
            "longer_sequence_p90": ordered[int(0.9 * (len(ordered) - 1))],
            "longer_sequence_max": ordered[-1],
            "pair_tokens_mean": round(statistics.fmean(self.pair_tokens), 1),
        }


# --------------------------------------------------------------------------------------------------
# Data


def write_pairs(path: Path, pairs: int, shape: Shape, seed: int) -> Data:
    """`pairs` seeded prompt/chosen/rejected rows (ASCII: one character a token). The longer of a
    pair's two sequences (BOS + prompt + completion + EOS) is log-normal in [8, seq_len]; the prompt
    takes 20-70% of its text, the other completion 30-100% of the longer one; which of chosen and
    rejected is the longer is a coin flip."""
    rng = random.Random(seed)
    words = Words(rng)
    pair_tokens, longest = [], []
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(pairs):
            total = min(shape.seq_len, max(8, round(rng.lognormvariate(math.log(shape.median), shape.sigma))))
            text = total - 2  # BOS and EOS
            prompt = min(text - 1, max(1, round(rng.uniform(0.2, 0.7) * text)))
            long_completion = text - prompt
            short_completion = max(1, round(long_completion * rng.uniform(0.3, 1.0)))
            first, second = words.text(long_completion), words.text(short_completion)
            while second == first:  # a pair must prefer something
                second = words.text(short_completion)
            chosen, rejected = (first, second) if rng.random() < 0.5 else (second, first)
            row = {"prompt": words.text(prompt), "chosen": chosen, "rejected": rejected}
            handle.write(json.dumps(row) + "\n")
            pair_tokens.append(2 * (1 + prompt) + long_completion + short_completion + 2)
            longest.append(total)
    return Data(path, shape, pairs, sum(pair_tokens), pair_tokens, longest)


def build_model(work: Path) -> Path:
    model = work / "model"
    command = [sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--out", str(model), "--pad-token"]
    run_child(command, dict(os.environ), work / "logs" / "model.log")
    return model


def packed_micro_batch(data: Data, micro_batch: int) -> tuple[int, dict[str, Any]]:
    """Groups per packed micro-batch so that a micro-batch holds about `micro_batch` pairs: the
    groups our packing makes (trainer.data.packing, best-fit decreasing into 2 x sequence_len)."""
    from trainer.data.packing import PackingPlan

    plan = PackingPlan.best_fit_decreasing(data.pair_tokens, 2 * data.shape.seq_len)
    per_group = data.pairs / len(plan.slots)
    groups = max(1, round(micro_batch / per_group))
    return groups, {
        "groups": len(plan.slots),
        "pairs_per_group": round(per_group, 2),
        "group_fill": round(plan.efficiency, 4),
        "groups_per_micro_batch": groups,
        "pairs_per_micro_batch": round(groups * per_group, 2),
    }


# --------------------------------------------------------------------------------------------------
# The plain TRL side: what a user would write by hand. Runs in its own process (`--plain-trl`).


def plain_trl(settings: Settings) -> dict[str, Any]:
    """Load model + tokenizer and the JSONL text, DPOConfig + DPOTrainer (TRL tokenizes), train."""
    import torch
    from bench_pref_probe import probe_callback  # the loop clock + probe; ours gets it as a plugin
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    model = AutoModelForCausalLM.from_pretrained(
        settings.model, dtype=torch.float32, attn_implementation="sdpa"
    )
    dataset = load_dataset("json", data_files=settings.train_file, split="train")
    config = DPOConfig(
        output_dir=settings.output_dir,
        per_device_train_batch_size=settings.micro_batch,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=1,
        max_length=settings.seq_len,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.scheduler,
        optim=settings.optimizer,
        beta=settings.beta,
        loss_type=["sigmoid"],
        seed=settings.seed,
        data_seed=settings.seed,  # ours sets data_seed = seed: the same sampler order
        bf16=False,  # TRL's default is bf16 (not possible on this CPU): fp32, like ours
        gradient_checkpointing=False,  # TRL's default is True; ours is False
        logging_steps=settings.logging_steps,
        logging_first_step=True,  # ours logs the first step too
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
    )
    trainer = DPOTrainer(
        model=model,  # the reference: TRL loads a frozen copy of the same checkpoint (ours does too)
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[probe_callback(os.path.join(settings.output_dir, PROBE_FILE))],
    )
    trainer.train()
    trainer.save_model()  # ours saves the final model too
    return {
        "log_history": trainer.state.log_history,
        "total_train_tokens": trainer._total_train_tokens,
        "global_step": trainer.state.global_step,
    }


# --------------------------------------------------------------------------------------------------
# Runs


def our_config(settings: Settings, variant: str) -> str:
    """Ours: `padded` (padding_free: false, TRL's own batches), `padding_free` (the default) or
    `packed` (sample_packing: true)."""
    extra = {
        "padded": ["padding_free: false  # TRL's padded batches"],
        "padding_free": [],
        "packed": ["sample_packing: true"],
    }[variant]
    lines = [
        f"base_model: {json.dumps(settings.model)}",
        "datasets:",
        f"  - path: {json.dumps(settings.train_file)}",
        "    type: preference",
        "method:",
        "  type: dpo",
        f"  beta: {settings.beta}",
        "  loss_type: sigmoid",
        f"sequence_len: {settings.seq_len}",
        "shuffle: false  # file order, as the plain script loads it; both samplers then draw the same pairs",
        *extra,
        "adapter: full",
        "attention: sdpa",
        f"micro_batch_size: {settings.micro_batch}",
        f"gradient_accumulation_steps: {settings.grad_accum}",
        "num_epochs: 1",
        f"learning_rate: {settings.lr}",
        f"lr_scheduler: {settings.scheduler}",
        f"optimizer: {settings.optimizer}",
        f"seed: {settings.seed}",
        f"logging_steps: {settings.logging_steps}",
        'save_strategy: "no"',
        f"callbacks: [{PLUGIN}]",
        f"output_dir: {json.dumps(settings.output_dir)}",
    ]
    return "\n".join(lines) + "\n"


def read_log(log_history: list[dict[str, Any]], where: str) -> tuple[int, int, float, float]:
    """(optimizer steps, num_tokens at the last log, train_runtime, train_loss) from a log history."""
    logged = [h for h in log_history if "num_tokens" in h]
    final = [h for h in log_history if "train_runtime" in h]
    if not logged or not final:
        sys.exit(f"{where}: no num_tokens / train_runtime in the trainer's log history")
    last = max(logged, key=lambda h: h["step"])
    end = final[-1]
    return int(end["step"]), int(last["num_tokens"]), float(end["train_runtime"]), float(end["train_loss"])


def read_probe(output_dir: str, where: str) -> dict[str, Any]:
    path = Path(output_dir) / PROBE_FILE
    if not path.is_file():
        sys.exit(f"{where}: the probe wrote no {path}")
    return dict(json.loads(path.read_text(encoding="utf-8")))


def finish(
    part: str, side: str, repeat: int, settings: Settings, history: list[dict[str, Any]], name: str,
    timing: tuple[float, float, float],
) -> Run:  # fmt: skip
    steps, logged, runtime, loss = read_log(history, name)
    probe = read_probe(settings.output_dir, name)
    wall, cpu, load = timing
    return Run(
        part=part, side=side, repeat=repeat, tokens=probe["tokens"], logged_tokens=logged,
        slots=probe["slots"], pairs=probe["rows"] // 2, forwards=probe["forwards"], steps=steps,
        digest=probe["digest"], train_runtime=runtime, loop_cpu=probe["cpu"], wall=wall, cpu=cpu,
        load=load, train_loss=loss, micro_batch=settings.micro_batch, gc_s=probe["gc_s"],
        gc_full=probe["gc_full"], gc_objects=probe["gc_objects"],
    )  # fmt: skip


def run_ours(
    part: str, variant: str, repeat: int, settings: Settings, work: Path, site: Path, threads: int
) -> Run:
    name = f"{part}-{variant}-{repeat}"
    cfg = work / "configs" / f"{name}.yml"
    cfg.write_text(our_config(settings, variant), encoding="utf-8")
    env = child_env(threads, work / "hf-datasets" / name, site)
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "trainer.cli.train", str(cfg)]
    _, wall, cpu = run_child(command, env, work / "logs" / f"{name}.log")
    state = json.loads((Path(settings.output_dir) / "trainer_state.json").read_text(encoding="utf-8"))
    side = "ours" if part == "same" else variant
    return finish(part, side, repeat, settings, state["log_history"], name, (wall, cpu, load))


def run_trl(repeat: int, settings: Settings, work: Path, site: Path, threads: int) -> Run:
    name = f"same-trl-{repeat}"
    spec, result = work / "configs" / f"{name}.json", work / "configs" / f"{name}.result.json"
    spec.write_text(json.dumps(asdict(settings)), encoding="utf-8")
    env = child_env(threads, work / "hf-datasets" / name, site)
    load = os.getloadavg()[0]
    command = [sys.executable, str(SCRIPT), "--plain-trl", str(spec), str(result)]
    _, wall, cpu = run_child(command, env, work / "logs" / f"{name}.log")
    out = json.loads(result.read_text(encoding="utf-8"))
    run = finish("same", "trl", repeat, settings, out["log_history"], name, (wall, cpu, load))
    if out["global_step"] == run.steps and run.logged_tokens != out["total_train_tokens"]:
        sys.exit(f"{name}: logged num_tokens {run.logged_tokens} != TRL's total {out['total_train_tokens']}")
    return run


def settings_for(args: argparse.Namespace, model: Path, data: Data, out: Path, micro_batch: int) -> Settings:
    shutil.rmtree(out, ignore_errors=True)
    return Settings(
        model=str(model), train_file=str(data.path), output_dir=str(out), seq_len=data.shape.seq_len,
        micro_batch=micro_batch, grad_accum=args.grad_accum, lr=args.lr, beta=args.beta, seed=args.seed,
        logging_steps=args.logging_steps, optimizer=args.optimizer, scheduler=args.scheduler,
    )  # fmt: skip


def check_same(ours: Run, trl: Run, data: Data, steps: int) -> None:
    """Stop unless both sides trained on exactly the same batches: the whole set, once."""
    problems = []
    if ours.tokens != trl.tokens:
        problems.append(f"real tokens fed to the policy: ours {ours.tokens}, TRL {trl.tokens}")
    if ours.logged_tokens != trl.logged_tokens:
        problems.append(f"logged num_tokens: ours {ours.logged_tokens}, TRL {trl.logged_tokens}")
    if ours.digest != trl.digest:
        problems.append("the micro-batches' input ids / attention masks differ (hash of every batch)")
    if ours.tokens != data.tokens:
        problems.append(f"ours trained on {ours.tokens} tokens, the data has {data.tokens}")
    if (ours.steps, trl.steps) != (steps, steps):
        problems.append(f"optimizer steps: ours {ours.steps}, TRL {trl.steps}, expected {steps}")
    if problems:
        sys.exit("part 1: the two sides did not do the same work:\n  " + "\n  ".join(problems))


def part_same(args: argparse.Namespace, work: Path, site: Path, model: Path, data: Data) -> list[Run]:
    runs: list[Run] = []
    steps = data.pairs // (args.micro_batch * args.grad_accum)
    for index in range(args.warmup + args.repeats):
        repeat = index - args.warmup if index >= args.warmup else -(index + 1)
        order = ("ours", "trl") if index % 2 == 0 else ("trl", "ours")
        pair: dict[str, Run] = {}
        for side in order:
            out = work / "runs" / f"same-{side}-{index}"
            settings = settings_for(args, model, data, out, args.micro_batch)
            if side == "ours":
                pair[side] = run_ours("same", "padded", repeat, settings, work, site, args.threads)
            else:
                pair[side] = run_trl(repeat, settings, work, site, args.threads)
            shutil.rmtree(out, ignore_errors=True)
        ours, trl = pair["ours"], pair["trl"]
        label = f"round {repeat + 1}/{args.repeats}" if repeat >= 0 else f"warm-up {index + 1}/{args.warmup}"
        print(
            f"part 1 {label} ({' then '.join(order)}): tokens/s ours {ours.tokens_per_s:.0f}, "
            f"TRL {trl.tokens_per_s:.0f} (ratio {ours.tokens_per_s / trl.tokens_per_s:.3f}); tokens/CPU-s "
            f"ours {ours.tokens_per_cpu_s:.0f}, TRL {trl.tokens_per_cpu_s:.0f}; loss {ours.train_loss:.4f} / "
            f"{trl.train_loss:.4f}; wall {ours.wall:.1f}s / {trl.wall:.1f}s; "
            f"load {ours.load:.2f}/{trl.load:.2f}",
            flush=True,
        )
        check_same(ours, trl, data, steps)
        if repeat >= 0:
            runs.extend([ours, trl])
    return runs


def part_packing(
    args: argparse.Namespace, work: Path, site: Path, model: Path, data: Data, packed_groups: int
) -> list[Run]:
    runs: list[Run] = []
    for index in range(args.repeats):
        order = VARIANTS if index % 2 == 0 else tuple(reversed(VARIANTS))
        found: dict[str, Run] = {}
        for variant in order:
            out = work / "runs" / f"packing-{variant}-{index}"
            micro_batch = packed_groups if variant == "packed" else args.micro_batch
            settings = settings_for(args, model, data, out, micro_batch)
            found[variant] = run_ours("packing", variant, index, settings, work, site, args.threads)
            shutil.rmtree(out, ignore_errors=True)
        base = found["padded"]
        print(
            f"part 2 round {index + 1}/{args.repeats}: tokens/s "
            + ", ".join(f"{v} {found[v].tokens_per_s:.0f}" for v in VARIANTS)
            + f" (x{found['padding_free'].tokens_per_s / base.tokens_per_s:.2f}, "
            f"x{found['packed'].tokens_per_s / base.tokens_per_s:.2f} of padded); load "
            + "/".join(f"{found[v].load:.2f}" for v in VARIANTS),
            flush=True,
        )
        problems = [
            f"{v}: {found[v].tokens} tokens trained, the data has {data.tokens}"
            for v in VARIANTS
            if found[v].tokens != data.tokens
        ]
        if found["padding_free"].digest != base.digest:
            problems.append("padding-free did not run the padded run's micro-batches (batch hashes differ)")
        if problems:
            sys.exit("part 2: the runs did not train on the same pairs:\n  " + "\n  ".join(problems))
        runs.extend(found[v] for v in VARIANTS)
    return runs


# --------------------------------------------------------------------------------------------------
# Summary and report

METRICS = (
    "tokens", "pairs", "steps", "train_runtime", "tokens_per_s", "pairs_per_s", "loop_cpu",
    "tokens_per_cpu_s", "padding_efficiency", "computed", "wall", "cpu", "train_loss", "load",
)  # fmt: skip


def medians(runs: list[Run], sides: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {
        side: {key: statistics.median(getattr(r, key) for r in runs if r.side == side) for key in METRICS}
        for side in sides
    }


def ratios(runs: list[Run], med: dict[str, dict[str, float]], side: str, base: str) -> dict[str, Any]:
    mine = [r for r in runs if r.side == side]
    theirs = [r for r in runs if r.side == base]
    per_round = [a.tokens_per_s / b.tokens_per_s for a, b in zip(mine, theirs, strict=True)]
    per_round_cpu = [a.tokens_per_cpu_s / b.tokens_per_cpu_s for a, b in zip(mine, theirs, strict=True)]
    return {
        "tokens_per_s": med[side]["tokens_per_s"] / med[base]["tokens_per_s"],
        "pairs_per_s": med[side]["pairs_per_s"] / med[base]["pairs_per_s"],
        "tokens_per_cpu_s": med[side]["tokens_per_cpu_s"] / med[base]["tokens_per_cpu_s"],
        "per_round": per_round,
        "per_round_median": statistics.median(per_round),
        "per_round_cpu": per_round_cpu,
        "wall": med[side]["wall"] / med[base]["wall"],
    }


def summarize(runs: list[Run]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    same = [r for r in runs if r.part == "same"]
    if same:
        med = medians(same, ("ours", "trl"))
        ratio = ratios(same, med, "ours", "trl")
        summary["same"] = {
            "median": med,
            "ratio": ratio,
            "target": TARGET_SAME,
            "status": "PASS" if ratio["tokens_per_s"] >= TARGET_SAME else "FAIL",
        }
    packing = [r for r in runs if r.part == "packing"]
    if packing:
        med = medians(packing, VARIANTS)
        found = {v: ratios(packing, med, v, "padded") for v in ("padding_free", "packed")}
        best = max(found[v]["tokens_per_s"] for v in found)
        summary["packing"] = {
            "median": med,
            "ratio": found,
            "target": TARGET_PACKING,
            "status": "PASS" if best >= TARGET_PACKING else "FAIL",
        }
    return summary


def fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 10:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.2f}"


ROWS = (
    ("real tokens trained on", "tokens"),
    ("pairs", "pairs"),
    ("optimizer steps", "steps"),
    ("train loop time, s (train_runtime)", "train_runtime"),
    ("real tokens/s", "tokens_per_s"),
    ("pairs/s", "pairs_per_s"),
    ("train loop CPU time, s", "loop_cpu"),
    ("real tokens per CPU-second", "tokens_per_cpu_s"),
    ("real / slots of the collated batches", "padding_efficiency"),
    ("token positions the model computes", "computed"),
    ("end-to-end wall time, s", "wall"),
    ("end-to-end CPU time, s", "cpu"),
    ("train loss", "train_loss"),
    ("1-min load before the run", "load"),
)


def print_table(med: dict[str, dict[str, float]], sides: tuple[str, ...], base: str) -> None:
    """Medians of every side, then each other side / `base`."""
    others = [s for s in sides if s != base]
    header = ["median", *(NAMES[s] for s in sides), *(f"{s} / {base}" for s in others)]
    rows = []
    for label, key in ROWS:
        shown = [med[s][key] / med[base][key] if med[base][key] else 0.0 for s in others]
        rows.append([label, *(fmt(med[s][key]) for s in sides), *(f"{r:.3f}" for r in shown)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + " | ".join(cells))


def print_report(runs: list[Run], summary: dict[str, Any], args: argparse.Namespace, info: dict) -> None:
    print("\nevery measured run:")
    print(
        f"  {'run':<24} {'tokens':>8} {'pairs':>6} {'steps':>5} {'loop s':>8} {'tok/s':>7} {'pairs/s':>7} "
        f"{'tok/cpu-s':>9} {'pad eff':>7} {'wall s':>7} {'load':>5} {'loss':>7}"
    )
    for r in runs:
        print(
            f"  {r.part + '-' + r.side + '-' + str(r.repeat):<24} {r.tokens:>8} {r.pairs:>6} {r.steps:>5} "
            f"{r.train_runtime:>8.2f} {r.tokens_per_s:>7.0f} {r.pairs_per_s:>7.2f} "
            f"{r.tokens_per_cpu_s:>9.0f} {r.padding_efficiency:>7.3f} {r.wall:>7.1f} {r.load:>5.2f} "
            f"{r.train_loss:>7.4f}"
        )
    if "same" in summary:
        s, data = summary["same"], info["data"]["same"]
        print(
            f"\npart 1, same work (median of {args.repeats}): ours (padding_free: false) vs a plain "
            f"DPOTrainer script; {data['pairs']:,} pairs, {data['tokens']:,} tokens, sequence_len "
            f"{data['sequence_len']}, micro-batch {args.micro_batch} pairs x {args.grad_accum}"
        )
        print_table(s["median"], ("ours", "trl"), "trl")
        r = s["ratio"]
        print(
            f"ours / TRL, median real tokens/s: {r['tokens_per_s']:.3f} "
            f"({s['status']}: target >= {TARGET_SAME}); per round "
            f"{', '.join(f'{x:.3f}' for x in r['per_round'])} (median {r['per_round_median']:.3f}); "
            f"per CPU-second {r['tokens_per_cpu_s']:.3f} (per round "
            f"{', '.join(f'{x:.3f}' for x in r['per_round_cpu'])})"
        )
        print(
            "  same batches on both sides: checked (each micro-batch's hash, real tokens, num_tokens, steps)"
        )
    if "packing" in summary:
        s, data, choice = summary["packing"], info["data"]["packing"], info["packed_micro_batch"]
        print(
            f"\npart 2, packed vs unpacked DPO (median of {args.repeats}): {data['pairs']:,} long-tailed "
            f"pairs ({data['tokens']:,} tokens; longer sequence median {data['longer_sequence_median']}, p90 "
            f"{data['longer_sequence_p90']}, max {data['longer_sequence_max']}; sequence_len "
            f"{data['sequence_len']}), one epoch each"
        )
        print(
            f"  micro-batch: padded and padding-free {args.micro_batch} pairs; packed "
            f"{choice['groups_per_micro_batch']} group(s) of up to {2 * data['sequence_len']} tokens = "
            f"{choice['pairs_per_micro_batch']} pairs on average ({choice['groups']} groups, "
            f"{choice['pairs_per_group']} pairs each, fill {choice['group_fill']:.3f}): "
            + (
                "--packed-micro-batch"
                if args.packed_micro_batch is not None
                else f"round({args.micro_batch} / pairs per group)"
            )
        )
        print_table(s["median"], VARIANTS, "padded")
        for v in ("padding_free", "packed"):
            r = s["ratio"][v]
            verdict = "meets" if r["tokens_per_s"] >= TARGET_PACKING else "below"
            print(
                f"{v} / padded, median real tokens/s: {r['tokens_per_s']:.2f} ({verdict} {TARGET_PACKING}); "
                f"pairs/s {r['pairs_per_s']:.2f}; per round {', '.join(f'{x:.2f}' for x in r['per_round'])}; "
                f"per CPU-second {r['tokens_per_cpu_s']:.2f}"
            )
        print(f"target packed (or padding-free) >= {TARGET_PACKING} x padded: {s['status']}")
    print(
        f"\nsettings: full fine-tuning, DPO sigmoid beta {args.beta}, frozen reference copy, fp32, sdpa, "
        f"lr {args.lr} {args.scheduler}, {args.optimizer}, seed {args.seed}, logging every "
        f"{args.logging_steps} steps, {args.threads} torch thread(s), no eval, no checkpoints"
    )
    print(
        f"machine: {info['cpus']} CPUs ({info['machine']}); "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    loads = [r.load for r in runs]
    print(
        f"1-minute load average: {info['load']['start']:.2f} at the start, {info['load']['end']:.2f} at the "
        f"end, {min(loads):.2f}..{max(loads):.2f} before the runs; {info['minutes']:.1f} min in all"
    )
    if max(loads) > args.threads + 0.5:
        print(
            "  other processes were competing for the CPU: single runs are noisy; read the medians, the "
            "per-round ratios and the CPU-time ratios (bench/README.md)"
        )


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("same", "packing", "both"), default="both")
    p.add_argument("--repeats", type=int, help="measured rounds (default 3; --quick, --smoke: 1)")
    p.add_argument("--warmup", type=int, help="unmeasured part-1 pairs first (default 1; --quick/--smoke 0)")
    p.add_argument(
        "--steps", type=int,
        help="optimizer steps of part 1 and of part 2's unpacked runs: the sets have steps x micro-batch x "
        "grad-accum pairs, one epoch (default 40; --quick 20; --smoke 2)",
    )  # fmt: skip
    p.add_argument("--micro-batch", type=int, help="pairs per micro-batch (default 8; --smoke 2)")
    p.add_argument("--packed-micro-batch", type=int, help="groups per packed micro-batch (default: chosen)")
    p.add_argument("--grad-accum", type=int, default=1, help="default 1")
    p.add_argument("--quick", action="store_true", help="1 round, no warm-up, 20 steps (~3 min)")
    p.add_argument("--smoke", action="store_true", help="1 round, 2 steps, tiny sets: checks the script")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--logging-steps", type=int, help="default 10 (--smoke: 1); divides --steps")
    p.add_argument("--lr", type=float, default=5e-4, help="default 5e-4")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", default="adamw_torch", help="default adamw_torch (trainer's default)")
    p.add_argument("--scheduler", default="cosine", help="default cosine (trainer's default)")
    p.add_argument("--work-dir", type=Path, help="keep the model, data, configs and per-run logs here")
    p.add_argument("--json", type=Path, help="also write every run and the summary as JSON")
    p.add_argument("--plain-trl", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain_trl:
        return args
    preset = {"repeats": 3, "warmup": 1, "steps": 40, "micro_batch": 8, "logging_steps": 10}
    if args.quick:
        preset.update(repeats=1, warmup=0, steps=20)
    if args.smoke:
        preset.update(repeats=1, warmup=0, steps=2, micro_batch=2, logging_steps=1)
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.repeats, args.steps, args.micro_batch, args.grad_accum, args.threads, args.logging_steps) < 1:
        p.error("--repeats, --steps, --micro-batch, --grad-accum, --threads, --logging-steps must be >= 1")
    if args.warmup < 0 or (args.packed_micro_batch is not None and args.packed_micro_batch < 1):
        p.error("--warmup must be >= 0, --packed-micro-batch >= 1")
    if args.steps % args.logging_steps:
        p.error("--steps must be a multiple of --logging-steps (the last log carries num_tokens)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_trl:
        spec, result = args.plain_trl
        out = plain_trl(Settings(**json.loads(Path(spec).read_text(encoding="utf-8"))))
        Path(result).write_text(json.dumps(out), encoding="utf-8")
        return 0

    start, load_start = time.perf_counter(), os.getloadavg()[0]
    info: dict[str, Any] = {"cpus": os.cpu_count(), "machine": platform.machine(), "versions": versions()}
    same_shape, long_shape = (SMOKE_SAME, SMOKE_LONG) if args.smoke else (SAME_SHAPE, LONG_SHAPE)
    pairs = args.steps * args.micro_batch * args.grad_accum
    with work_dir(args.work_dir, "trainer-bench-pref-") as work:
        for sub in ("logs", "configs", "runs", "data"):
            (work / sub).mkdir(exist_ok=True)
        model = build_model(work)
        site = install_callback_plugin(
            work, PLUGIN, PROBE_MODULE, "trainer-bench-pref-probe", f"{PLUGIN} = {PLUGIN}:BenchProbe"
        )
        same = write_pairs(work / "data" / "same.jsonl", pairs, same_shape, args.seed)
        long = write_pairs(work / "data" / "long.jsonl", pairs, long_shape, args.seed + 1)
        info["data"] = {"same": same.stats(), "packing": long.stats()}
        groups, info["packed_micro_batch"] = packed_micro_batch(long, args.micro_batch)
        if args.packed_micro_batch is not None:
            groups = args.packed_micro_batch
            info["packed_micro_batch"]["groups_per_micro_batch"] = groups
            info["packed_micro_batch"]["pairs_per_micro_batch"] = round(
                groups * info["packed_micro_batch"]["pairs_per_group"], 2
            )
        stats = info["data"]["packing"]
        print(
            f"part 1 data: {same.pairs:,} pairs, {same.tokens:,} tokens; part 2 data: {long.pairs:,} pairs, "
            f"{long.tokens:,} tokens (longer sequence median {stats['longer_sequence_median']}, max "
            f"{stats['longer_sequence_max']}); packed micro-batch {groups} group(s)",
            flush=True,
        )
        runs: list[Run] = []
        if args.part in ("same", "both"):
            runs += part_same(args, work, site, model, same)
        if args.part in ("packing", "both"):
            runs += part_packing(args, work, site, model, long, groups)
    info["load"] = {"start": load_start, "end": os.getloadavg()[0]}
    info["minutes"] = (time.perf_counter() - start) / 60
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    summary = summarize(runs)
    print_report(runs, summary, args, info)
    if args.json:
        write_json(args.json, args, ("plain_trl",), **info, runs=[r.record() for r in runs], summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

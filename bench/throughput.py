"""Training throughput with and without sample packing: trainer against TRL's `SFTTrainer`.

Four runs train the same tiny Llama (`scripts/make_tiny_model.py --pad-token`: hidden 256, 2 layers,
4 heads, byte-level vocabulary of 260 with a distinct `<pad>`, 512 positions) for one epoch over the
same prompt/completion rows, with the same attention kernel (sdpa, or `--attention eager`), fp32,
learning rate, schedule, optimizer and seed; no eval, no checkpoints:

- **(a)** plain TRL `SFTTrainer`: its own tokenization of the prompt/completion rows,
  completion-only loss, `DataCollatorForLanguageModeling` padding each micro-batch to its longest row;
- **(b)** TRL with its own packing: `packing=True, packing_strategy="bfd", max_length=sequence_len`,
  which makes it padding-free (each micro-batch flattened into one row, examples told apart by
  restarting position ids);
- **(c)** ours without packing: `python -m trainer.cli.train cfg.yml`, `prompt_completion` formatter;
- **(d)** ours with `sample_packing: true`.

Padding runs (a, c) take `--micro-batch` examples per micro-batch; packed runs (b, d) one packed
row of `sequence_len` tokens (TRL flattens a micro-batch into one row, so 1 is its intended use),
with gradient accumulation chosen so that an optimizer step holds about as many real tokens as a
padding run's step. The rows are written here (seeded): total token lengths are log-normal
(`--median-len`, `--sigma`) clipped to `sequence_len`, like real chat data, split at random into a
prompt and a completion; ASCII only, so with the byte-level tokenizer one character is one token and
nothing is truncated or dropped by either side.

Method. Every run is a fresh subprocess with its own empty `datasets` cache and one torch thread;
runs go round-robin, a b c d, then d c b a, ... over `--repeats` rounds, and the report gives medians.
Throughput is counted from what each trainer actually fed the model: a probe callback (for ours a
`trainer.callbacks` plugin registered through entry-point metadata in the work directory, for TRL
passed in `callbacks=[...]`) puts a forward pre-hook on the model that keeps a reference to every
training batch; after training it counts tokens processed (`input_ids.numel()`), real tokens
(`input_ids != pad`; the pad token occurs in no example) and trainable tokens (`labels != -100`:
completion + EOS), and hashes every example (its `input_ids` and `labels`, cut out of padded or
packed rows by the attention mask or the restarting position ids). The script stops if the four runs
did not train the same examples and the same trainable tokens. Tokens/s divide by the trainer's own
`train_runtime` (the training loop, after model loading and data preparation); the probe also takes
the loop's CPU time, which swings less than wall time on a shared machine.

Isolation of packed examples, checked once per packed run on the first `--isolation-batches`
batches of that trainer's own `get_train_dataloader()`: the batch goes through that trainer's
`compute_loss` (TRL sets `use_cache=False`; ours pops `num_real_tokens`, then calls TRL's), the
decoder's last hidden states are caught with a forward hook and turned into logits by the LM head,
and each example's logits are compared with the example run alone (`model(input_ids=...)`). The
same batch is also run as a plain `model(**batch)` call (the model's default `use_cache`): with a
cache object transformers does not look for packed sequences in the position ids, so TRL's
position-id-only rows are isolated only through `compute_loss`.

`--gpu` trains ours with `sample_packing` on a 1B-class Llama (hidden 2048, 16 layers, 32 heads, 8 KV
heads, intermediate 8192, vocabulary 32000, tied embeddings: 1.04B parameters; random weights, bf16,
sequence 2048, one packed row x 8 accumulation, 5 warm-up + 30 timed optimizer steps) under every
attention kernel whose `trainer.cli.validate` check passes (the others are skipped with its reason),
and reports tokens/s and MFU = (6 N T + 6 L h sum(s_i^2)) / seconds / peak: N parameters in matmuls,
T real tokens, L layers, h hidden size, s_i each packed example's length (causal attention, so half
of 12 L h s^2), peak the GPU's dense bf16 FLOP/s from a small table or `--peak-tflops`.
`--gpu-smoke` runs the same code path on CPU with a tiny shape in fp32.

    python bench/throughput.py [--repeats 3] [--examples 800] [--seq-len 512] [--median-len 96]
                               [--sigma 0.9] [--micro-batch 8] [--attention sdpa|eager]
                               [--work-dir DIR] [--json result.json]
    python bench/throughput.py --gpu [--gpu-steps 30] [--peak-tflops 989]
    python bench/throughput.py --gpu-smoke

Without `--work-dir` everything goes into a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# This file is also loaded by its path, where its folder is not on sys.path: as the probe plugin's
# module in the training processes (PLUGIN_MODULE) and by tests/test_bench_throughput.py. Appended,
# not prepended, so the scripts here shadow no module of those processes.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from benchlib import (
    SCRIPTS,
    child_env,
    install_callback_plugin,
    run_child,
    tail,
    versions,
    work_dir,
    write_json,
)

PROBE_FILE = "bench_probe.json"
FED_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")
ISOLATION_ATOL = 1e-4
TARGET_D_OVER_A = 1.5
TARGET_D_OVER_B = 0.9
TARGET_EFFICIENCY = 0.95
RUNS = {
    "a": ("trl", False, "TRL SFTTrainer, padding"),
    "b": ("trl", True, "TRL SFTTrainer, packing=True bfd"),
    "c": ("ours", False, "ours, no packing"),
    "d": ("ours", True, "ours, sample_packing"),
}
KERNELS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
GPU_SHAPE = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "vocab": 32000}
SMOKE_SHAPE = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 512}
PEAK_BF16_TFLOPS = (  # dense bf16 tensor-core peak, by a substring of torch.cuda.get_device_name()
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)

PLUGIN_MODULE = '''\
"""Entry point for bench/throughput.py's probe: the callback is defined in the script itself."""

import importlib.util
import os
import sys

from trainer.api import Callback, Contribution

_spec = importlib.util.spec_from_file_location("bench_throughput", {script!r})
_bench = sys.modules.setdefault("bench_throughput", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_bench)


class BenchProbe(Callback):
    name = "bench_probe"

    def contribute(self, config):
        path = os.path.join(config.output_dir, _bench.PROBE_FILE)
        return Contribution(callbacks=[_bench.probe_callback(path)])
'''


# --------------------------------------------------------------------------------------------------
# The probe: what the model was fed, and the loop's clock. Runs inside the training processes.


def probe_callback(path: str) -> Any:
    """A TrainerCallback that records every training batch the model is called with (references,
    no copies, no device syncs), the loop's wall and CPU time and the time after each optimizer
    step, and writes a summary to `path` at the end of training."""
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.batches: list[dict[str, Any]] = []
            self.steps: list[tuple[float, int]] = []  # (seconds since train begin, micro-batches so far)

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            if not torch.cuda.is_available():
                torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
            self.pad_id = processing_class.pad_token_id
            self.hook = model.register_forward_pre_hook(self.keep, with_kwargs=True)
            self.start = (time.perf_counter(), time.process_time())

        def keep(self, module, args, kwargs):
            if module.training:
                fed = {k: kwargs[k] for k in FED_KEYS if torch.is_tensor(kwargs.get(k))}
                self.batches.append({k: v for k, v in fed.items() if v.dim() == 2})  # not 4D masks

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.steps.append((time.perf_counter() - self.start[0], len(self.batches)))

        def on_train_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
            self.hook.remove()
            cuda = torch.cuda.is_available()
            record = {
                "loop_wall": wall,
                "loop_cpu": cpu,
                "steps": self.steps,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "max_memory": torch.cuda.max_memory_allocated() if cuda else 0,
                **feed_stats(self.batches, self.pad_id),
            }
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(record, handle)

    return Probe()


def example_spans(ids: Any, positions: Any, pad_id: int) -> list[tuple[int, int]]:
    """(start, end) of each example in one row: split at restarting position ids (packed rows) or
    the right-padded real part (plain rows); blocks of padding are left out."""
    is_real = ids != pad_id
    if positions is None:
        return [(0, int(is_real.sum()))]
    starts = (positions == 0).nonzero().flatten().tolist()
    bounds = [*starts, len(ids)] if starts and starts[0] == 0 else [0, *starts, len(ids)]
    return [(s, e) for s, e in itertools.pairwise(bounds) if e > s and bool(is_real[s:e].any())]


def feed_stats(batches: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Token counts and example hashes of the batches a model was fed."""
    processed = real = trainable = mask_disagrees = 0
    digests: list[str] = []
    per_batch = []  # (real tokens, sum of squared example lengths) per micro-batch
    for batch in batches:
        ids, labels = batch["input_ids"].cpu(), batch["labels"].cpu()
        positions = batch["position_ids"].cpu() if "position_ids" in batch else None
        n_real = int((ids != pad_id).sum())
        if "attention_mask" in batch and int(batch["attention_mask"].sum()) != n_real:
            mask_disagrees += 1
        processed += ids.numel()
        real += n_real
        trainable += int((labels != -100).sum())
        squares = 0
        for row in range(ids.shape[0]):
            row_positions = None if positions is None else positions[min(row, positions.shape[0] - 1)]
            for start, end in example_spans(ids[row], row_positions, pad_id):
                data = ids[row, start:end].numpy().tobytes() + labels[row, start:end].numpy().tobytes()
                digests.append(hashlib.blake2b(data, digest_size=8).hexdigest())
                squares += (end - start) ** 2
        per_batch.append((n_real, squares))
    return {
        "micro_batches": len(batches),
        "processed": processed,
        "real": real,
        "trainable": trainable,
        "examples": len(digests),
        "example_set": hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16],
        "example_order": hashlib.sha256("".join(digests).encode()).hexdigest()[:16],
        "mask_disagrees": mask_disagrees,
        "per_batch": per_batch,
    }


# --------------------------------------------------------------------------------------------------
# Data and models


class Words:
    """Seeded ASCII text of an exact number of characters (= tokens for the byte-level tokenizer)."""

    def __init__(self, rng: random.Random):
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.rng = rng
        self.vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
        self.weights = [1 / (rank + 1) for rank in range(len(self.vocab))]  # Zipf-like

    def text(self, n_chars: int) -> str:
        parts: list[str] = []
        size = -1  # the joined length: words and the spaces between them
        while size < n_chars:
            word = self.rng.choices(self.vocab, self.weights)[0]
            parts.append(word)
            size += len(word) + 1
        return " ".join(parts)[:n_chars]


def write_rows(path: Path, n: int, seq_len: int, median: float, sigma: float, seed: int) -> dict[str, Any]:
    """`n` prompt/completion rows whose total tokens (BOS + prompt + completion + EOS) are log-normal,
    clipped to [8, seq_len]; the completion gets 30-80% of the text."""
    rng = random.Random(seed)
    words = Words(rng)
    lengths = []
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(n):
            total = min(seq_len, max(8, round(rng.lognormvariate(math.log(median), sigma))))
            text = total - 2  # BOS and EOS are added by both sides
            prompt = min(text - 1, max(1, round(rng.uniform(0.2, 0.7) * text)))
            row = {"prompt": words.text(prompt), "completion": words.text(text - prompt)}
            assert len(row["prompt"]) + len(row["completion"]) == text
            handle.write(json.dumps(row) + "\n")
            lengths.append(total)
    ordered = sorted(lengths)
    return {
        "examples": n,
        "tokens": sum(lengths),
        "median": statistics.median(lengths),
        "mean": statistics.fmean(lengths),
        "p90": ordered[int(0.9 * (n - 1))],
        "max": ordered[-1],
        "at_cap": sum(x == seq_len for x in lengths),
    }


def make_model(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: build and save a model with the byte-level tokenizer of scripts/make_tiny_model.py.
    `shape` None: make_tiny_model's own tiny Llama (its defaults, with `--pad-token`); otherwise a
    Llama of that shape, random weights, in `dtype`. Returns parameter counts."""
    import torch

    sys.path.insert(0, str(SCRIPTS))
    import make_tiny_model
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_model.build_tokenizer(pad_token=True)
    shape, positions = spec["shape"], spec["positions"]
    if shape is None:
        model = make_tiny_model.build_model(tokenizer, seed=0)
    else:
        config = LlamaConfig(
            vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv_heads"], max_position_embeddings=positions, rms_norm_eps=1e-5,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if positions > model.config.max_position_embeddings:  # RoPE: the weights do not depend on it
        model.config.max_position_embeddings = positions
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.to(getattr(torch, spec["dtype"])).save_pretrained(spec["out"])
    tokenizer.save_pretrained(spec["out"])
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()  # counted once more when tied: it is a matmul
    return {
        "params": params,
        "matmul_params": params - embedding + (head if model.config.tie_word_embeddings else 0),
        "hidden": model.config.hidden_size,
        "layers": model.config.num_hidden_layers,
        "heads": model.config.num_attention_heads,
        "kv_heads": model.config.num_key_value_heads,
        "intermediate": model.config.intermediate_size,
        "vocab": model.config.vocab_size,
        "positions": model.config.max_position_embeddings,
    }


# --------------------------------------------------------------------------------------------------
# One run's settings, the TRL side, and our configs


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


# --------------------------------------------------------------------------------------------------
# Isolation of packed examples (a child process)


def isolation_of(trainer: Any, batches: int) -> dict[str, Any]:
    """Max |logit error| of packed examples against each example alone, on the first `batches`
    batches of the trainer's own train dataloader, with the model called three ways:

    - `compute_loss`: the batch through `trainer.compute_loss` (logits from the decoder's last hidden
      states, caught by a hook, through the LM head), i.e. exactly as training calls the model;
    - `plain`: `model(**batch)` on the model as the trainer holds it (its `config.use_cache`);
    - `use_cache`: `model(**batch, use_cache=True)`, the default of a checkpoint loaded outside a
      Trainer (config.json `use_cache: true`).
    """
    import torch

    model = trainer.model.eval()
    pad_id = trainer.processing_class.pad_token_id
    caught: list[Any] = []
    hook = model.get_decoder().register_forward_hook(lambda m, a, out: caught.append(out.last_hidden_state))
    errors = {"compute_loss": 0.0, "plain": 0.0, "use_cache": 0.0}
    examples = rows = 0
    try:
        with torch.no_grad():
            for batch in itertools.islice(trainer.get_train_dataloader(), batches):
                caught.clear()
                trainer.compute_loss(model, dict(batch))
                plain = {k: v for k, v in batch.items() if k not in ("labels", "num_real_tokens")}
                logits = {
                    "compute_loss": model.get_output_embeddings()(caught[-1]),
                    "plain": model(**plain).logits,
                    "use_cache": model(**plain, use_cache=True).logits,
                }
                ids, positions = batch["input_ids"], batch["position_ids"]
                for row in range(ids.shape[0]):
                    rows += 1
                    for start, end in example_spans(ids[row], positions[row], pad_id):
                        alone = model(input_ids=ids[row : row + 1, start:end]).logits[0]
                        for key, got in logits.items():
                            error = (got[row, start:end] - alone).abs().max().item()
                            errors[key] = max(errors[key], error)
                        examples += 1
    finally:
        hook.remove()
    return {**errors, "examples": examples, "rows": rows, "config_use_cache": bool(model.config.use_cache)}


def isolation_child(specs: dict[str, Spec], batches: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import build_trainer

    out: dict[str, Any] = {}
    for label, spec in specs.items():
        if spec.side == "trl":
            trainer = trl_trainer(spec, [])
        else:
            config = Path(spec.output_dir) / "isolation.yml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(our_config(spec, probe=False), encoding="utf-8")
            trainer = build_trainer(load_config(str(config))).trainer
        out[label] = isolation_of(trainer, batches)
    return out


# --------------------------------------------------------------------------------------------------
# Driver: subprocesses, results


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


def run_record(r: Run) -> dict[str, Any]:
    derived = ("trainable_per_s", "real_per_s", "trainable_per_cpu_s", "efficiency")
    return {**asdict(r), **{key: getattr(r, key) for key in derived}}


def install_probe(work: Path) -> Path:
    """Write the probe's plugin module and its entry-point metadata into a directory for PYTHONPATH."""
    module = PLUGIN_MODULE.format(script=str(Path(__file__).resolve()))
    entry_point = "bench_probe = bench_throughput_probe:BenchProbe"
    return install_callback_plugin(work, "bench_throughput_probe", module, "trainer-bench-probe", entry_point)


def self_command(mode: str, *paths: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), mode, *map(str, paths)]


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


def run_once(spec: Spec, work: Path, site: Path, repeat: int, threads: int) -> Run:
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


# --------------------------------------------------------------------------------------------------
# Summary and report


def median_of(runs: list[Run], key: str) -> float:
    return statistics.median(getattr(r, key) if hasattr(r, key) else r.feed[key] for r in runs)


def summarize(runs: list[Run], isolation: dict[str, Any]) -> dict[str, Any]:
    by = {label: [r for r in runs if r.label == label] for label in RUNS}
    keys = ("trainable_per_s", "real_per_s", "trainable_per_cpu_s", "efficiency", "train_runtime",
            "loop_cpu", "wall", "cpu", "train_loss")  # fmt: skip
    median = {label: {k: median_of(rs, k) for k in keys} for label, rs in by.items()}
    ratios = {}
    for top, bottom in (("d", "a"), ("d", "b"), ("c", "a")):
        pairs = zip(by[top], by[bottom], strict=True)
        per_round = [t.trainable_per_s / b.trainable_per_s for t, b in pairs]
        ratios[f"{top}/{bottom}"] = {
            "tokens_per_s": median[top]["trainable_per_s"] / median[bottom]["trainable_per_s"],
            "per_round": per_round,
            "per_round_median": statistics.median(per_round),
            "tokens_per_cpu_s": median[top]["trainable_per_cpu_s"] / median[bottom]["trainable_per_cpu_s"],
        }
    d_isolated = isolation["d"]["compute_loss"] < ISOLATION_ATOL
    targets = {
        f"d/a >= {TARGET_D_OVER_A}": ratios["d/a"]["tokens_per_s"] >= TARGET_D_OVER_A,
        f"d/b >= {TARGET_D_OVER_B} with (d) isolated": ratios["d/b"]["tokens_per_s"] >= TARGET_D_OVER_B
        and d_isolated,
        f"padding efficiency (d) >= {TARGET_EFFICIENCY}": median["d"]["efficiency"] >= TARGET_EFFICIENCY,
    }
    return {"median": median, "ratios": ratios, "targets": targets}


def print_runs(runs: list[Run]) -> None:
    print(
        f"{'run':<5} {'trainable':>9} {'real':>8} {'processed':>9} {'eff':>5} {'runtime s':>9} "
        f"{'train tok/s':>11} {'all tok/s':>9} {'loop cpu':>8} {'train tok/cpu-s':>15} {'wall s':>6} "
        f"{'load':>5} {'loss':>7}"
    )
    for r in runs:
        f = r.feed
        print(
            f"{r.label}-{r.repeat:<3} {f['trainable']:>9} {f['real']:>8} {f['processed']:>9} "
            f"{r.efficiency:>5.3f} {r.train_runtime:>9.2f} {r.trainable_per_s:>11.0f} {r.real_per_s:>9.0f} "
            f"{r.loop_cpu:>8.2f} {r.trainable_per_cpu_s:>15.0f} {r.wall:>6.1f} {r.load:>5.2f} "
            f"{r.train_loss:>7.4f}"
        )


def print_medians(runs: list[Run], summary: dict[str, Any], specs: dict[str, Spec], repeats: int) -> None:
    med = summary["median"]
    first = {label: next(r for r in runs if r.label == label) for label in RUNS}
    width, first_col = 18, 36
    title = f"median of {repeats} runs"
    print(f"\n{title:<{first_col}}" + "".join(f" | ({k}) {RUNS[k][0]:<{width - 4}}" for k in RUNS))
    print(f"{'':<{first_col}}" + "".join(f" | {'packed' if RUNS[k][1] else 'padded':<{width}}" for k in RUNS))
    print("-" * first_col + ("-+-" + "-" * width) * len(RUNS))

    def row(label: str, cell: Any) -> None:
        print(f"{label:<{first_col}}" + "".join(f" | {cell(k):>{width}}" for k in RUNS))

    unit = {k: "row" if RUNS[k][1] else "ex" for k in RUNS}
    row("micro-batch x accumulation", lambda k: f"{specs[k].micro_batch} {unit[k]} x {specs[k].grad_accum}")
    row("micro-batches (per epoch)", lambda k: f"{first[k].feed['micro_batches']:,}")
    row("examples trained", lambda k: f"{first[k].feed['examples']:,}")
    row("trainable tokens (labels != -100)", lambda k: f"{first[k].feed['trainable']:,}")
    row("all real tokens", lambda k: f"{first[k].feed['real']:,}")
    row("tokens processed (incl. padding)", lambda k: f"{first[k].feed['processed']:,}")
    row("padding efficiency (real/processed)", lambda k: f"{med[k]['efficiency']:.3f}")
    row(
        "row fill (real / rows x seq_len)",
        lambda k: (
            f"{first[k].feed['real'] / (first[k].feed['micro_batches'] * specs[k].seq_len):.3f}"
            if RUNS[k][1]
            else "-"
        ),
    )
    row("train_runtime, s", lambda k: f"{med[k]['train_runtime']:.2f}")
    row("loop CPU time, s", lambda k: f"{med[k]['loop_cpu']:.2f}")
    row("trainable tokens/s", lambda k: f"{med[k]['trainable_per_s']:,.0f}")
    row("all real tokens/s", lambda k: f"{med[k]['real_per_s']:,.0f}")
    row("trainable tokens per CPU-second", lambda k: f"{med[k]['trainable_per_cpu_s']:,.0f}")
    row("end-to-end wall / CPU, s", lambda k: f"{med[k]['wall']:.1f} / {med[k]['cpu']:.1f}")
    row("train loss", lambda k: f"{med[k]['train_loss']:.4f}")
    for k in RUNS:
        lo, hi = (f(r.trainable_per_s for r in runs if r.label == k) for f in (min, max))
        print(f"  ({k}) {RUNS[k][2]}: trainable tokens/s {lo:,.0f}..{hi:,.0f} over the runs")


def print_isolation(isolation: dict[str, Any], batches: int) -> None:
    print(
        f"\nisolation of packed examples: first {batches} batches of each trainer's own train dataloader, "
        "max |logit error| of each packed example against the example run alone"
    )

    def line(text: str, error: float) -> None:
        verdict = "isolated" if error < ISOLATION_ATOL else "NOT isolated"
        print(f"      {text:<76} {error:>9.2e}  {verdict}")

    def packed_run(title: str, r: dict[str, Any], compute_loss: str, use_cache: str, note: str) -> None:
        print(f"  {title} ({r['examples']} examples in {r['rows']} rows):")
        line(compute_loss, r["compute_loss"])
        line(f"model(**batch) as the trainer holds it (config.use_cache={r['config_use_cache']})", r["plain"])
        line(use_cache, r["use_cache"])
        print(note)

    packed_run(
        "(b) TRL packing",
        isolation["b"],
        "as TRL's compute_loss calls the model (it sets use_cache=False)",
        "model(**batch, use_cache=True) (a checkpoint's default outside a Trainer)",
        "      TRL's rows carry no attention mask, only restarting position ids. transformers finds the\n"
        "      examples from the position ids only when there is no cache object (past_key_values is None).\n"
        "      compute_loss passes use_cache=False, and transformers' Trainer sets model.config.use_cache =\n"
        "      TrainingArguments.use_cache (False) at init; with use_cache=True a DynamicCache is made, the\n"
        "      detection is skipped and each example attends to the examples before it in the row.",
    )
    packed_run(
        "(d) ours, sample_packing",
        isolation["d"],
        "as our SFTTrainer.compute_loss calls the model (num_real_tokens popped)",
        "model(**batch, use_cache=True)",
        "      the block-diagonal causal mask is explicit in the batch, so no call can lose it.",
    )


def print_report(runs, summary, specs, isolation, data, model_info, args, notes) -> None:
    print()
    print_runs(runs)
    print_medians(runs, summary, specs, args.repeats)
    print_isolation(isolation, args.isolation_batches)
    print("\nratios of median trainable tokens/s (same trainable tokens in every run):")
    for name, r in summary["ratios"].items():
        rounds = ", ".join(f"{x:.3f}" for x in r["per_round"])
        print(
            f"  {name}: {r['tokens_per_s']:.3f}   per round {rounds} (median {r['per_round_median']:.3f}); "
            f"per CPU-second {r['tokens_per_cpu_s']:.3f}"
        )
    print("\ntargets:")
    for name, passed in summary["targets"].items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    for note in notes:
        print(f"note: {note}")
    print(
        f"\ndata: {data['examples']:,} prompt/completion rows, {data['tokens']:,} tokens (BOS + prompt + "
        f"completion + EOS): median {data['median']:.0f}, mean {data['mean']:.1f}, p90 {data['p90']}, max "
        f"{data['max']}, {data['at_cap']} at sequence_len (log-normal, median {args.median_len}, sigma "
        f"{args.sigma}, seed {args.seed})"
    )
    print(
        f"model: tiny Llama from scripts/make_tiny_model.py --pad-token, {model_info['params'] / 1e6:.2f}M "
        f"params, hidden {model_info['hidden']}, {model_info['layers']} layers, {model_info['heads']} heads, "
        f"vocab {model_info['vocab']}, max_position_embeddings {model_info['positions']}"
    )
    d, a = specs["d"], specs["a"]
    print(
        f"settings: sequence_len {args.seq_len}, {args.attention}, fp32, full fine-tuning, 1 epoch, lr "
        f"{args.lr} {args.scheduler}, {args.optimizer}, seed {args.seed}, logging every {args.logging_steps} "
        f"steps, no eval, no checkpoints, {args.threads} torch thread(s); padded runs {a.micro_batch} "
        f"examples x {a.grad_accum} (~{a.micro_batch * a.grad_accum * data['mean']:.0f} real tokens per "
        f"step), packed runs {d.micro_batch} row of {args.seq_len} x {d.grad_accum} (~"
        f"{d.micro_batch * d.grad_accum * args.seq_len:.0f} tokens per step at full rows)"
    )
    print(f"machine: {os.cpu_count()} CPUs ({platform.machine()}); {versions_text()}")
    loads = [r.load for r in runs]
    print(f"1-min load average before each run: {min(loads):.2f}..{max(loads):.2f}")


def versions_text() -> str:
    found = versions()
    python = found.pop("python")
    return ", ".join(f"{k} {v}" for k, v in found.items()) + f", Python {python}"


# --------------------------------------------------------------------------------------------------
# CPU benchmark: the four runs


def build_model(work: Path, name: str, shape: dict[str, int] | None, positions: int, dtype: str) -> dict:
    spec_file, result = work / f"{name}.model.json", work / f"{name}.model.result.json"
    spec_file.write_text(
        json.dumps({"out": str(work / name), "shape": shape, "positions": positions, "dtype": dtype}),
        encoding="utf-8",
    )
    run_child(self_command("--child-model", spec_file, result), dict(os.environ), work / f"{name}.model.log")
    return json.loads(result.read_text(encoding="utf-8"))


def run_specs(args: argparse.Namespace, model: Path, train_file: Path, work: Path, mean_len: float) -> dict:
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


def check_isolation(specs: dict[str, Spec], work: Path, site: Path, args: argparse.Namespace) -> dict:
    packed = {k: Spec(**{**asdict(specs[k]), "output_dir": str(work / "isolation" / k)}) for k in ("b", "d")}
    spec_file, result = work / "isolation.spec.json", work / "isolation.result.json"
    payload = {"batches": args.isolation_batches, "specs": {k: asdict(s) for k, s in packed.items()}}
    spec_file.write_text(json.dumps(payload), encoding="utf-8")
    env = child_env(args.threads, work / "hf-datasets" / "isolation", site)
    run_child(self_command("--child-isolation", spec_file, result), env, work / "isolation.log")
    return json.loads(result.read_text(encoding="utf-8"))


def cpu_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------
# GPU benchmark: ours with sample_packing under each attention kernel


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device.lower():
            return tflops * 1e12
    return None


def window(probe: dict[str, Any], warmup_steps: int) -> tuple[float, int, int]:
    """(seconds, real tokens, sum of squared example lengths) of the optimizer steps after warmup."""
    steps, per_batch = probe["steps"], probe["per_batch"]
    if len(steps) <= warmup_steps:
        raise ValueError(f"only {len(steps)} optimizer steps, not more than the {warmup_steps} warm-up steps")
    (t0, b0), (t1, b1) = (steps[warmup_steps - 1] if warmup_steps else (0.0, 0)), steps[-1]
    batches = per_batch[b0:b1]
    return t1 - t0, sum(b[0] for b in batches), sum(b[1] for b in batches)


def gpu_kernel(kernel: str, spec: Spec, work: Path, site: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Validate, then train, one kernel; the outcome with its numbers, or why it was skipped/failed."""
    config = work / f"gpu-{kernel}.yml"
    config.write_text(our_config(spec), encoding="utf-8")
    env = child_env(args.threads, work / "hf-datasets" / kernel, site)
    checked = work / f"gpu-{kernel}.validate.log"
    code, _, _ = run_child(
        [sys.executable, "-m", "trainer.cli.validate", str(config)], env, checked, fail=False
    )
    if code != 0:  # the problems, without the "N config errors:" header and the FILE:LINE prefixes
        lines = tail(checked, 8).splitlines()
        problems = [re.sub(r"^\S+:\d+\s+", "", x.strip()) for x in lines if x.startswith("  ")]
        return {
            "kernel": kernel,
            "status": "skipped",
            "reason": " / ".join(problems) or tail(checked, 1).strip(),
        }
    log = work / f"gpu-{kernel}.log"
    code, wall, _ = run_child([sys.executable, "-m", "trainer.cli.train", str(config)], env, log, fail=False)
    if code != 0:
        return {"kernel": kernel, "status": "failed", "reason": tail(log, 3).strip().replace("\n", " / ")}
    probe = read_probe(spec.output_dir, kernel)
    shutil.rmtree(spec.output_dir, ignore_errors=True)
    seconds, tokens, squares = window(probe, args.gpu_warmup_steps)
    return {
        "kernel": kernel, "status": "ran", "seconds": seconds, "tokens": tokens, "squares": squares,
        "tokens_per_s": tokens / seconds, "device": probe["device"], "max_memory": probe["max_memory"],
        "efficiency": probe["real"] / probe["processed"], "wall": wall,
    }  # fmt: skip


def gpu_benchmark(args: argparse.Namespace, work: Path, smoke: bool) -> dict[str, Any]:
    shape, seq_len = (SMOKE_SHAPE, 128) if smoke else (GPU_SHAPE, args.gpu_seq_len)
    dtype = "float32" if smoke else "bfloat16"
    steps = args.gpu_warmup_steps + args.gpu_steps
    grad_accum = args.gpu_grad_accum
    model_info = build_model(work, "llama", shape, seq_len, dtype)
    train_file = work / "train.jsonl"
    median = args.gpu_median_len or seq_len / 4
    rows_needed = steps * grad_accum * args.gpu_micro_batch
    mean_guess = median * math.exp(args.sigma**2 / 2)
    examples = math.ceil(1.3 * rows_needed * seq_len / min(mean_guess, seq_len))
    data = write_rows(train_file, examples, seq_len, median, args.sigma, args.seed)
    site = install_probe(work)
    results = []
    for kernel in KERNELS:
        spec = Spec(
            label=kernel, side="ours", packed=True, model=str(work / "llama"), train_file=str(train_file),
            output_dir=str(work / "runs" / kernel), seq_len=seq_len, micro_batch=args.gpu_micro_batch,
            grad_accum=grad_accum, attention=kernel, lr=args.lr, seed=args.seed, optimizer=args.optimizer,
            scheduler=args.scheduler, logging_steps=args.logging_steps, bf16=not smoke, max_steps=steps,
        )  # fmt: skip
        print(f"{kernel} ...", flush=True)
        results.append(gpu_kernel(kernel, spec, work, site, args))
    print_gpu(results, model_info, data, args, smoke, seq_len)
    return {"model": model_info, "data": data, "kernels": results}


def mfu_of(
    result: dict[str, Any], model_info: dict[str, Any], peak: float | None
) -> tuple[float, float | None]:
    """(model FLOP/s, MFU): 6 * N * tokens + 6 * layers * hidden * sum(s_i^2) over the window."""
    flops = 6 * model_info["matmul_params"] * result["tokens"]
    flops += 6 * model_info["layers"] * model_info["hidden"] * result["squares"]
    rate = flops / result["seconds"]
    return rate, (rate / peak if peak else None)


def print_gpu(results, model_info, data, args, smoke, seq_len) -> None:
    print()
    device = next((r["device"] for r in results if r["status"] == "ran"), "none ran")
    peak = peak_flops(device, args.peak_tflops)
    print(f"{'kernel':<18} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'eff':>5} {'peak GiB':>8}  notes")
    for r in results:
        if r["status"] != "ran":
            print(
                f"{r['kernel']:<18} {'-':>10} {'-':>8} {'-':>6} {'-':>5} {'-':>8}  "
                f"{r['status']}: {r['reason']}"
            )
            continue
        rate, mfu = mfu_of(r, model_info, peak)
        r.update(model_flops_per_s=rate, mfu=mfu)
        shown = f"{mfu:.1%}" if mfu is not None else "n/a"
        print(
            f"{r['kernel']:<18} {r['tokens_per_s']:>10,.0f} {rate / 1e12:>8.2f} {shown:>6} "
            f"{r['efficiency']:>5.3f} {r['max_memory'] / 2**30:>8.2f}  "
            f"{r['tokens']:,} tokens in {r['seconds']:.2f} s"
        )
    m = model_info
    print(
        f"\nmodel: Llama, random weights, {m['params']:,} params ({m['matmul_params']:,} in "
        f"matmuls), hidden {m['hidden']}, {m['layers']} layers, {m['heads']} heads, "
        f"{m['kv_heads']} kv heads, "
        f"intermediate {m['intermediate']}, vocab {m['vocab']} (tied), "
        f"{'fp32 (smoke test)' if smoke else 'bf16 weights, bf16: true'}"
    )
    print(
        f"run: ours, sample_packing, sequence_len {seq_len}, micro-batch {args.gpu_micro_batch} row(s) x "
        f"accumulation {args.gpu_grad_accum}, {args.gpu_warmup_steps} warm-up + {args.gpu_steps} measured "
        f"optimizer steps, {args.optimizer}; data {data['examples']:,} rows, "
        f"median {data['median']:.0f} tokens"
    )
    print(
        "tokens/s: real tokens of the measured steps / their wall time (synchronized at each step end). "
        "MFU = (6 * N * tokens + 6 * layers * hidden * sum over examples of seq_len^2) / seconds / peak, N = "
        "parameters in matmuls (all but the input embedding; the tied LM head counted); the attention term "
        "is causal (12 * L * h * s^2 / 2) over each packed example alone, i.e. useful FLOPs: sdpa/eager with "
        "a 4D mask compute the whole row."
    )
    if peak:
        source = "--peak-tflops" if args.peak_tflops else "table"
        print(f"peak: {peak / 1e12:.0f} TFLOP/s dense bf16 for '{device}' ({source})")
    else:
        print(f"peak: unknown for '{device}': MFU not computed (pass --peak-tflops)")


# --------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="measured rounds of the four runs (default 3)")
    p.add_argument("--warmup", type=int, default=0, help="unmeasured rounds first (default 0)")
    p.add_argument("--examples", type=int, default=800, help="prompt/completion rows (default 800)")
    p.add_argument("--seq-len", type=int, default=512, help="sequence_len / max_length (default 512)")
    p.add_argument("--median-len", type=float, default=96, help="median tokens per row (default 96)")
    p.add_argument("--sigma", type=float, default=0.9, help="log-normal sigma of row lengths (default 0.9)")
    p.add_argument(
        "--micro-batch", type=int, default=8, help="examples per micro-batch, padded runs (default 8)"
    )
    p.add_argument("--grad-accum", type=int, default=1, help="accumulation of padded runs (default 1)")
    p.add_argument(
        "--packed-grad-accum", type=int, default=0,
        help="accumulation of packed runs (default: about the padded runs' real tokens per step)",
    )  # fmt: skip
    p.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", default="adamw_torch")
    p.add_argument("--scheduler", default="cosine")
    p.add_argument(
        "--isolation-batches", type=int, default=4, help="batches checked per packed run (default 4)"
    )
    p.add_argument(
        "--token-tolerance", type=int, default=8,
        help="trainable tokens the runs may differ by before the script stops (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--gpu", action="store_true", help="the GPU benchmark (1B-class Llama, bf16, every kernel)"
    )
    p.add_argument(
        "--gpu-smoke", action="store_true", help="the GPU benchmark's code path on CPU, tiny, fp32"
    )
    p.add_argument("--gpu-seq-len", type=int, default=2048)
    p.add_argument("--gpu-median-len", type=float, default=0, help="default: sequence_len / 4")
    p.add_argument("--gpu-micro-batch", type=int, default=1)
    p.add_argument("--gpu-grad-accum", type=int, default=8)
    p.add_argument("--gpu-steps", type=int, default=30, help="measured optimizer steps per kernel")
    p.add_argument("--gpu-warmup-steps", type=int, default=5, help="optimizer steps left out of the timing")
    p.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the GPU (default: table)")
    p.add_argument("--work-dir", type=Path, help="keep model, data, configs and per-run logs here")
    p.add_argument("--json", type=Path, help="also write every run and the summary as JSON")
    for mode in ("--child-trl", "--child-isolation", "--child-model"):
        p.add_argument(mode, nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gpu_smoke:
        args.gpu_steps, args.gpu_warmup_steps, args.gpu_grad_accum = 3, 1, 2
    if min(args.repeats, args.examples, args.micro_batch, args.grad_accum, args.threads) < 1:
        p.error("--repeats, --examples, --micro-batch, --grad-accum and --threads must be >= 1")
    return args


def child_main(args: argparse.Namespace) -> bool:
    """Run a child mode if one was asked for; True if it was."""
    if args.child_trl:
        spec_file, result = args.child_trl
        out = trl_child(Spec(**json.loads(Path(spec_file).read_text(encoding="utf-8"))))
    elif args.child_isolation:
        spec_file, result = args.child_isolation
        payload = json.loads(Path(spec_file).read_text(encoding="utf-8"))
        specs = {k: Spec(**v) for k, v in payload["specs"].items()}
        out = isolation_child(specs, payload["batches"])
    elif args.child_model:
        spec_file, result = args.child_model
        out = make_model(json.loads(Path(spec_file).read_text(encoding="utf-8")))
    else:
        return False
    Path(result).write_text(json.dumps(out), encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if child_main(args):
        return 0
    if importlib.util.find_spec("trl") is None:
        sys.exit("trl is not installed")
    with work_dir(args.work_dir, "trainer-throughput-") as work:
        if args.gpu or args.gpu_smoke:
            record = gpu_benchmark(args, work, smoke=args.gpu_smoke)
        else:
            record = cpu_benchmark(args, work)
        if args.json:
            write_json(args.json, args, ("child",), **record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

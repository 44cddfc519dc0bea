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

The code, by job (this file parses the command line and dispatches):

- `throughput_probe.py`: the probe, which runs inside the training processes;
- `throughput_common.py`: the four runs, one run's settings and result, the TRL script, our config,
  the probe plugin, the child-mode command;
- `throughput_data.py`: the rows and the model;
- `throughput_compare.py`: the four runs on CPU (ours against TRL, padded and packed);
- `throughput_isolation.py`: the isolation check of packed examples;
- `throughput_report.py`: medians, ratios, targets and the printed report of the four runs;
- `throughput_gpu.py`: `--gpu` and `--gpu-smoke`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

# This file is also loaded by its path, where its folder is not on sys.path (by
# tests/test_bench_throughput.py). Appended, not prepended, so the scripts here shadow no module.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from benchlib import work_dir, write_json
from throughput_common import RUNS, Spec, trl_child
from throughput_compare import cpu_benchmark
from throughput_data import make_model
from throughput_gpu import KERNELS, gpu_benchmark
from throughput_isolation import isolation_child
from throughput_probe import example_spans, feed_stats, probe_callback

__all__ = ["KERNELS", "RUNS", "Spec", "example_spans", "feed_stats", "main", "parse_args", "probe_callback"]


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

"""The report of bench/throughput.py's four runs: medians, ratios and PASS/FAIL targets
(`summarize`), and the printed tables of runs, medians, isolation, ratios, targets, data, model,
settings and machine (`print_report`).
"""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

from benchlib import versions
from throughput_common import RUNS, Run, Spec
from throughput_isolation import ISOLATION_ATOL

TARGET_D_OVER_A = 1.5
TARGET_D_OVER_B = 0.9
TARGET_EFFICIENCY = 0.95


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

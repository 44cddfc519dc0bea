"""Preprocessing speed of trainer's data pipeline against TRL's own `SFTTrainer` dataset preparation.

Both sides turn the same JSONL file into `input_ids` + `labels` with the same tokenizer (the tiny
byte-level one built by `scripts/make_tiny_model.py`), the same max length and the same number of
worker processes, and the script prints rows/s of each and the ratio **ours / TRL**.

Cases (`--case a|b|all`), on synthetic rows of varied, realistic lengths written here (seeded):

- **a**: `{"prompt", "completion"}` rows. Ours: the `prompt_completion` formatter. TRL: the
  prompt-completion dataset format (completion-only loss, TRL's default for it).
- **b**: `{"messages": [system?, user, assistant, user, assistant]}` rows. Ours: the
  `chat_template` formatter with `chat_template: chatml`. TRL: the conversational format with
  `assistant_only_loss=True`, which needs `{% generation %}` markers in the template, so TRL gets a
  ChatML template with those markers around each assistant message and its `<|im_end|>` (it renders
  the same text as ours). Skipped, with the reason, when the formatter is missing or broken.

What is timed, in a fresh subprocess per run:

- **ours**: `build_datasets(resolved, tokenizer)` (reads the JSONL itself, formats, tokenizes, fits
  to `sequence_len`, builds the `datasets.Dataset`). The config (no `dataset_prepared_path`, so no
  cache; `shuffle: false`; `too_long: truncate` and `on_bad_rows: skip`, which do what TRL does with
  long rows) is resolved by `load_config` and the tokenizer loaded by `load_tokenizer` before the clock.
- **TRL**: `datasets.load_dataset("json", ...)` and then `SFTTrainer._prepare_dataset`, the method
  `SFTTrainer.__init__` calls on the train dataset, called unbound on a stand-in object holding the
  three attributes it reads (`_tokenizer`, `completion_only_loss`, `chat_template`, computed as
  `__init__` computes them), so no model is built. `SFTConfig` is built before the clock.

Runs alternate ours, TRL, ours, TRL, ...; each run gets its own empty `HF_DATASETS_CACHE`, so no run
reuses Arrow files that another wrote. Each side's output (rows, tokens, trained tokens and a hash of
every row's `input_ids` + `labels`) is compared: on this byte-level tokenizer the two should agree
exactly; a difference is printed. CPU time (the run's process and its workers) is reported beside
wall time, because other processes on a shared machine make wall time swing.

    python bench/preprocess.py [--case a|b|all] [--rows 20000] [--repeats 3] [--num-proc 1]
                               [--seq-len 2048] [--check-rows 200] [--trl-in-memory] [--seed 0]
                               [--work-dir DIR] [--json result.json]

Without `--work-dir` everything goes into a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib import REPO, SCRIPTS, child_env, run_child, work_dir, write_json

TARGET = 1.0

# ChatML with `{% generation %}` markers for TRL's `assistant_only_loss`: the same text as the
# `chatml` built-in of plugins/formatters/chat_templates.py; the marked part (assistant content and
# its `<|im_end|>`) is what ours trains with `roles_to_train: [assistant]`, `train_on_eos: turn`.
CHATML_GENERATION = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CASES = {
    "a": "prompt/completion rows: ours prompt_completion, TRL prompt-completion (completion-only loss)",
    "b": "conversations: ours chat_template (chatml), TRL conversational format (assistant_only_loss)",
}


# --------------------------------------------------------------------------------------------------
# Synthetic data: deterministic text of varied lengths (log-normal word counts, Zipf-like words).


class TextMaker:
    """Sentences from a fixed pseudo-vocabulary; a few non-ASCII words and paragraph breaks."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        words: set[str] = set()
        while len(words) < 3000:
            length = min(14, max(1, int(rng.lognormvariate(1.9, 0.4))))
            words.add("".join(rng.choices(letters, weights=range(26, 0, -1), k=length)))
        extra = ["café", "naïve", "Straße", "über", "日本語", "данные", "→", "x²", "42", "3.14", "2024"]
        ordered = sorted(words) + extra
        rng.shuffle(ordered)
        # Zipf-Mandelbrot frequencies, short words the most frequent (roughly as in real text)
        self.words = sorted(ordered, key=lambda word: len(word) + rng.random() * 12)
        self.cum_weights = list(_accumulate(1.0 / (rank + 2.7) for rank in range(len(self.words))))

    def words_count(self, median: float, sigma: float, low: int, high: int) -> int:
        return min(high, max(low, round(self.rng.lognormvariate(math.log(median), sigma))))

    def text(self, n_words: int) -> str:
        rng = self.rng
        chosen = rng.choices(self.words, cum_weights=self.cum_weights, k=n_words)
        out: list[str] = []
        start = 0
        while start < n_words:
            size = rng.randint(4, 24)
            sentence = chosen[start : start + size]
            start += size
            sentence[0] = sentence[0].capitalize()
            end = rng.choices((".", "?", "!", ":", ";"), weights=(80, 8, 3, 5, 4))[0]
            out.append(" ".join(sentence) + end)
            if start < n_words:
                out.append("\n\n" if rng.random() < 0.12 else " ")
        return "".join(out)


def _accumulate(values: Any) -> Any:
    total = 0.0
    for value in values:
        total += value
        yield total


def write_rows(path: Path, case: str, rows: int, seed: int) -> None:
    """Write `rows` rows of `case` as JSONL (the same bytes for the same arguments)."""
    rng = random.Random(f"{seed}-{case}")
    maker = TextMaker(rng)
    systems = [maker.text(maker.words_count(18, 0.5, 4, 60)) for _ in range(12)]
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            if case == "a":
                row: dict[str, Any] = {
                    "prompt": maker.text(maker.words_count(40, 0.9, 3, 1500)) + "\n",
                    "completion": maker.text(maker.words_count(80, 0.8, 1, 1500)),
                }
            else:
                messages = [{"role": "system", "content": rng.choice(systems)}] if rng.random() < 0.5 else []
                for _turn in range(2):
                    question = maker.text(maker.words_count(20, 0.9, 2, 800))
                    answer = maker.text(maker.words_count(45, 0.8, 1, 800))
                    messages += [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                row = {"messages": messages}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------------
# One measured run, in its own process (`--child SPEC RESULT`).


@dataclass
class Spec:
    side: str  # "ours" or "trl"
    case: str  # "a" or "b"
    data: str  # the JSONL file
    model: str  # the tiny model directory (its tokenizer is used)
    config: str  # our YAML config (ours only)
    seq_len: int
    num_proc: int
    work: str  # scratch directory of this run
    trl_in_memory: bool  # TRL: load_dataset(keep_in_memory=True), so no map() writes Arrow files


def digest_rows(dataset: Any) -> dict[str, Any]:
    """Rows, tokens, trained tokens and a hash of every row's input_ids + labels (in order)."""
    digest = hashlib.sha256()
    tokens = trained = 0
    for ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True):
        tokens += len(ids)
        trained += sum(1 for label in labels if label != -100)
        digest.update(array("q", ids).tobytes() + b"|" + array("q", labels).tobytes() + b"\n")
    return {"rows_out": len(dataset), "tokens": tokens, "trained": trained, "digest": digest.hexdigest()[:16]}


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return time.perf_counter(), cpu


def child_ours(spec: Spec) -> dict[str, Any]:
    import datasets  # noqa: F401  (imported by both sides before the clock)

    from trainer.data.pipeline import build_datasets
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import load_tokenizer

    resolved = load_config(spec.config)
    tokenizer = load_tokenizer(resolved.config)
    wall0, cpu0 = _clock()
    prepared = build_datasets(resolved, tokenizer)
    wall1, cpu1 = _clock()
    report = prepared.report
    notes = f"read {report.rows_read}, truncated {report.truncated}, dropped {sum(report.dropped.values())}"
    return {"wall": wall1 - wall0, "cpu": cpu1 - cpu0, "notes": notes, **digest_rows(prepared.train)}


def child_trl(spec: Spec) -> dict[str, Any]:
    from types import SimpleNamespace

    import datasets
    from accelerate import PartialState
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    if spec.case == "b":
        tokenizer.chat_template = CHATML_GENERATION
    args = SFTConfig(
        output_dir=os.path.join(spec.work, "sft-output"),
        max_length=spec.seq_len,
        packing=False,
        dataset_num_proc=spec.num_proc,
        assistant_only_loss=spec.case == "b",
        shuffle_dataset=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
    )
    PartialState()  # exists before `_prepare_dataset` in a real SFTTrainer too (TrainingArguments makes it)
    wall0, cpu0 = _clock()
    # HF_DATASETS_CACHE is a fresh, empty directory for this run (set by the driver), so the Arrow
    # files written by load_dataset and by each map() are new: nothing is reused from another run.
    # With --trl-in-memory nothing is written at all: an in-memory dataset has no cache files, so
    # every map() of _prepare_dataset keeps its result in memory too (as ours does).
    dataset = datasets.load_dataset(
        "json", data_files=spec.data, split="train", keep_in_memory=spec.trl_in_memory
    )
    # What SFTTrainer.__init__ computes before it calls self._prepare_dataset(train_dataset, ...):
    sample = next(iter(dataset))
    if args.completion_only_loss is None:
        completion_only_loss = "prompt" in sample and "completion" in sample
    else:
        completion_only_loss = args.completion_only_loss
    if args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        chat_template = get_training_chat_template(tokenizer)
    else:
        chat_template = None
    stand_in = SimpleNamespace(
        _tokenizer=tokenizer, completion_only_loss=completion_only_loss, chat_template=chat_template
    )
    prepare = SFTTrainer._prepare_dataset
    prepared = prepare(stand_in, dataset, tokenizer, args, args.packing, None, "train")  # type: ignore[arg-type]
    wall1, cpu1 = _clock()
    notes = f"completion_only_loss={completion_only_loss}, assistant_only_loss={args.assistant_only_loss}"
    if spec.trl_in_memory:
        notes += ", in memory"
    names = ("transformers", "trl", "datasets", "tokenizers")
    found = {name: sys.modules[name].__version__ for name in names if name in sys.modules}
    result = {"wall": wall1 - wall0, "cpu": cpu1 - cpu0, "notes": notes, "versions": found}
    return {**result, **digest_rows(prepared)}


def check_trl_api() -> str:
    """'' if SFTTrainer._prepare_dataset reads only the attributes the stand-in has, else why not."""
    import inspect
    import re

    from trl import SFTTrainer

    method = getattr(SFTTrainer, "_prepare_dataset", None)
    if method is None:
        return "this trl has no SFTTrainer._prepare_dataset; update bench/preprocess.py for it"
    used = set(re.findall(r"self\.(\w+)", inspect.getsource(method)))
    unknown = used - {"_tokenizer", "completion_only_loss", "chat_template"}
    if unknown:
        return f"SFTTrainer._prepare_dataset reads self.{', self.'.join(sorted(unknown))}: update the script"
    return ""


# --------------------------------------------------------------------------------------------------
# Driver


@dataclass
class Run:
    side: str
    case: str
    repeat: int
    rows: int  # rows read
    wall: float
    cpu: float
    rows_out: int
    tokens: int
    trained: int
    digest: str
    load: float  # 1-minute load average just before the run
    notes: str
    versions: dict[str, str]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / self.cpu


class RunFailed(Exception):
    pass


def our_config(model: Path, data: Path, case: str, args: argparse.Namespace, output_dir: Path) -> str:
    if case == "a":
        dataset = "    type: prompt_completion\n    prompt_field: prompt\n    completion_field: completion\n"
    else:
        dataset = "    type: chat_template\n    chat_template: chatml\n"
    return (
        f"base_model: {json.dumps(str(model))}\n"
        f"datasets:\n  - path: {json.dumps(str(data))}\n{dataset}"
        f"sequence_len: {args.seq_len}\n"
        f"dataset_num_proc: {args.num_proc}\n"
        "shuffle: false\n"
        "too_long: truncate   # TRL truncates long rows (keep_start) ...\n"
        "on_bad_rows: skip    # ... and drops rows that truncation leaves with no trained token\n"
        f"output_dir: {json.dumps(str(output_dir))}\n"
    )


def run_env(datasets_cache: Path) -> dict[str, str]:
    """One core per process on both sides (--num-proc adds processes); the repository on PYTHONPATH;
    `datasets_cache` empty per run: no run reuses another's Arrow files."""
    env = child_env(1, datasets_cache, site=REPO)
    env.update(RAYON_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    return env


def run_once(spec: Spec, name: str, rows: int, repeat: int) -> Run:
    work = Path(spec.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec_path, result_path, log = work / "spec.json", work / "result.json", work.parent / f"{name}.log"
    spec_path.write_text(json.dumps(asdict(spec)), encoding="utf-8")
    load = os.getloadavg()[0]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path), str(result_path)]
    code, _, _ = run_child(command, run_env(work / "hf-datasets"), log, fail=False)
    if code != 0 or not result_path.is_file():
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = "\n".join(lines[-25:])
        last = next((line for line in reversed(lines) if line.strip()), f"exit status {code}")
        raise RunFailed(f"{name} failed (exit status {code}): {last.strip()}\n--- {log} (tail)\n{tail}")
    out = json.loads(result_path.read_text(encoding="utf-8"))
    shutil.rmtree(work, ignore_errors=True)  # the run's datasets cache
    return Run(
        spec.side, spec.case, repeat, rows, out["wall"], out["cpu"], out["rows_out"], out["tokens"],
        out["trained"], out["digest"], load, out["notes"], out.get("versions", {}),
    )  # fmt: skip


def chat_formatter_problem() -> str:
    """'' if the chat_template formatter can be imported, else why not."""
    if importlib.util.find_spec("plugins.formatters.chat_template") is None:
        return "plugins/formatters/chat_template.py is missing"
    code = "import plugins.formatters.chat_template as m; m.ChatTemplate"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit {done.returncode}"]
        return f"plugins/formatters/chat_template.py does not import: {lines[-1]}"
    return ""


def build_model(work: Path) -> Path:
    """The tiny Llama and its byte-level tokenizer, built by the repo's own script (deterministic)."""
    model = work / "tiny-llama"
    command = [sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--out", str(model)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=run_env(work / "hf"))
    if done.returncode != 0:
        sys.exit(f"make_tiny_model.py failed:\n{done.stdout}{done.stderr}")
    return model


def run_case(case: str, model: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Check runs, then alternating measured runs of one case; returns its record."""
    record: dict[str, Any] = {"case": case, "description": CASES[case]}
    if case == "b" and (problem := chat_formatter_problem()):
        return {**record, "skipped": problem}
    data, check_data = work / f"case-{case}.jsonl", work / f"case-{case}-check.jsonl"
    write_rows(data, case, args.rows, args.seed)
    check_rows = min(args.check_rows, args.rows)
    with data.open(encoding="utf-8") as source, check_data.open("w", encoding="utf-8") as check:
        check.writelines(line for _, line in zip(range(check_rows), source, strict=False))
    runs: list[Run] = []
    for index in range(-1 if check_rows else 0, args.repeats):  # -1: the unmeasured check run
        rows, path = (check_rows, check_data) if index < 0 else (args.rows, data)
        label = f"check, {check_rows} rows, not measured" if index < 0 else f"run {index + 1}/{args.repeats}"
        pair = []
        for side in ("ours", "trl"):
            name = f"{case}-{side}-{'check' if index < 0 else index}"
            config = work / f"{name}.yml"
            config.write_text(our_config(model, path, case, args, work / "out" / name), encoding="utf-8")
            spec = Spec(side, case, str(path), str(model), str(config), args.seq_len, args.num_proc,
                        str(work / "runs" / name), args.trl_in_memory)  # fmt: skip
            try:
                pair.append(run_once(spec, name, rows, index))
            except RunFailed as err:
                if case == "b" and side == "ours":
                    reason = str(err).splitlines()[0]
                    return {**record, "skipped": f"the chat_template formatter fails: {reason}"}
                sys.exit(str(err))
        ours, trl = pair
        print(
            f"case {case} {label}: rows/s ours {ours.rows_per_s:.0f}, TRL {trl.rows_per_s:.0f} "
            f"(ratio {ours.rows_per_s / trl.rows_per_s:.3f}); rows/CPU-s ours {ours.rows_per_cpu_s:.0f}, "
            f"TRL {trl.rows_per_cpu_s:.0f}; load {ours.load:.2f}/{trl.load:.2f}",
            flush=True,
        )
        if index >= 0:
            runs += pair
    return {**record, "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[Run]) -> dict[str, Any]:
    sides = {side: [r for r in runs if r.side == side] for side in ("ours", "trl")}
    keys = ("rows_per_s", "rows_per_cpu_s", "wall", "cpu")
    median = {s: {k: statistics.median(getattr(r, k) for r in rs) for k in keys} for s, rs in sides.items()}
    output = {}
    for side, rs in sides.items():
        first = rs[0]
        stable = all((r.rows_out, r.tokens, r.trained, r.digest) == (first.rows_out, first.tokens,
                     first.trained, first.digest) for r in rs)  # fmt: skip
        output[side] = {"rows_out": first.rows_out, "tokens": first.tokens, "trained": first.trained,
                        "digest": first.digest, "same_every_run": stable, "notes": first.notes}  # fmt: skip
    pairs = zip(sides["ours"], sides["trl"], strict=True)
    return {
        "median": median,
        "output": output,
        "identical_output": output["ours"]["digest"] == output["trl"]["digest"],
        "ratio": median["ours"]["rows_per_s"] / median["trl"]["rows_per_s"],
        "cpu_ratio": median["ours"]["rows_per_cpu_s"] / median["trl"]["rows_per_cpu_s"],
        "pair_ratios": [o.rows_per_s / t.rows_per_s for o, t in pairs],
    }


def print_case(result: dict[str, Any], args: argparse.Namespace) -> None:
    case = result["case"]
    print(f"\ncase {case}: {result['description']}")
    if "skipped" in result:
        print(f"  skipped: {result['skipped']}")
        return
    summary = result["summary"]
    med, out = summary["median"], summary["output"]
    if case == "b":
        print(
            "  TRL's template is ChatML with {% generation %} markers (assistant_only_loss needs them); "
            "ours uses the plain chatml built-in. Both render the same text."
        )
    title = f"median of {args.repeats} runs per side"
    print(f"  {title:<34} | {'ours':>12} | {'TRL':>12} | ours/TRL")
    print(f"  {'-' * 34}-+-{'-' * 12}-+-{'-' * 12}-+---------")
    for label, key, fmt in (
        ("rows/s (wall)", "rows_per_s", "{:.0f}"),
        ("rows per CPU-second", "rows_per_cpu_s", "{:.0f}"),
        ("wall seconds", "wall", "{:.2f}"),
        ("CPU seconds (incl. workers)", "cpu", "{:.2f}"),
    ):
        ours, trl = med["ours"][key], med["trl"][key]
        print(f"  {label:<34} | {fmt.format(ours):>12} | {fmt.format(trl):>12} | {ours / trl:.3f}")
    counts = (("rows out", "rows_out"), ("tokens (input_ids)", "tokens"), ("trained tokens", "trained"))
    for label, key in counts:
        ours, trl = out["ours"][key], out["trl"][key]
        print(f"  {label:<34} | {ours:>12} | {trl:>12} | {ours / trl:.3f}")
    print(f"  rows read: {args.rows} per run; ours: {out['ours']['notes']}; TRL: {out['trl']['notes']}")
    print("  per pair: " + ", ".join(f"{p:.3f}" for p in summary["pair_ratios"]))
    if summary["identical_output"]:
        print("  outputs: identical (every row's input_ids and labels, in order)")
    else:
        gap = abs(out["ours"]["tokens"] / out["trl"]["tokens"] - 1)
        warn = "  WARNING: more than 3% apart, the comparison is not like for like" if gap > 0.03 else ""
        print(f"  outputs: differ (hashes {out['ours']['digest']} vs {out['trl']['digest']}){warn}")
    for side in ("ours", "trl"):
        if not out[side]["same_every_run"]:
            print(f"  WARNING: {side} produced different outputs in different runs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("a", "b", "all"), default="all", help="default all")
    parser.add_argument("--rows", type=int, default=20000, help="rows of synthetic data (default 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per side (default 3)")
    parser.add_argument("--num-proc", type=int, default=1, help="dataset_num_proc of both sides (default 1)")
    parser.add_argument("--seq-len", type=int, default=2048, help="sequence_len / max_length (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    parser.add_argument(
        "--check-rows",
        type=int,
        default=200,
        help="rows of the unmeasured first run of each side, a warm-up that also checks that both sides "
        "work (default 200; 0: none)",
    )
    parser.add_argument(
        "--trl-in-memory",
        action="store_true",
        help="TRL side: load_dataset(keep_in_memory=True), so its map() steps write no Arrow files",
    )
    parser.add_argument("--work-dir", type=Path, help="keep the model, data, configs and logs here")
    parser.add_argument("--json", type=Path, help="also write every run and the summary as JSON")
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and (
        min(args.rows, args.repeats, args.num_proc, args.seq_len) < 1 or args.check_rows < 0
    ):
        parser.error("--rows, --repeats, --num-proc and --seq-len must be >= 1, --check-rows >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec_path, result_path = args.child
        spec = Spec(**json.loads(Path(spec_path).read_text(encoding="utf-8")))
        if spec.side == "trl" and (problem := check_trl_api()):
            sys.exit(problem)
        out = child_ours(spec) if spec.side == "ours" else child_trl(spec)
        Path(result_path).write_text(json.dumps(out), encoding="utf-8")
        return 0

    with work_dir(args.work_dir, "trainer-bench-pre-") as work:
        model = build_model(work)
        cases = ("a", "b") if args.case == "all" else (args.case,)
        results = [run_case(case, model, work, args) for case in cases]
        found: dict[str, str] = next(
            (r.versions for result in results for r in result.get("runs", []) if r.versions), {}
        )
        versions = {**found, "python": platform.python_version()}
        info: dict[str, Any] = {"cpus": os.cpu_count(), "machine": platform.machine(), "versions": versions}
        for result in results:
            print_case(result, args)
        print(
            f"\nsettings: {args.rows} rows, seq len {args.seq_len}, num proc {args.num_proc}, "
            f"seed {args.seed}, one thread per process, TRL's datasets "
            f"{'in memory' if args.trl_in_memory else 'on disk (its default)'}; "
            f"machine: {info['cpus']} CPUs ({info['machine']}); "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
        )
        loads = [r.load for result in results for r in result.get("runs", [])]
        if loads:
            print(f"1-min load average before each run: {min(loads):.2f}..{max(loads):.2f}")
        for result in results:
            if "skipped" in result:
                print(f"ratio ours/TRL (rows/s): skipped (case {result['case']}: {result['skipped']})")
            else:
                ratio = result["summary"]["ratio"]
                verdict = "meets" if ratio >= TARGET else "BELOW"
                target = f"{verdict} target {TARGET}"
                print(f"ratio ours/TRL (rows/s): {ratio:.2f} (case {result['case']}; {target})")
        if args.json:
            case_records = [
                {
                    **result,
                    "runs": [
                        {**asdict(r), "rows_per_s": r.rows_per_s, "rows_per_cpu_s": r.rows_per_cpu_s}
                        for r in result.get("runs", [])
                    ],
                }
                for result in results
            ]
            write_json(args.json, args, ("child",), info=info, cases=case_records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

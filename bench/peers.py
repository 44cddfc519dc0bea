"""trainer against its peers, Axolotl and plain TRL, on the same model, data and settings.

Every side trains the tiny Llama of `scripts/make_tiny_model.py --pad-token` for one epoch on the
same long-tailed prompt/completion rows (`throughput_data.write_rows`, median ~60 tokens, at most
512), with the fair settings below, and the script prints each round, a table per measurement with
the median, and the ratios **peer / ours** of the medians (times: above 1 means ours is faster).

Measurements, each round (rounds alternate the order of the sides: ours, Axolotl, TRL in rounds
1, 3, ...; TRL, Axolotl, ours in rounds 2, 4, ...):

- **validate a config with a typo** (`learning_rat: 0.001` beside `learning_rate`): ours
  `python -m trainer.cli.validate typo.yml`; Axolotl has no validate command, so
  `python -m axolotl.cli.preprocess typo.yml` (which loads and validates the config, then prepares
  the data). Wall time, exit status, and whether the output names `learning_rat`.
- **preprocess, cold**: ours `python -m trainer.cli.preprocess cfg.yml`, Axolotl
  `python -m axolotl.cli.preprocess axo.yml`, each into an empty `dataset_prepared_path` with an
  empty `HF_DATASETS_CACHE`. Wall time.
- **train one epoch, no packing and packing**: ours `python -m trainer.cli.train cfg.yml`, Axolotl
  `python -m axolotl.cli.train axo.yml`, plain TRL (`SFTTrainer` built by
  `throughput_common.trl_trainer`, run as `peers.py --child-trl`; `packing=True` is TRL's own BFD
  packing). The trainer's own `train_runtime` (the final `{'train_runtime': ...}` dict each prints),
  the final `train_loss`, the tokens each logs (ours and TRL: real tokens, `num_tokens`; Axolotl:
  `tokens/trainable` and `tokens/total`, the padded token slots), and the whole command's wall time.
  Every run starts cold (empty prepared-data directory and datasets cache, new output directory).

Axolotl runs from its own virtual environment with a pinned release from the package registry,
created on first use (`python3 -m venv ENV; ENV/bin/pip install torch==2.13.0;
ENV/bin/pip install axolotl==0.19.0`, ~4.5 min; torch first, so pip keeps the CPU build) and
reused while `import axolotl` there reports the pinned version. It is started as
`PATH=ENV/bin:$PATH ENV/bin/python -m axolotl.cli.<command>`: the `axolotl` launcher would start the
system `python3` through accelerate. Ours and TRL run in this interpreter's environment.

    python bench/peers.py                       # 3 rounds, 3000 rows: ~50 min on 2 CPU cores (estimate)
    python bench/peers.py --axolotl-env /tmp/axo/env --rows 200 --rounds 1   # quick look, ~4.5 min
    python bench/peers.py --skip-axolotl --rows 40 --rounds 1 --json out.json   # ours vs TRL, ~1.5 min
    python bench/peers.py --work-dir peers-work --json peers.json

The exit status is 0 when every run worked, whether or not the targets are met (they are printed
with PASS/FAIL); a run that fails stops the script with the tail of its log and a non-zero status.
Without `--work-dir` everything goes into a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Run as `python bench/peers.py` the folder is sys.path[0]; loaded by path (tests) it is not.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from benchlib import REPO, SCRIPTS, child_env, run_child, tail, versions, work_dir, write_json
from throughput_common import Spec, trl_trainer
from throughput_data import write_rows

SCRIPT = Path(__file__).resolve()

# The fair settings: the same on every side (docs/benchmarks.md, "Against Axolotl and plain TRL").
SEQ_LEN = 512
MICRO_BATCH = 8  # examples per micro-batch; with packing, packed rows of SEQ_LEN tokens
GRAD_ACCUM = 1
EPOCHS = 1
LR = 0.001
SEED = 0
OPTIMIZER = "adamw_torch"
SCHEDULER = "cosine"
ATTENTION = "sdpa"
LOGGING_STEPS = 10
DATASET_NUM_PROC = 1  # Axolotl's default is the CPU count; ours is 1
DATALOADER_WORKERS = 0  # ours: no key, TrainingArguments' default (a `trainer_args` entry would make
# `validate` import TRL to check it against SFTConfig: ~10 s instead of ~0.7 s)
ROW_MEDIAN, ROW_SIGMA, ROW_SEED = 60, 0.9, 0
FIXED_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "AXOLOTL_DO_NOT_TRACK": "1",
}
FAIR = {  # the above, for the JSON record
    "sequence_len": SEQ_LEN, "micro_batch": MICRO_BATCH, "grad_accum": GRAD_ACCUM, "epochs": EPOCHS,
    "learning_rate": LR, "seed": SEED, "optimizer": OPTIMIZER, "scheduler": SCHEDULER,
    "attention": ATTENTION, "precision": "fp32", "logging_steps": LOGGING_STEPS,
    "dataset_num_proc": DATASET_NUM_PROC, "dataloader_num_workers": DATALOADER_WORKERS, "env": FIXED_ENV,
}  # fmt: skip

TYPO_KEY = "learning_rat"
TYPO_NAMED = re.compile(r"learning_rat(?!e)")
SIDE_NAMES = {"ours": "ours", "axolotl": "Axolotl", "trl": "plain TRL"}
MEASURES = {  # measure: (title, sides that have it)
    "validate": ("validate a config with a typo", ("ours", "axolotl")),
    "preprocess": ("preprocess, cold", ("ours", "axolotl")),
    "train_unpacked": ("train one epoch, no packing", ("ours", "axolotl", "trl")),
    "train_packed": ("train one epoch, packing", ("ours", "axolotl", "trl")),
}
ROWS = {  # measure kind: (metric, label) rows of its table
    "validate": (("wall", "wall s"), ("verdict", "verdict")),
    "preprocess": (("wall", "wall s"),),
    "train": (
        ("train_runtime", "train_runtime s"),
        ("wall", "command wall s"),
        ("train_loss", "train_loss"),
        ("steps", "optimizer steps"),
        ("epoch", "epochs done"),
        ("real_tokens", "real tokens"),
        ("trainable_tokens", "trainable tokens"),
        ("token_slots", "token slots (padded)"),
        ("tokens_at_epoch", "tokens logged at epoch"),
        ("padding_efficiency", "padding efficiency"),
    ),
}
RATIOS = (  # name, measure, metric, peer
    ("typo validate wall, Axolotl / ours", "validate", "wall", "axolotl"),
    ("preprocess wall, Axolotl / ours", "preprocess", "wall", "axolotl"),
    ("train_runtime unpacked, Axolotl / ours", "train_unpacked", "train_runtime", "axolotl"),
    ("train_runtime packed, Axolotl / ours", "train_packed", "train_runtime", "axolotl"),
    ("train_runtime unpacked, TRL / ours", "train_unpacked", "train_runtime", "trl"),
    ("train_runtime packed, TRL packing / ours", "train_packed", "train_runtime", "trl"),
)
TARGETS = (  # ratio name, threshold, what it means
    ("train_runtime unpacked, Axolotl / ours", 1.05, "ours >= 5% faster than Axolotl, unpacked"),
    ("train_runtime packed, Axolotl / ours", 1.05, "ours >= 5% faster than Axolotl, packed"),
    ("train_runtime packed, TRL packing / ours", 1.05, "ours packed >= 5% faster than TRL packing"),
    ("train_runtime unpacked, TRL / ours", 0.97, "ours unpacked >= 0.97x TRL's throughput"),
)


@dataclass
class Setup:
    """What every run uses: the work directory, model, rows, and Axolotl's interpreter (or None)."""

    work: Path
    model: Path
    rows: Path
    axolotl_python: Path | None


# --- Axolotl's environment -------------------------------------------------------------------


def installed_axolotl(python: Path) -> str | None:
    """The version `import axolotl` reports in the environment of `python`, or None."""
    if not python.is_file():
        return None
    done = subprocess.run(
        [str(python), "-c", "import axolotl; print(axolotl.__version__)"],
        capture_output=True, text=True, env=axolotl_env(python, {**os.environ, **FIXED_ENV}),
    )  # fmt: skip
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines else None


def ensure_axolotl(env: Path, version: str, torch_version: str) -> Path:
    """The python of a venv at `env` with axolotl==`version`; created (or completed) if it lacks it."""
    python = env / "bin" / "python"
    if installed_axolotl(python) == version:
        print(f"Axolotl {version}: reusing {env}", flush=True)
        return python
    env.parent.mkdir(parents=True, exist_ok=True)
    log = env.parent / f"{env.name}.install.log"
    print(f"Axolotl {version}: creating {env} (~4.5 min; log {log}) ...", flush=True)
    steps = [
        ["python3", "-m", "venv", str(env)],
        [str(env / "bin" / "pip"), "install", f"torch=={torch_version}"],  # first: the CPU build
        [str(env / "bin" / "pip"), "install", f"axolotl=={version}"],
    ]
    with log.open("w", encoding="utf-8") as handle:
        for step in steps:
            handle.write(f"$ {' '.join(step)}\n")
            handle.flush()
            if subprocess.call(step, stdout=handle, stderr=subprocess.STDOUT) != 0:
                sys.exit(f"failed: {' '.join(step)}\n--- {log} (tail)\n{tail(log)}")
    found = installed_axolotl(python)
    if found != version:
        sys.exit(f"{env}: `import axolotl` reports {found!r} after installing {version}; see {log}")
    return python


def axolotl_env(python: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` for a process of Axolotl's venv: its bin first on PATH, none of this repo's paths."""
    env = dict(env)
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    return env


def side_versions(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    """`__version__` of each package in the environment of `python` (`?` if it does not import)."""
    code = "import importlib\nfor n in {!r}:\n    print(n, importlib.import_module(n).__version__)"
    done = subprocess.run(
        [str(python), "-c", code.format(names)],
        capture_output=True, text=True, env=axolotl_env(python, {**os.environ, **FIXED_ENV}),
    )  # fmt: skip
    found = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.count(" ") == 1)
    return {name: found.get(name, "?") for name in names}


# --- model, rows and configs ------------------------------------------------------------------


def make_data(work: Path, rows: int) -> dict[str, Any]:
    """The tiny Llama (`--pad-token`) in `work/model` and the rows in `work/rows.jsonl`; row stats."""
    model = work / "model"
    shutil.rmtree(model, ignore_errors=True)
    command = [sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--out", str(model), "--pad-token"]
    run_child(command, dict(os.environ), work / "logs" / "model.log")
    path = work / "rows.jsonl"
    stats = write_rows(path, rows, seq_len=SEQ_LEN, median=ROW_MEDIAN, sigma=ROW_SIGMA, seed=ROW_SEED)
    with path.open(encoding="utf-8") as handle:  # one token a character, + EOS
        stats["trainable_tokens"] = sum(len(json.loads(line)["completion"]) + 1 for line in handle)
    return stats


def q(path: Path) -> str:
    """A path as a YAML scalar."""
    return json.dumps(str(path))


def ours_config(s: Setup, packed: bool, out: Path, prepared: Path, typo: bool = False) -> str:
    lines = [
        f"base_model: {q(s.model)}",
        "datasets:",
        f"  - path: {q(s.rows)}",
        "    type: prompt_completion  # loss on the completion (+ EOS): prompt tokens masked",
        f"dataset_prepared_path: {q(prepared)}",
        f"dataset_num_proc: {DATASET_NUM_PROC}",
        f"sequence_len: {SEQ_LEN}",
        f"sample_packing: {str(packed).lower()}",
        "adapter: full",
        f"attention: {ATTENTION}",
        "bf16: false",
        f"micro_batch_size: {MICRO_BATCH}",
        f"gradient_accumulation_steps: {GRAD_ACCUM}",
        f"num_epochs: {EPOCHS}",
        f"optimizer: {OPTIMIZER}",
        f"lr_scheduler: {SCHEDULER}",
        f"learning_rate: {LR}",
        *([f"{TYPO_KEY}: {LR}"] if typo else []),
        f"seed: {SEED}",
        f"logging_steps: {LOGGING_STEPS}",
        'save_strategy: "no"',
        f"output_dir: {q(out)}",
    ]
    return "\n".join(lines) + "\n"


def axolotl_config(s: Setup, packed: bool, out: Path, prepared: Path, typo: bool = False) -> str:
    """docs/benchmarks.md's Axolotl config ("Against Axolotl 0.19.0 itself"), + dataset_num_proc."""
    lines = [
        f"base_model: {q(s.model)}",
        "datasets:",
        f"  - path: {q(s.rows)}",
        "    ds_type: json",
        "    type:",
        "      field_instruction: prompt",
        "      field_output: completion",
        '      format: "{instruction}"',
        '      no_input_format: "{instruction}"',
        f"dataset_prepared_path: {q(prepared)}",
        f"dataset_num_proc: {DATASET_NUM_PROC}",
        "val_set_size: 0",
        f"sequence_len: {SEQ_LEN}",
        f"sample_packing: {str(packed).lower()}",
        "pad_to_sequence_len: false",
        "train_on_inputs: false",
        f"micro_batch_size: {MICRO_BATCH}",
        f"gradient_accumulation_steps: {GRAD_ACCUM}",
        f"num_epochs: {EPOCHS}",
        f"optimizer: {OPTIMIZER}",
        f"lr_scheduler: {SCHEDULER}",
        f"learning_rate: {LR}",
        *([f"{TYPO_KEY}: {LR}"] if typo else []),
        "bf16: false",
        "fp16: false",
        "tf32: false",
        "sdp_attention: true",
        f"logging_steps: {LOGGING_STEPS}",
        'save_strategy: "no"',
        f"output_dir: {q(out)}",
        f"dataloader_num_workers: {DATALOADER_WORKERS}",
        f"seed: {SEED}",
    ]
    return "\n".join(lines) + "\n"


def trl_spec(s: Setup, packed: bool, out: Path) -> Spec:
    return Spec(
        label="trl", side="trl", packed=packed, model=str(s.model), train_file=str(s.rows),
        output_dir=str(out), seq_len=SEQ_LEN, micro_batch=MICRO_BATCH, grad_accum=GRAD_ACCUM,
        attention=ATTENTION, lr=LR, seed=SEED, optimizer=OPTIMIZER, scheduler=SCHEDULER,
        logging_steps=LOGGING_STEPS,
    )  # fmt: skip


def trl_child(spec_file: Path, result: Path) -> None:
    """Child: train plain TRL on the spec, save the model (as the others do), write the log history."""
    trainer = trl_trainer(Spec(**json.loads(spec_file.read_text(encoding="utf-8"))), [])
    trainer.train()
    trainer.save_model()
    result.write_text(json.dumps({"log_history": trainer.state.log_history}), encoding="utf-8")


# --- one run ----------------------------------------------------------------------------------


class Run:
    """One measured command: its directory (output, prepared data, datasets cache), log and config.
    `round_index` counts from 0; names and records count rounds from 1."""

    def __init__(self, s: Setup, round_index: int, measure: str, side: str):
        self.setup, self.side, self.measure = s, side, measure
        self.name = f"r{round_index + 1}-{measure}-{side}"
        self.dir = s.work / "runs" / self.name
        self.log = s.work / "logs" / f"{self.name}.log"
        self.out, self.prepared = self.dir / "out", self.dir / "prepared"
        shutil.rmtree(self.dir, ignore_errors=True)  # output_dir must not exist; caches start empty
        self.dir.mkdir(parents=True)
        self.record: dict[str, Any] = {"round": round_index + 1, "measure": measure, "side": side}

    def config(self, packed: bool, typo: bool = False) -> Path:
        make = ours_config if self.side == "ours" else axolotl_config
        path = self.setup.work / "configs" / f"{self.name}.yml"
        path.write_text(make(self.setup, packed, self.out, self.prepared, typo), encoding="utf-8")
        return path

    def command(self, action: str, config: Path) -> tuple[list[str], dict[str, str], Path]:
        """(command, environment, cwd) of `action` (validate, preprocess, train) on `config`."""
        env = {**child_env(1, self.dir / "hf-datasets"), **FIXED_ENV}
        if self.side == "ours":
            return [sys.executable, "-m", f"trainer.cli.{action}", str(config)], env, REPO
        python = self.setup.axolotl_python
        assert python is not None
        axolotl_action = "preprocess" if action == "validate" else action  # it has no validate
        command = [str(python), "-m", f"axolotl.cli.{axolotl_action}", str(config)]
        return command, axolotl_env(python, env), self.setup.work

    def execute(self, command: list[str], env: dict[str, str], cwd: Path, fail: bool = True) -> int:
        self.record["load_before"] = os.getloadavg()[0]
        venv = self.setup.axolotl_python if self.side == "axolotl" else None
        self.record["command"] = (f"PATH={venv.parent}:$PATH " if venv else "") + " ".join(command)
        code, wall, cpu = run_child(command, env, self.log, fail=fail, cwd=cwd)
        self.record.update(exit=code, wall=wall, cpu=cpu)
        return code

    def finish(self) -> dict[str, Any]:
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.record


def validate_typo(s: Setup, round_index: int, side: str) -> dict[str, Any]:
    run = Run(s, round_index, "validate", side)
    code = run.execute(*run.command("validate", run.config(packed=False, typo=True)), fail=False)
    named = bool(TYPO_NAMED.search(run.log.read_text(encoding="utf-8", errors="replace")))
    run.record.update(named=named, verdict=f"exit {code}, typo {'named' if named else 'not reported'}")
    return run.finish()


def preprocess(s: Setup, round_index: int, side: str) -> dict[str, Any]:
    run = Run(s, round_index, "preprocess", side)
    run.execute(*run.command("preprocess", run.config(packed=False)))
    return run.finish()


def train(s: Setup, round_index: int, side: str, packed: bool) -> dict[str, Any]:
    run = Run(s, round_index, "train_packed" if packed else "train_unpacked", side)
    history: list[dict[str, Any]] | None = None
    if side == "trl":
        spec, result = run.dir / "spec.json", run.dir / "result.json"
        spec.write_text(json.dumps(asdict(trl_spec(s, packed, run.out))), encoding="utf-8")
        env = {**child_env(1, run.dir / "hf-datasets"), **FIXED_ENV}
        run.execute([sys.executable, str(SCRIPT), "--child-trl", str(spec), str(result)], env, REPO)
        history = json.loads(result.read_text(encoding="utf-8"))["log_history"]
    else:
        run.execute(*run.command("train", run.config(packed)))
        state = run.out / "trainer_state.json"  # ours writes it: exact counts, not 4 printed digits
        if side == "ours" and state.is_file():
            history = json.loads(state.read_text(encoding="utf-8"))["log_history"]
    printed = logged_dicts(run.log.read_text(encoding="utf-8", errors="replace"))
    run.record.update(final_metrics(printed, run.name, run.log))
    run.record.update(token_counts(history if history is not None else printed))
    return run.finish()


# --- reading the trainers' logs ---------------------------------------------------------------


def logged_dicts(text: str) -> list[dict[str, Any]]:
    """Every `{'key': value, ...}` dict a trainer printed (HF Trainer logs; values may be strings)."""
    found = []
    for match in re.finditer(r"\{'[^{}]*\}", text):
        literal = re.sub(r"(?<=: )-?(nan|inf)(?=[,}])", "None", match.group(0))
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def final_metrics(printed: list[dict[str, Any]], name: str, log: Path) -> dict[str, Any]:
    """train_runtime, train_loss, steps and epoch from the last `{'train_runtime': ...}` dict printed
    (steps = runtime x steps/s: the planned steps, which a run that trained nothing reports too)."""
    final = [d for d in printed if "train_runtime" in d]
    if not final:
        sys.exit(f"{name}: no {{'train_runtime': ...}} dict in its output\n--- {log} (tail)\n{tail(log)}")
    last = final[-1]
    runtime, steps_per_s = number(last["train_runtime"]), number(last.get("train_steps_per_second"))
    steps = round(runtime * steps_per_s) if runtime and steps_per_s else None  # both printed rounded
    loss, epoch = number(last.get("train_loss")), number(last.get("epoch"))
    return {"train_runtime": runtime, "train_loss": loss, "steps": steps, "epoch": epoch}


def token_counts(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Cumulative token counts of the last training log (a dict with `loss`) that has them: ours and
    TRL log `num_tokens` (real tokens), Axolotl `tokens/trainable` and `tokens/total` (token slots,
    padding included). None where a side logs no such count."""
    keys = ("num_tokens", "tokens/trainable", "tokens/total")
    logs = [d for d in history if "loss" in d and any(k in d for k in keys)]
    logs = logs or [d for d in history if any(k in d for k in keys)]
    last = logs[-1] if logs else {}
    efficiency = [number(d["padding_efficiency"]) for d in history if "padding_efficiency" in d]
    return {
        "real_tokens": number(last.get("num_tokens")),
        "trainable_tokens": number(last.get("tokens/trainable")),
        "token_slots": number(last.get("tokens/total")),
        "tokens_at_epoch": number(last.get("epoch")),
        "padding_efficiency": efficiency[-1] if efficiency else None,
    }


# --- rounds, summary, report ------------------------------------------------------------------


def run_round(s: Setup, round_index: int, sides: list[str]) -> list[dict[str, Any]]:
    """One round of every measurement (index from 0): ours first in even ones, the peers first in odd."""
    order = sides if round_index % 2 == 0 else list(reversed(sides))
    records = []
    for measure, (_, has) in MEASURES.items():
        done = []
        for side in (x for x in order if x in has):
            if measure == "validate":
                done.append(validate_typo(s, round_index, side))
            elif measure == "preprocess":
                done.append(preprocess(s, round_index, side))
            else:
                done.append(train(s, round_index, side, packed=measure == "train_packed"))
        key = "train_runtime" if measure.startswith("train") else "wall"
        cells = ", ".join(f"{SIDE_NAMES[r['side']]} {r[key]:.2f} s" for r in done)
        extra = "".join(f"; {SIDE_NAMES[r['side']]}: {r['verdict']}" for r in done if "verdict" in r)
        print(f"round {round_index + 1} {measure} ({key}): {cells}{extra}", flush=True)
        records.extend(done)
    return records


def median_of(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    return " / ".join(sorted({str(v) for v in values}))  # text (verdicts): the distinct ones


def summarize(records: list[dict[str, Any]], sides: list[str]) -> dict[str, Any]:
    medians: dict[str, dict[str, dict[str, Any]]] = {}
    for measure, (_, has) in MEASURES.items():
        metrics = [m for m, _ in ROWS["train" if measure.startswith("train") else measure]]
        medians[measure] = {
            side: {m: median_of([r.get(m) for r in records if (r["measure"], r["side"]) == (measure, side)])
                   for m in metrics}
            for side in sides if side in has
        }  # fmt: skip
    ratios = {}
    for name, measure, metric, peer in RATIOS:
        ours = medians[measure].get("ours", {}).get(metric)
        other = medians[measure].get(peer, {}).get(metric)
        ratios[name] = other / ours if ours and other is not None else None
    targets = [
        {
            "ratio": name, "threshold": threshold, "meaning": meaning, "value": ratios[name],
            "status": "skipped" if ratios[name] is None else "PASS" if ratios[name] >= threshold else "FAIL",
        }
        for name, threshold, meaning in TARGETS
    ]  # fmt: skip
    return {"medians": medians, "ratios": ratios, "targets": targets, "notes": notes(medians)}


def notes(medians: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Where the sides did not train the same amount: different steps, or less than the epoch."""
    found = []
    for measure in ("train_unpacked", "train_packed"):
        by_side = medians[measure]
        steps = {SIDE_NAMES[side]: m["steps"] for side, m in by_side.items()}
        if len(set(steps.values())) > 1:
            listed = ", ".join(f"{side} {n}" for side, n in steps.items())
            found.append(f"{measure}: the sides took different numbers of optimizer steps ({listed})")
        for side, m in by_side.items():
            if m["epoch"] is not None and m["epoch"] < 0.999:
                found.append(f"{measure}: {SIDE_NAMES[side]} ended at epoch {m['epoch']:g}, not 1")
    return found


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if float(value).is_integer() and abs(value) >= 10:  # counts
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.2f}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:  # side and metric left-aligned, numbers right-aligned
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells))


def print_report(records: list[dict[str, Any]], summary: dict[str, Any], rounds: int, info: dict) -> None:
    print("\n=== results (medians over rounds; ratios are peer / ours of the medians) ===")
    by_run = {(r["measure"], r["side"], r["round"]): r for r in records}
    for measure, (title, _) in MEASURES.items():
        print(f"\n{title}:")
        header = ["side", "metric", *[f"round {i + 1}" for i in range(rounds)], "median"]
        rows = []
        for metric, label in ROWS["train" if measure.startswith("train") else measure]:
            for side, medians in summary["medians"][measure].items():
                cells = [by_run.get((measure, side, i + 1), {}).get(metric) for i in range(rounds)]
                if any(c is not None for c in cells):
                    rows.append([SIDE_NAMES[side], label, *map(cell, cells), cell(medians[metric])])
        print_table(header, rows)
    data = info["data"]
    print(
        f"\none epoch of the data: {data['examples']:,} rows, {data['tokens']:,} real tokens, "
        f"{data['trainable_tokens']:,} trainable (completion + EOS). Token counts are each trainer's "
        "cumulative count at its last training log (every 10 steps), not at the last step."
    )
    for note in summary["notes"]:
        print(f"note: {note}")
    print("\nratios (peer / ours; above 1: ours takes less time):")
    for name, value in summary["ratios"].items():
        print(f"  {name}: {cell(value)}")
    print("\ntargets:")
    for t in summary["targets"]:
        status = "skip" if t["status"] == "skipped" else t["status"]
        print(f"  {status:<4}  {t['ratio']} = {cell(t['value'])} (>= {t['threshold']}: {t['meaning']})")
    load = info["load"]
    print(f"\n1-minute load average: {load['before']:.2f} before, {load['after']:.2f} after")
    for side, found in info["versions"].items():
        print(f"versions, {side}: " + ", ".join(f"{k} {v}" for k, v in found.items()))


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--rows", type=int, default=3000, help="prompt/completion rows (default 3000)")
    p.add_argument("--axolotl-version", default="0.19.0", help="pinned Axolotl release (default 0.19.0)")
    p.add_argument("--torch-version", default="2.13.0", help="torch installed first into its venv")
    p.add_argument(
        "--axolotl-env", type=Path,
        help="Axolotl's venv, created if missing (default ~/.cache/trainer-bench/axolotl-VERSION)",
    )  # fmt: skip
    p.add_argument("--skip-axolotl", action="store_true", help="only ours against plain TRL")
    p.add_argument("--work-dir", type=Path, help="keep model, rows, configs and per-run logs here")
    p.add_argument("--json", type=Path, help="also write every run and the summary as JSON")
    p.add_argument("--child-trl", nargs=2, type=Path, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.rounds, args.rows) < 1:
        p.error("--rounds and --rows must be >= 1")
    if args.axolotl_env is None:
        args.axolotl_env = Path.home() / ".cache" / "trainer-bench" / f"axolotl-{args.axolotl_version}"
    args.axolotl_env = args.axolotl_env.expanduser().absolute()
    return args


def print_settings(sides: list[str], data: dict[str, Any]) -> None:
    print(
        f"sides: {', '.join(SIDE_NAMES[s] for s in sides)}; data: {data['examples']:,} rows, "
        f"{data['tokens']:,} tokens (median {data['median']:g}, max {data['max']})"
    )
    print(
        f"settings (all sides): sequence_len {SEQ_LEN}, micro-batch {MICRO_BATCH}, grad accumulation "
        f"{GRAD_ACCUM}, {EPOCHS} epoch, fp32, {ATTENTION}, {OPTIMIZER}, {SCHEDULER}, lr {LR}, seed {SEED}, "
        f"logging every {LOGGING_STEPS} steps, prompt masked, no eval, no checkpoints, dataset_num_proc "
        f"{DATASET_NUM_PROC}, dataloader_num_workers {DATALOADER_WORKERS}; "
        + " ".join(f"{k}={v}" for k, v in FIXED_ENV.items()),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_trl:
        trl_child(*args.child_trl)
        return 0
    load_before = os.getloadavg()[0]
    sides = ["ours", "trl"] if args.skip_axolotl else ["ours", "axolotl", "trl"]
    python = None
    if not args.skip_axolotl:
        python = ensure_axolotl(args.axolotl_env, args.axolotl_version, args.torch_version)
    found = {"ours / plain TRL": versions()}
    if python is not None:
        found["Axolotl"] = side_versions(python, ("axolotl", "torch", "transformers", "trl", "datasets"))
    with work_dir(args.work_dir, "trainer-peers-") as work:
        for sub in ("logs", "configs", "runs"):
            (work / sub).mkdir(exist_ok=True)
        data = make_data(work, args.rows)
        setup = Setup(work, work / "model", work / "rows.jsonl", python)
        print_settings(sides, data)
        records = [r for i in range(args.rounds) for r in run_round(setup, i, sides)]
    summary = summarize(records, sides)
    info = {"data": data, "load": {"before": load_before, "after": os.getloadavg()[0]}, "versions": found}
    print_report(records, summary, args.rounds, info)
    if args.json:
        write_json(args.json, args, ("child",), fair_settings=FAIR, **info, runs=records, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

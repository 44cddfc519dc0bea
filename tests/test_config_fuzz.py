"""Config fuzz: every shipped example config, mutated at random (seeded), through `validate`.

Each mutation (a dropped or misspelled key at any depth, a value of the wrong type, an out-of-range
number, an unknown plugin, broken YAML, malformed `key=value` overrides, ...) must end `validate` with
exit status 0, or with exit status 2 and a message on stderr: never a traceback, never another status.
Most cases run in-process through `trainer.cli.common.run` (the same code path as the command, the
memory estimate included: it reads safetensors headers and costs about a millisecond); a sample runs
as a real `python -m trainer.cli.validate` subprocess. Every failure is collected and reported at once.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import os
import random
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, examples_layout

SEED = 1234
MUTATIONS_PER_EXAMPLE = 75  # x 21 examples: ~1,600 cases
SUBPROCESS_SAMPLE = 7
EXAMPLES = sorted((REPO / "examples").glob("*.yml"))

Node = Any
Path_ = tuple[Any, ...]


@dataclass
class Case:
    """One mutated config: what was done, the file's bytes, the override arguments, the environment."""

    number: int
    example: str
    what: list[str]
    content: bytes
    overrides: list[str] = field(default_factory=list)
    offline: bool = False
    kind: str = ""

    def describe(self) -> str:
        extra = f" overrides={self.overrides!r}" if self.overrides else ""
        offline = " HF_HUB_OFFLINE=1" if self.offline else ""
        return f"#{self.number} {self.example}: {'; '.join(self.what)}{extra}{offline}"


# ---- values --------------------------------------------------------------------------------------

STRINGS = ["", " ", "abc", "lora", "1e5", "true", "null", "~", "0x10", "é✓", "a" * 5000, "[x", "a\x00b", "\t"]
INTS = [0, 1, -1, 7, 3, 2**31, 2**63, 2**64 + 1, 10**30, -(10**30), 10**400]
FLOATS = [0.5, -0.5, 0.0, -0.0, 1e-300, 1e300, 1.7e308, math.nan, math.inf, -math.inf, 2.5]
OUT_OF_RANGE = [
    -1, 0, -0.0, -1e-9, 0.999999, 10**6, 2**63, 10**40, 10**400, 1e308, 5e-324, math.nan, math.inf, -math.inf,
]  # fmt: skip
LISTS: list[Any] = [[], [1], ["a"], [None], [[]], [{}], [1, "a", None], list(range(50))]
DICTS: list[Any] = [{}, {"a": 1}, {"type": "x"}, {1: 2}, {"type": None}, {"type": ["lora"]}, {None: 1}]


def random_value(rng: random.Random, kind: str | None = None) -> tuple[str, Any]:
    kind = kind or rng.choice(["str", "int", "float", "bool", "list", "dict", "None"])
    value: Any = {
        "str": lambda: rng.choice(STRINGS),
        "int": lambda: rng.choice(INTS),
        "float": lambda: rng.choice(FLOATS),
        "bool": lambda: rng.choice([True, False]),
        "list": lambda: copy.deepcopy(rng.choice(LISTS)),
        "dict": lambda: copy.deepcopy(rng.choice(DICTS)),
        "None": lambda: None,
    }[kind]()
    return kind, value


# ---- walking the data ----------------------------------------------------------------------------


def nodes(data: Node, path: Path_ = ()) -> Iterator[tuple[Path_, Node]]:
    """Every (path, value) below the root, depth first."""
    items: Any = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield (*path, key), value
        yield from nodes(value, (*path, key))


def parent_of(data: Node, path: Path_) -> Node:
    node = data
    for part in path[:-1]:
        node = node[part]
    return node


def show(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def misspell(rng: random.Random, word: str) -> str:
    if len(word) < 2:
        return word + "x"
    i = rng.randrange(len(word) - 1)
    return rng.choice(
        [
            word[:i] + word[i + 1 :],  # drop a letter
            word[:i] + word[i + 1] + word[i] + word[i + 2 :],  # swap two
            word[:i] + "x" + word[i:],  # add one
            word.upper(),
            word + "s",
            word.replace("_", "-") if "_" in word else word + "_",
            " " + word,
        ]
    )


# ---- data mutations --------------------------------------------------------------------------------

PLUGIN_KEYS = ("adapter", "attention", "distributed")
PLUGIN_LISTS = ("callbacks", "kernels")
KNOWN_PLUGINS = ["full", "lora", "qlora", "galore", "sdpa", "eager", "ddp", "fsdp", "deepspeed", "none"]
KNOWN_PLUGINS += ["liger", "generation_eval", "alpaca", "completion", "chat_template", "sharegpt"]
NUMERIC_KEYS = [
    "val_set_size", "sequence_len", "micro_batch_size", "eval_batch_size", "gradient_accumulation_steps",
    "num_epochs", "max_steps", "learning_rate", "warmup_ratio", "warmup_steps", "weight_decay",
    "max_grad_norm", "seed", "neftune_noise_alpha", "logging_steps", "eval_steps", "save_steps",
    "save_total_limit", "dataset_num_proc", "max_train_samples", "max_eval_samples",
    "adapter.r", "adapter.alpha", "adapter.dropout", "adapter.rank", "adapter.scale",
    "adapter.update_proj_gap", "adapter.loraplus_lr_ratio", "distributed.num_processes",
    "distributed.nnodes", "distributed.node_rank",
    "distributed.master_port", "distributed.stage", "distributed.version", "distributed.bucket_cap_mb",
    "distributed.reduce_bucket_size", "datasets.0.weight", "filters.min_length", "filters.max_length",
]  # fmt: skip
TOP_KEYS = [
    "base_model", "tokenizer", "trust_remote_code", "special_tokens", "tokens", "datasets", "test_datasets",
    "filters", "shuffle", "too_long", "on_bad_rows", "sample_packing", "eval_sample_packing", "lr_scheduler",
    "optimizer", "bf16", "fp16", "eval_strategy", "save_strategy", "load_best_model_at_end", "report_to",
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "adapter", "attention", "distributed",
    "callbacks", "kernels", "trainer_args", "dataset_prepared_path", *NUMERIC_KEYS[:21],
]  # fmt: skip


def _pick(rng: random.Random, data: dict[str, Any], want: Callable[[Path_, Node], bool]) -> Path_ | None:
    found = [path for path, value in nodes(data) if want(path, value)]
    return rng.choice(found) if found else None


def drop_key(rng: random.Random, data: dict[str, Any]) -> str:
    path = _pick(rng, data, lambda p, v: isinstance(p[-1], str) or len(p) > 1)
    if path is None:
        return "nothing to drop"
    del parent_of(data, path)[path[-1]]
    return f"drop {show(path)}"


def misspell_key(rng: random.Random, data: dict[str, Any]) -> str:
    path = _pick(rng, data, lambda p, v: isinstance(p[-1], str))
    if path is None:
        return "no key"
    parent = parent_of(data, path)
    new = misspell(rng, path[-1])
    if new in parent:
        return f"misspell {show(path)} (no change)"
    parent[new] = parent.pop(path[-1])
    return f"misspell {show(path)} -> {new!r}"


def wrong_type(rng: random.Random, data: dict[str, Any]) -> str:
    if rng.random() < 0.3:  # a known key that may be absent
        key = rng.choice(TOP_KEYS)
        kind, value = random_value(rng)
        data[key] = value
        return f"{key} = {kind} {value!r:.60}"
    path = _pick(rng, data, lambda p, v: True)
    if path is None:
        return "no value"
    kind, value = random_value(rng)
    parent_of(data, path)[path[-1]] = value
    return f"{show(path)} = {kind} {value!r:.60}"


def out_of_range(rng: random.Random, data: dict[str, Any]) -> str:
    value = rng.choice(OUT_OF_RANGE)
    numeric = _pick(rng, data, lambda p, v: isinstance(v, int | float) and not isinstance(v, bool))
    if numeric is not None and rng.random() < 0.5:
        parent_of(data, numeric)[numeric[-1]] = value
        return f"{show(numeric)} = {value!r}"
    key = rng.choice(NUMERIC_KEYS)
    found = _reach(data, key)
    if found is None:
        return f"cannot reach {key}"
    found[0][found[1]] = value
    return f"{key} = {value!r}"


def unknown_plugin(rng: random.Random, data: dict[str, Any]) -> str:
    name = rng.choice(["lorra", "sdpaa", "ddpp", "ligerr", "nope", "", " ", "LoRA", "lora ", "é", "a.b"])
    name = rng.choice([name, *KNOWN_PLUGINS])  # a name of another kind is unknown here too
    where = rng.choice(["adapter", "attention", "distributed", "callbacks", "kernels", "dataset"])
    typed: Any = rng.choice([name, name, 5, None, [name], {"x": 1}])
    if where == "dataset":
        found = data.get("datasets")
        specs = [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []
        if not specs:
            return "no dataset"
        rng.choice(specs)["type"] = typed
        return f"datasets[*].type = {typed!r}"
    if where in PLUGIN_LISTS:
        block: Any = rng.choice([typed, {"type": typed}, {"type": typed, "opt": 1}])
        data[where] = rng.choice([[block], [block, block], block, ["liger", block]])
        return f"{where} = {data[where]!r}"
    data[where] = rng.choice([typed, {"type": typed}, {"type": typed, "r": 8}])
    return f"{where} = {data[where]!r}"


def unknown_key(rng: random.Random, data: dict[str, Any]) -> str:
    mappings = [p for p, v in nodes(data) if isinstance(v, dict)]
    target = rng.choice([(), *mappings])
    node = parent_of(data, (*target, None)) if target else data
    key: Any = rng.choice(["extra", "learning_rat", "rr", "typ", "1", 1, None, True, 1.5, "é", ""])
    node[key] = rng.choice([1, "x", None, [1]])
    return f"add key {key!r} under {show(target)}"


def safetensors(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


BROKEN_MODELS = {
    "empty": {},
    "bad-config": {"config.json": b"{not json"},
    "list-config": {"config.json": b"[1, 2]"},
    "zero-heads": {"config.json": b'{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 4, '
                   b'"intermediate_size": 8, "num_attention_heads": 0}'},
    "text-sizes": {"config.json": b'{"hidden_size": "x", "num_hidden_layers": [], "vocab_size": null}'},
    "short-header": {"config.json": b"{}", "model.safetensors": b"\x01\x02"},
    "huge-header": {"model.safetensors": (2**63).to_bytes(8, "little") + b"{}"},
    "bad-header": {"model.safetensors": safetensors(b"{oops")},
    "list-header": {"model.safetensors": safetensors(b"[]")},
    "odd-tensor": {"model.safetensors": safetensors(b'{"a": {"dtype": 5, "shape": "x"}}')},
    "odd-shape": {"model.safetensors": safetensors(b'{"a": {"dtype": "F32", "shape": [-1, 1e400]}}')},
    "not-utf8-header": {"model.safetensors": safetensors(b"\xff\xfe")},
    "bad-index": {"config.json": b"{}", "model.safetensors.index.json": b'{"weight_map": ["a"]}'},
    "missing-shard": {"model.safetensors.index.json": b'{"weight_map": {"a": "gone.safetensors"}}'},
    "bad-tokenizer": {"config.json": b"{}", "tokenizer_config.json": b"[]", "chat_template.json": b"{"},
}  # fmt: skip
"""Model folders that validate's memory estimate and plugin checks read (built in the work folder)."""

TRICKY = [
    "", " ", "~", "~nobody/x", "/", ".", "..", "data", "data/toy", "data/toy/*.jsonl", "data/**/*.jsonl",
    "data/*.nope", "data/[", "nope.jsonl", "a\x00b", "x" * 300, "org/name", "org/name/extra", "./rel",
    "examples/quickstart.yml", "models/tiny-llama", "models/tiny-llama/config.json", "([", "(?P<", "*",
    "{% for %}", "{{ x", "{% generation %}", "\\", "é", "https://example.com/x",
]  # fmt: skip
STRING_KEYS = [
    "base_model", "tokenizer", "output_dir", "dataset_prepared_path", "resume_from_checkpoint",
    "datasets.0.path", "datasets.0.data_files", "datasets.0.chat_template", "datasets.0.chat_template_jinja",
    "datasets.0.field_messages", "datasets.0.system_prompt", "datasets.0.eot_tokens", "test_datasets.0.path",
    "filters.drop_regex", "adapter.target_modules", "adapter.unfrozen_parameters", "adapter.modules_to_save",
    "distributed.config_file", "distributed.nvme_path", "distributed.master_addr", "distributed.wrap_layer",
    "callbacks.0.path", "tokens", "special_tokens.pad_token", "report_to", "metric_for_best_model",
    "trainer_args.optim_args", "trainer_args.dataloader_persistent_workers", "optimizer", "lr_scheduler",
]  # fmt: skip


def _reach(data: dict[str, Any], dotted_key: str) -> tuple[Any, str] | None:
    """(parent, last key) of `a.0.b` in `data`, creating mappings on the way (None: not reachable)."""
    key = dotted_key.split(".")
    node: Any = data
    for part in key[:-1]:
        index: Any = int(part) if part.isdigit() else part
        if isinstance(node, dict) and isinstance(node.get(index), str) and index in (*PLUGIN_KEYS, 0):
            node[index] = {"type": node[index]}
        if isinstance(node, dict) and not isinstance(index, int):
            node = node.setdefault(index, [{}] if part in ("datasets", "test_datasets", "callbacks") else {})
        elif isinstance(node, list) and isinstance(index, int) and index < len(node):
            if isinstance(node[index], str):
                node[index] = {"type": node[index]}
            node = node[index]
        else:
            return None
    return (node, key[-1]) if isinstance(node, dict) else None


def tricky_string(rng: random.Random, data: dict[str, Any]) -> str:
    key = rng.choice(STRING_KEYS)
    found = _reach(data, key)
    if found is None:
        return f"cannot reach {key}"
    value: Any = rng.choice([*TRICKY, *(f"models/broken/{name}" for name in BROKEN_MODELS)])
    if key in ("base_model", "tokenizer") and rng.random() < 0.6:
        value = f"models/broken/{rng.choice(list(BROKEN_MODELS))}"
    if key.endswith(("drop_regex", "eot_tokens", "unfrozen_parameters", "modules_to_save", "wrap_layer")):
        value = rng.choice([[value], [value, ""], value])
    found[0][found[1]] = value
    return f"{key} = {value!r:.80}"


def broken_model(rng: random.Random, data: dict[str, Any]) -> str:
    """A model folder the memory estimate and the plugin checks must read without crashing."""
    key = rng.choice(["base_model", "base_model", "tokenizer"])
    data[key] = f"models/broken/{rng.choice(list(BROKEN_MODELS))}"
    return f"{key} = {data[key]!r}"


DATA_MUTATIONS: list[Callable[[random.Random, dict[str, Any]], str]] = [
    drop_key, misspell_key, wrong_type, out_of_range, unknown_plugin, unknown_key, tricky_string,
    broken_model,
]  # fmt: skip


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10**6).encode("utf-8")


# ---- text mutations (broken YAML) ------------------------------------------------------------------


def broken_yaml(rng: random.Random, text: str) -> tuple[str, bytes]:
    lines = text.splitlines(keepends=True)
    body = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    i = rng.choice(body)
    line = lines[i]
    how = rng.choice(
        ["truncate", "indent", "dedent", "bracket", "tab", "duplicate", "bytes", "empty", "toplevel",
         "control", "complex_key", "merge", "alias", "tags", "deep", "documents", "bom", "quote"]
    )  # fmt: skip
    if how == "truncate":
        cut = rng.randrange(len(text))
        return f"truncate at {cut}", text[:cut].encode()
    if how in ("indent", "dedent"):
        stripped = line.lstrip(" ")
        pad = len(line) - len(stripped)
        pad = pad + rng.choice([1, 3, 5]) if how == "indent" else max(0, pad - rng.choice([1, 2]))
        lines[i] = " " * pad + stripped
        return f"{how} line {i + 1}", "".join(lines).encode()
    if how == "bracket":
        lines[i] = (
            line.rstrip("\n") + rng.choice([" [", " {", " [a, b", " {a: 1", " ]", " }", " '", ' "']) + "\n"
        )
        return f"unclosed bracket on line {i + 1}", "".join(lines).encode()
    if how == "tab":
        stripped = line.lstrip(" ")
        lines[i] = "\t" * max(1, (len(line) - len(stripped)) // 2) + stripped
        if rng.random() < 0.5:
            lines[i] = lines[i].replace(": ", ":\t", 1)
        return f"tabs on line {i + 1}", "".join(lines).encode()
    if how == "duplicate":
        lines.insert(i, line if line.endswith("\n") else line + "\n")
        return f"duplicate line {i + 1}", "".join(lines).encode()
    if how == "bytes":
        raw = "".join(lines).encode()
        at = rng.randrange(len(raw))
        bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc3", b"\x80abc", "é".encode("latin-1")])
        return f"non-UTF-8 bytes {bad!r} at byte {at}", raw[:at] + bad + raw[at:]
    if how == "empty":
        content = rng.choice(["", "\n", "   \n\n", "# only a comment\n", "---\n", "...\n", "~\n", "null\n"])
        return f"empty file {content!r}", content.encode()
    if how == "toplevel":
        content = rng.choice(["- a\n- b\n", "[1, 2]\n", "42\n", "hello\n", "true\n", "3.5\n", '"text"\n'])
        content = rng.choice([content, "- " + text.replace("\n", "\n  ")])
        return f"top-level non-mapping {content[:20]!r}", content.encode()
    if how == "control":
        char = rng.choice(["\x00", "\x01", "\x07", "\x1b", "\ufffe", "\x7f", "\u2028", "\x85"])
        lines[i] = line.rstrip("\n") + char + "\n"
        return f"control character {char!r} on line {i + 1}", "".join(lines).encode()
    if how == "complex_key":
        key = rng.choice(
            ["? [a, b]\n: 1\n", "? {a: 1}\n: 1\n", "[a]: 1\n", "{a: 1}: 2\n", "1: a\n", "null: 1\n"]
        )
        key = rng.choice([key, "true: x\n", "1.5: x\n", "? - a\n  - b\n: c\n", "2020-01-01: x\n"])
        lines.insert(rng.choice(body), key)
        return f"key {key!r}", "".join(lines).encode()
    if how == "merge":
        extra = rng.choice(
            [
                "base: &b {r: 4}\nadapter:\n  <<: *b\n  type: lora\n",
                "<<: {seed: 3}\n",
                "<<: [1, 2]\n",
                "<<: 5\n",
            ]
        )
        return f"merge key {extra!r}", (text + extra).encode()
    if how == "alias":
        extra = rng.choice(["seed: *nope\n", "tokens: &a [x, *a]\n", "a: &x 1\nb: *x\n", "seed: &s 3\n"])
        return f"alias {extra!r}", (text + extra).encode()
    if how == "tags":
        extra = rng.choice(
            ["seed: !!python/object/apply:os.getcwd []\n", "seed: !!binary aGVsbG8=\n", "seed: !custom 3\n",
             "base_model: !!binary /w==\n", "seed: !!str 3\n", "seed: !!float abc\n", "seed: !!int 3.5\n",
             "output_dir: !!timestamp 2001-12-14\n", "seed: !!set {a, b}\n", "tokens: !!omap [a: 1]\n",
             "seed: 1:30\n", "seed: 0o17\n", "seed: 1_000\n", "learning_rate: 1e400\n", "seed: .nan\n"]
        )  # fmt: skip
        drop = [j for j in range(len(lines)) if lines[j].split(":")[0].strip() == extra.split(":")[0]]
        kept = [line for j, line in enumerate(lines) if j not in drop]
        return f"tagged value {extra!r}", ("".join(kept) + extra).encode()
    if how == "deep":
        depth = rng.choice([50, 500, 5000])
        extra = rng.choice(
            [f"tokens: {'[' * depth}{']' * depth}\n", f"trainer_args: {'{a: ' * depth}1{'}' * depth}\n"]
        )
        return f"nesting {depth} deep", (text + extra).encode()
    if how == "documents":
        return "two YAML documents", (text + "---\nseed: 1\n").encode()
    if how == "bom":
        return "UTF-8 byte order mark", "\ufeff".encode() + text.encode()
    lines[i] = line.replace(":", ': "', 1)
    return f"unclosed quote on line {i + 1}", "".join(lines).encode()


# ---- overrides ---------------------------------------------------------------------------------------

OVERRIDE_VALUES = [
    "abc", "1", "-1", "0", "1e400", ".nan", ".inf", "-.inf", "[", "{", "]", "[1, 2", "{a: 1}", "null", "~",
    "", "'open", "!!python/object/apply:os.getcwd []", "&a [*a]", "*undefined", "- a", "a: b: c", "\t",
    "\x00", "é", "!!binary xx", "2020-01-01", "true", "[[[[[]]]]]", "{type: nope}", "[lora]", "{[a]: 1}",
    "99999999999999999999999", "1:30", "<<: {a: 1}", "? [a]\n: b", "%YAML 1.2\n---\n1",
]  # fmt: skip
MALFORMED_OVERRIDES = [
    "nonsense", "=5", "a..b=1", "x[=1", "[0]=1", "datasets[99].path=x", "adapter.r.x=1", "datasets.0=1",
    ".a=1", "a.=1", "a b=1", "a[-1]=1", "a[99999999999999999999]=1", "learning_rate[0]=1", "base_model.x=1",
    "datasets[0][0]=1", "trainer_args.x.y=1", "callbacks[5]=x", "tokens[0]=x", "é=1", " =1", "a=b=c",
    "adapter=", "datasets=", "datasets[0]=", "datasets[0].type=", "--", "-x=1", "--bogus", "adapter[0]=1",
    "datasets[0].path.x=1", "distributed.type=nope", "kernels[0]=liger", "callbacks[0].type=generation_eval",
]  # fmt: skip


def override_key(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def random_overrides(rng: random.Random, data: Any) -> list[str]:
    found = [
        p for p, _ in nodes(data) if all(isinstance(x, str | int) and not isinstance(x, bool) for x in p)
    ]
    out = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        choice = rng.random()
        if choice < 0.4 and found:
            out.append(f"{override_key(rng.choice(found))}={rng.choice(OVERRIDE_VALUES)}")
        elif choice < 0.7:
            out.append(f"{rng.choice(NUMERIC_KEYS).replace('.0.', '[0].')}={rng.choice(OVERRIDE_VALUES)}")
        else:
            out.append(rng.choice(MALFORMED_OVERRIDES))
    return out


# ---- the cases -----------------------------------------------------------------------------------------


ARGV_CASES = [
    ["nope.yml"], ["fuzz"], [""], ["a\x00b.yml"], ["--help"], ["--bogus", "examples/quickstart.yml"], [],
    ["/dev/null"], ["examples/quickstart.yml", "-x"], ["examples/quickstart.yml", "--", "seed=1"],
    ["examples/quickstart.yml", "="], ["examples/quickstart.yml", "seed"], ["data/toy/train.jsonl"],
    ["models/tiny-llama/model.safetensors"], ["examples/quickstart.yml", "seed=1", "seed=2"],
]  # fmt: skip
"""Command lines that are wrong before any config is read (or read something that is no config)."""


@functools.cache
def cases() -> tuple[Case, ...]:
    """The fuzz cases, made once per session."""
    return tuple(make_cases())


def make_cases() -> list[Case]:
    rng = random.Random(SEED)
    cases: list[Case] = []
    for example in EXAMPLES:
        text = example.read_text(encoding="utf-8")
        original = yaml.safe_load(text)
        for _ in range(MUTATIONS_PER_EXAMPLE):
            case = Case(len(cases), example.name, [], b"", offline=rng.random() < 0.2)
            roll = rng.random()
            if roll < 0.25:
                what, content = broken_yaml(rng, text)
                case.what, case.content, case.kind = [what], content, "yaml"
                data: Any = original
            else:
                data = copy.deepcopy(original)
                if rng.random() < 0.4:  # a local model: the memory estimate and model checks run
                    data["base_model"] = "models/tiny-llama"
                    data.pop("tokenizer", None)
                    case.what.append("base_model = tiny")
                for _ in range(rng.choice([1, 1, 1, 2, 3])):
                    case.what.append(rng.choice(DATA_MUTATIONS)(rng, data))
                case.content, case.kind = dump(data), "data"
            if rng.random() < 0.3:
                case.overrides = random_overrides(rng, data)
            cases.append(case)
    return cases


# ---- running `validate` ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: Any
    stdout: str
    stderr: str
    error: str | None = None  # the traceback of an exception that escaped `run`
    kind: str = ""  # the exception and the innermost repository frame it came from


def validate_in_process(argv: list[str]) -> Outcome:
    from trainer.cli import common, validate

    out, err = io.StringIO(), io.StringIO()
    code: Any = "did not exit"
    error, kind = None, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            common.run(validate.main, argv)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as exc:
            error = traceback.format_exc()
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(REPO))]
            frame = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
            where = (
                os.path.relpath(frame.filename, REPO)
                if frame.filename.startswith(str(REPO))
                else frame.filename
            )
            kind = f"{type(exc).__name__} at {where}:{frame.lineno} in {frame.name}"
    return Outcome(code, out.getvalue(), err.getvalue(), error, kind)


def problem_with(outcome: Outcome) -> tuple[str, str] | None:
    """(what kind of failure, its details) when an outcome breaks the contract (exit 0, or exit 2
    with a message on stderr), else None."""
    if outcome.error is not None:
        return outcome.kind, outcome.error
    if "Traceback (most recent call last)" in outcome.stderr:
        return f"traceback on stderr: {outcome.stderr.strip().splitlines()[-1][:150]}", outcome.stderr
    if outcome.code in (0, None):
        return None
    if outcome.code != 2:
        return f"exit status {outcome.code!r}", outcome.stderr[-3000:]
    if not outcome.stderr.strip():
        return "exit status 2 with nothing on stderr", outcome.stdout[-3000:]
    return None


def report(failures: list[tuple[str, str, str]], total: int) -> str:
    """Failures grouped by kind: every case that failed, and the first one's details."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for kind, case, detail in failures:
        groups.setdefault(kind, []).append((case, detail))
    lines = [f"{len(failures)} of {total} fuzzed runs broke validate, {len(groups)} kinds of failure:"]
    for kind, cases in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines += ["", f"== {kind}: {len(cases)} case(s)", *(f"  {case}" for case, _ in cases)]
        lines += ["  first one:", *("    " + line for line in cases[0][1].strip().splitlines()[-30:])]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, toy_data: Path) -> Path:
    """Laid out like the repo after the quickstart (as in tests/test_examples.py), plus fuzz/."""
    root = examples_layout(tmp_path_factory.mktemp("fuzz"), tiny_model, toy_data)
    (root / "fuzz").mkdir()
    for name, files in BROKEN_MODELS.items():
        folder = root / "models" / "broken" / name
        folder.mkdir(parents=True)
        for file, content in files.items():
            (folder / file).write_bytes(content)
    (root / "data" / "not-json.json").write_text("{", encoding="utf-8")
    return root


def write_case(root: Path, case: Case) -> str:
    name = f"fuzz/{case.number:04d}-{case.example}"
    (root / name).write_bytes(case.content)
    return name


def test_mutations_are_numerous_and_deterministic() -> None:
    made = cases()
    assert len(made) >= 1000
    assert [(c.describe(), c.content) for c in make_cases()] == [(c.describe(), c.content) for c in made]
    assert {c.kind for c in made} == {"yaml", "data"}
    assert sum(bool(c.overrides) for c in made) > len(made) // 5


def test_fuzzed_configs_exit_0_or_2_in_process(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    failures: list[tuple[str, str, str]] = []
    codes: dict[Any, int] = {}
    for case in cases():
        name = write_case(workdir, case)
        if case.offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # as test_examples: hub ids accepted
        outcome = validate_in_process([name, *case.overrides])
        codes[outcome.code] = codes.get(outcome.code, 0) + 1
        found = problem_with(outcome)
        if found is not None:
            failures.append((found[0], f"{case.describe()}  [{name}]", found[1]))
    for argv in ARGV_CASES:
        found = problem_with(validate_in_process(argv))
        if found is not None:
            failures.append((found[0], f"command line {argv!r}", found[1]))
    assert not failures, report(failures, len(cases()) + len(ARGV_CASES))
    assert codes.get(0, 0) > 50 and codes.get(2, 0) > 500, codes  # both outcomes are exercised


def test_fuzzed_configs_exit_0_or_2_as_a_command(workdir: Path) -> None:
    """A sample through a real process: its real exit status, and no traceback on stderr."""
    pool = [c for c in cases() if b"trainer_args" not in c.content]  # trl's import is slow
    rng = random.Random(SEED)
    sample = [
        next(c for c in pool if c.kind == "yaml" and c.what[0].startswith("non-UTF-8")),
        next(c for c in pool if c.kind == "yaml" and c.what[0].startswith("control character")),
        next(c for c in pool if c.overrides),
        next(c for c in pool if "base_model = tiny" in c.what and not c.overrides),
    ]
    sample += rng.sample([c for c in pool if c not in sample], SUBPROCESS_SAMPLE - len(sample))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    failures = []
    for case in sample:
        name = write_case(workdir, case)
        result = subprocess.run(
            [sys.executable, "-m", "trainer.cli.validate", name, *case.overrides],
            cwd=workdir, env={**env, **({"HF_HUB_OFFLINE": "1"} if case.offline else {})},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        found = problem_with(Outcome(result.returncode, result.stdout, result.stderr))
        if found is not None:
            failures.append((found[0], f"{case.describe()}  [{name}]", found[1]))
    assert not failures, report(failures, len(sample))


# ---- regressions: one focused test per bug the fuzz found -------------------------------------------


@pytest.fixture
def base_text(tiny_model: Path, toy_data: Path, tmp_path: Path) -> str:
    """A valid config (lines 1-5) for the regressions below to append to."""
    return (
        f"base_model: {tiny_model}\n"
        "datasets:\n"
        f"  - path: {toy_data / 'train.jsonl'}\n"
        "    type: prompt_completion\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )


def problems_of(path: Path, *overrides: str) -> list[str]:
    """The rendered problems `validate` reports for a config file (it must report some)."""
    from trainer.config.errors import ConfigErrors
    from trainer.resolve.validate import load_config

    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path), list(overrides))
    return [problem.render() for problem in caught.value.problems]


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "cfg.yml"
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_a_file_that_is_not_utf8_names_the_line_and_byte(tmp_path: Path, base_text: str) -> None:
    cfg = write(tmp_path, base_text.encode() + b"seed: caf\xe9\n")
    assert problems_of(cfg) == [
        f"{cfg}:6  <root>: not UTF-8 text: byte 0xe9 at column 10 (save the file as UTF-8)"
    ]


@pytest.mark.parametrize(("char", "shown"), [("\x00", "U+0000"), ("\x1b", "U+001B"), ("\ufffe", "U+FFFE")])
def test_a_control_character_is_a_yaml_error_with_its_line(
    tmp_path: Path, base_text: str, char: str, shown: str
) -> None:
    cfg = write(tmp_path, base_text + f"seed: 1{char}\n")
    assert problems_of(cfg) == [
        f"{cfg}:6  <root>: invalid YAML: character {shown} at column 8 is not allowed (YAML takes "
        "printable characters only)"
    ]


def test_deep_nesting_is_refused_with_its_line(tmp_path: Path, base_text: str) -> None:
    cfg = write(tmp_path, base_text + "tokens: " + "[" * 500 + "]" * 500 + "\n")
    (problem,) = problems_of(cfg)
    assert problem == f"{cfg}:6  <root>: invalid YAML: nested more than 100 levels deep"


def test_a_recursive_alias_is_refused(tmp_path: Path, base_text: str) -> None:
    cfg = write(tmp_path, base_text + "tokens: &a [x, *a]\n")
    assert problems_of(cfg) == [f"{cfg}:6  <root>: an alias refers to a collection that contains it"]


@pytest.mark.parametrize(
    ("text", "kind"), [("? [a, b]\n: 1\n", "list"), ("{a: 1}: 2\n", "mapping"), ("? - a\n: 1\n", "list")]
)
def test_a_list_or_mapping_as_a_key_is_refused(tmp_path: Path, base_text: str, text: str, kind: str) -> None:
    cfg = write(tmp_path, base_text + text)
    assert problems_of(cfg) == [f"{cfg}:6  <root>: a key must be a single value, not a {kind}"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!float abc", "cannot read 'abc' as !!float (could not convert string to float: 'abc')"),
        ("!!int 3.5", "cannot read '3.5' as !!int (invalid literal for int() with base 10: '3.5')"),
        ("!!set {a, b}", "tag '!!set' is not supported on a mapping"),
    ],
)
def test_a_value_its_tag_cannot_read_is_a_yaml_error(
    tmp_path: Path, base_text: str, value: str, message: str
) -> None:
    cfg = write(tmp_path, base_text + f"seed: {value}\n")
    assert problems_of(cfg) == [f"{cfg}:6  <root>: {message}"]


def test_merge_keys_work_as_in_safe_load(tmp_path: Path, tiny_model: Path, toy_data: Path) -> None:
    from trainer.resolve.validate import load_config

    text = (
        f"base_model: {tiny_model}\n"
        "datasets:\n"
        "  - &train\n"
        f"    path: {toy_data / 'train.jsonl'}\n"
        "    type: prompt_completion\n"
        "    completion_field: generation\n"
        "test_datasets:\n"
        "  - <<: *train\n"
        f"    path: {toy_data / 'eval.jsonl'}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    cfg = write(tmp_path, text)
    resolved = load_config(str(cfg))
    (spec,) = resolved.config.test_datasets
    assert (spec.path, spec.type) == (str(toy_data / "eval.jsonl"), "prompt_completion")
    assert resolved.test_formatters[0].plugin.options.completion_field == "generation"  # type: ignore[attr-defined]
    assert resolved.source.where(("test_datasets", 0, "path")) == f"{cfg}:9"  # the key set here
    assert resolved.source.where(("test_datasets", 0, "type")) == f"{cfg}:5"  # where it was merged from
    assert problems_of(write(tmp_path, text + "filters:\n  <<: 5\n")) == [
        f"{cfg}:12  <root>: a merge key '<<' takes a mapping or a list of mappings"
    ]


@pytest.mark.parametrize(
    ("text", "path", "key", "kind"),
    [
        ("trainer_args:\n  1: x\n", "trainer_args", "1", "a number"),
        ("trainer_args:\n  null: 1\n", "trainer_args", "null", "null (an empty key, ~ or null)"),
        ("yes: 1\n", "<root>", "true", "a boolean (YAML reads yes/no/on/off/true/false as booleans)"),
        ("filters:\n  1.5: x\n", "filters", "1.5", "a number"),
    ],
)
def test_a_key_that_is_not_text_is_named_at_its_line(
    tmp_path: Path, base_text: str, text: str, path: str, key: str, kind: str
) -> None:
    cfg = write(tmp_path, base_text + text)
    line = 6 + text.count("\n") - 1
    assert problems_of(cfg) == [
        f"{cfg}:{line}  {path}: key '{key}' is {kind}, not a name; keys are text (quote it if it is one)"
    ]


@pytest.mark.parametrize(
    "key", ["logging_steps", "eval_steps", "save_steps", "val_set_size", "learning_rate"]
)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_nan_and_inf_are_refused_once(tmp_path: Path, base_text: str, key: str, value: str) -> None:
    shown = {".inf": "inf", "-.inf": "-inf", ".nan": "nan", "1e400": "inf"}[value]
    cfg = write(tmp_path, base_text + f"{key}: {value}\n")
    assert problems_of(cfg) == [f"{cfg}:6  {key}: must be a finite number (got {shown})"]
    assert problems_of(write(tmp_path, base_text), f"adapter={{type: lora, alpha: {value}}}") == [
        f"override 'adapter={{type: lora, alpha: {value}}}'  adapter.alpha: must be a finite number "
        f"(got {shown})"
    ]


@pytest.mark.parametrize("key", ["sequence_len", "micro_batch_size", "seed", "adapter.r"])
def test_integers_beyond_64_bits_are_refused(tmp_path: Path, base_text: str, key: str) -> None:
    cfg = write(tmp_path, base_text + "adapter: lora\n")
    big = "1" + "0" * 40
    assert problems_of(cfg, f"{key}={big}") == [
        f"override '{key}={big}'  {key}: is out of range: beyond 64 bits (at most {2**63 - 1} in magnitude)"
    ]


def test_a_save_steps_ratio_over_a_denormal_eval_steps_is_no_multiple(tmp_path: Path, base_text: str) -> None:
    text = base_text + "val_set_size: 0.1\nload_best_model_at_end: true\neval_strategy: steps\n"
    text += "save_strategy: steps\neval_steps: 5e-324\nsave_steps: 0.5\n"
    cfg = write(tmp_path, text)
    assert problems_of(cfg) == [
        f"{cfg}:11  save_steps: must be a multiple of eval_steps (4.94066e-324) with load_best_model_at_end"
    ]


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"model.safetensors": b"\x01\x02"}, "model.safetensors: not a safetensors file (2 bytes)"),
        ({"model.safetensors": safetensors(b"[]")}, "the safetensors header is not a JSON object"),
        ({"model.safetensors": safetensors(b"{oops")}, "the safetensors header is not JSON ("),
        (
            {"model.safetensors": safetensors(b'{"a": {"dtype": "F32", "shape": [-1]}}')},
            "tensor 'a' in the safetensors header has no valid dtype and shape",
        ),
        (
            {"config.json": b"{}", "model.safetensors.index.json": b'{"weight_map": ["a"]}'},
            "model.safetensors.index.json: 'weight_map' is not a mapping of tensor names to shard files",
        ),
        (
            {"model.safetensors.index.json": b'{"weight_map": {"a": "gone.safetensors"}}'},
            "the shards gone.safetensors named by ",
        ),
        (
            {"config.json": BROKEN_MODELS["zero-heads"]["config.json"]},
            "config.json: num_attention_heads is 0, not a positive whole number",
        ),
        ({"config.json": b'{"hidden_size": 8, "num_hidden_layers": "x"}'}, "config.json lacks 'vocab_size'"),
        ({"config.json": b"{not json"}, "config.json is not valid JSON ("),
    ],
)
def test_memory_estimate_of_a_broken_model_folder_says_why(
    tmp_path: Path, toy_data: Path, files: dict[str, bytes], reason: str
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name, content in files.items():
        (model / name).write_bytes(content)
    cfg = write(
        tmp_path,
        f"base_model: {model}\ndatasets:\n  - path: {toy_data / 'train.jsonl'}\n    type: completion\n"
        f"output_dir: {tmp_path / 'out'}\n",
    )
    outcome = validate_in_process([str(cfg)])
    assert outcome.error is None, outcome.error
    assert outcome.code == 0, outcome.stderr
    (line,) = [line for line in outcome.stdout.splitlines() if line.startswith("memory estimate")]
    assert line.startswith("memory estimate: unavailable (") and reason in line, line


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("adapter: 5", "adapter: must be a plugin name or a mapping with 'type' (got 5)"),
        (
            "attention: [sdpa]",
            "attention: must be a plugin name or a mapping with 'type' (got a list ['sdpa'])",
        ),
        ("kernels: {type: liger}", "kernels: must be a list of kernel blocks"),
        ("kernels: [5]", "kernels[0]: must be a plugin name or a mapping with 'type' (got 5)"),
        ("distributed: {type: 3}", "distributed.type: must be a plugin name (got 3)"),
        (
            "callbacks: [{type: generation_eval, path: x, 1: x}]",
            "callbacks[0]: key '1' is a number, not a name; keys are text (quote it if it is one)",
        ),
    ],
)
def test_a_plugin_block_of_the_wrong_type_gets_one_clear_message(
    tmp_path: Path, base_text: str, block: str, message: str
) -> None:
    cfg = write(tmp_path, base_text + block + "\n")
    assert problems_of(cfg) == [f"{cfg}:6  {message}"]


def test_a_bad_override_value_is_reported_at_its_key(tmp_path: Path, base_text: str) -> None:
    cfg = write(tmp_path, base_text)
    assert problems_of(cfg, "seed=[", "tokens=&a [*a]") == [
        "override 'seed=['  seed: cannot read the value: invalid YAML: expected the node content, but found "
        "'<stream end>'",
        "override 'tokens=&a [*a]'  tokens: cannot read the value: an alias refers to a collection that "
        "contains it",
    ]


def test_unprintable_characters_are_escaped_in_messages(tmp_path: Path, base_text: str) -> None:
    cfg = write(tmp_path, base_text + 'tokenizer: "./a\\0b"\n')
    assert problems_of(cfg, "seed=1\n2") == [
        f"{cfg}:6  tokenizer: tokenizer './a\\x00b' does not exist",
        "override 'seed=1\\n2'  seed: input should be a valid integer, unable to parse string as an integer "
        "(got '1 2')",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read a\x00b.json: embedded null byte"),
        ("[1, 2]", "ds.json must hold a JSON object (DeepSpeed's config), not a list"),
        ("{", "ds.json is not valid JSON: Expecting property name enclosed in double quotes"),
    ],
)
def test_deepspeed_config_file_problems_say_what_is_wrong(
    tmp_path: Path, content: str | None, message: str
) -> None:
    from plugins.distributed.deepspeed import _config_file_problem

    path = str(tmp_path / "ds.json") if content is not None else "a\x00b.json"
    if content is not None:
        Path(path).write_text(content, encoding="utf-8")
    problem = _config_file_problem(path)
    assert problem is not None and message in problem, problem


def test_a_config_path_open_refuses_is_a_config_error() -> None:
    from trainer.config.errors import ConfigErrors
    from trainer.resolve.validate import load_config

    with pytest.raises(ConfigErrors, match="cannot read config: embedded null byte"):
        load_config("a\x00b.yml")

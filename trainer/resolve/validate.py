"""Turn a YAML file (+ overrides) into a `Resolved` run description, or every problem at once.

Order: YAML with lines -> overrides -> core keys (TrainConfig) -> each plugin block against its
plugin's Options -> trainer_args against SFTConfig -> cross-key rules -> each plugin's own checks ->
the machine checks (`Problem.machine`: this machine's hardware and installed packages, which
`skip_machine_checks` sets aside as `Resolved.skipped`). Nothing here loads a model or a dataset, and
torch is imported only when `trainer_args` is used or a machine check needs it (trainer.resolve.precision).
A file that fails and looks like an Axolotl config gets the command that converts it first.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import math
import os
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from trainer.api import Distributed, Plugin
from trainer.api.resolved import Chosen, Resolved
from trainer.config.axolotl_signs import convert_hint
from trainer.config.errors import ConfigErrors, Path, Problem, did_you_mean
from trainer.config.loading import override_problems, quantization_problems
from trainer.config.optimizers import OPTIMIZERS as OPTIMIZER_TABLE
from trainer.config.overrides import apply_overrides
from trainer.config.paths import looks_local
from trainer.config.schema import (
    LIST_PLUGIN_FIELDS,
    PLUGIN_FIELDS,
    RENAMED,
    DatasetSpec,
    Filters,
    SpecialTokens,
    TrainConfig,
)
from trainer.config.yaml_lines import SourceMap, YamlSyntaxError, load_yaml
from trainer.resolve.precision import Machine, check_processes, check_start
from trainer.resolve.qat import qat_machine_problems, qat_problems
from trainer.resolve.registry import PluginError, Registry, default_registry

LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".arrow")
DATASET_LISTS = ("datasets", "test_datasets")

# SFTConfig fields that have a first-class key of their own.
OWNED_BY_TOP_LEVEL = {
    "output_dir": "output_dir", "per_device_train_batch_size": "micro_batch_size",
    "per_device_eval_batch_size": "eval_batch_size", "learning_rate": "learning_rate",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "num_train_epochs": "num_epochs",
    "max_steps": "max_steps", "lr_scheduler_type": "lr_scheduler", "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "optim": "optimizer",
    "seed": "seed", "bf16": "bf16", "fp16": "fp16", "tf32": "tf32",
    "gradient_checkpointing": "gradient_checkpointing", "logging_steps": "logging_steps",
    "activation_checkpointing": "gradient_checkpointing",
    "eval_strategy": "eval_strategy", "eval_steps": "eval_steps", "save_strategy": "save_strategy",
    "save_steps": "save_steps", "save_total_limit": "save_total_limit",
    "load_best_model_at_end": "load_best_model_at_end", "report_to": "report_to",
    "metric_for_best_model": "metric_for_best_model", "max_length": "sequence_len",
    "resume_from_checkpoint": "resume", "run_name": "run_name", "trust_remote_code": "trust_remote_code",
    "dataset_num_proc": "dataset_num_proc", "shuffle_dataset": "shuffle",
    "neftune_noise_alpha": "neftune_noise_alpha",
}  # fmt: skip


def optimizer_requirements(name: str) -> list[tuple[str, str]]:
    """(importable module, how to install it) for each package transformers needs for `name`."""
    return list(OPTIMIZER_TABLE[name].requires)


def _missing_optimizer_packages(name: str) -> list[str]:
    missing = []
    for module, how in optimizer_requirements(name):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(f"'{name}' needs the '{module}' package, which is not installed: {how}")
    return missing


def load_config(
    path: str,
    overrides: list[str] | None = None,
    registry: Registry | None = None,
    *,
    skip_machine_checks: bool = False,
    machine: Machine | None = None,
) -> Resolved:
    """Validate a config file; raises ConfigErrors listing every problem found. With
    `skip_machine_checks` the problems of this machine (not of the config) are not errors: they are
    returned in `Resolved.skipped`. `machine` describes the machine (default: this one, probed)."""
    registry = registry or default_registry()
    try:
        data, source = load_yaml(path)
    except YamlSyntaxError as err:
        where = f"{err.file}:{err.line}" if err.line > 0 else err.file
        raise ConfigErrors([Problem((), err.message, where)]) from None
    except OSError as err:
        raise ConfigErrors([Problem((), f"cannot read config: {err.strerror}", path)]) from None
    except ValueError as err:  # a path open() refuses, e.g. with a NUL character
        raise ConfigErrors([Problem((), f"cannot read config: {err}", repr(path))]) from None
    return resolve(
        data, source, overrides or [], registry, skip_machine_checks=skip_machine_checks, machine=machine
    )


def resolve(
    data: Any,
    source: SourceMap,
    overrides: list[str],
    registry: Registry,
    *,
    skip_machine_checks: bool = False,
    machine: Machine | None = None,
) -> Resolved:
    """Validate already-parsed YAML data (see load_config)."""
    if not isinstance(data, dict):
        raise ConfigErrors([Problem((), "the config must be a mapping of keys", source.file)])
    hint = convert_hint(data, TrainConfig.model_fields, source.file)  # the file as written
    problems, source.overrides = apply_overrides(data, overrides)
    bad_keys, bad_numbers = _key_problems(data, source), _number_problems(data)
    problems += bad_keys + bad_numbers
    core: list[Problem] = []
    config = _validate_core(data, core)
    problems += _check_paths(data)  # on the raw data, so a typo elsewhere does not hide these
    chosen = _choose_plugins(data, registry, problems)
    if "trainer_args" in data and isinstance(data["trainer_args"], dict):
        problems += _check_trainer_args(data["trainer_args"], chosen.get("method"))
    if bad_keys or bad_numbers:  # the rules below assume text keys and finite numbers
        config = None
    if config is not None:
        config = _fill_defaults(config)
        config.bind_plugins(
            {
                key: [c.plugin for c in item if c]
                if isinstance(item, list)
                else (item.plugin if item else None)
                for key, item in chosen.items()
            }
        )
        problems += _cross_checks(config)
        problems += _packing_checks(config, chosen.get("attention"))
        problems += _method_checks(config, chosen)
        problems += _reward_checks(chosen, registry)
        problems += _metric_checks(chosen, registry)
        problems += _eval_checks(chosen)
        problems += qat_problems(config)
        every = _every_chosen(chosen)
        for one in every:
            problems += [_plugin_problem(one.path, found) for found in one.plugin.check(config)]
        distributed = chosen.get("distributed")
        problems += machine_problems(config, every, distributed.plugin if distributed else None, machine)
    problems += [p for p in core if not _said_better(p, problems)]
    # one message for a nan or inf: "must be a finite number", not also "should be greater than 0"
    numbers = {p.path for p in bad_numbers}
    problems = [p for p in problems if p.path not in numbers or any(p is q for q in bad_numbers)]
    # one message per key: where the config itself is wrong, not also what this machine lacks for it
    wrong_keys = {p.path for p in problems if not p.machine}
    problems = [p for p in problems if not (p.machine and p.path in wrong_keys)]
    skipped = [p for p in problems if p.machine] if skip_machine_checks else []
    problems = [p for p in problems if not any(p is q for q in skipped)]
    for problem in [*problems, *skipped]:
        problem.where = problem.where or source.where(problem.path)
    skipped.sort(key=lambda p: _line_of(p))
    if problems:
        problems.sort(key=lambda p: _line_of(p))
        raise ConfigErrors(problems, header=[hint] if hint else [])
    assert config is not None
    formatters, test_formatters = chosen.pop("formatters"), chosen.pop("test_formatters")
    return Resolved(
        config=config,
        source=source,
        chosen=chosen,
        formatters=formatters,
        test_formatters=test_formatters,
        skipped=skipped,
    )


def _every_chosen(chosen: dict[str, Any]) -> list[Chosen[Any]]:
    """Every plugin that resolved, in the order of `chosen` (lists flattened)."""
    out: list[Chosen[Any]] = []
    for item in chosen.values():
        out += [one for one in (item if isinstance(item, list) else [item]) if one is not None]
    return out


def _plugin_problem(path: Path, found: str | tuple[str, str], machine: bool = False) -> Problem:
    """A plugin's problem (a message, or (option, message)) at its block's path."""
    if isinstance(found, tuple):
        return Problem((*path, found[0]), found[1], machine=machine)
    return Problem(path, found, machine=machine)


def machine_problems(
    config: TrainConfig,
    plugins: list[Chosen[Any]],
    distributed: Distributed[Any] | None,
    machine: Machine | None = None,
) -> list[Problem]:
    """What this machine lacks for `config` (each a `Problem.machine`): precision flags and
    optimizers its hardware cannot run, packages the optimizer or a plugin needs, more processes
    than GPUs, and every plugin's `check_machine()`. The same list at validate time and when a run
    starts (trainer.runtime.run.check_machine)."""
    machine = machine or Machine()
    problems = check_start(config, machine)
    problems += [
        Problem(("optimizer",), message, machine=True)
        for message in _missing_optimizer_packages(config.optimizer)
    ]
    if distributed is not None:
        problems += check_processes(processes_per_node(distributed), machine)
    problems += qat_machine_problems(config, machine)
    for one in plugins:
        for found in [*one.plugin.missing_requirements(), *one.plugin.check_machine(config)]:
            problems.append(_plugin_problem(one.path, found, machine=True))
    return problems


def processes_per_node(distributed: Distributed[Any]) -> int:
    """Processes on this machine: the launcher's (LOCAL_WORLD_SIZE under torchrun or accelerate
    launch, which set WORLD_SIZE), else the ones the backend starts."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return distributed.processes_per_node()


def _said_better(core: Problem, others: list[Problem]) -> bool:
    """A TrainConfig complaint about a plugin block itself (`adapter: 5`: "input should be a valid
    string", from one member of `str | dict`) when the plugin checks said what is wrong there."""
    path = core.path
    if not path or path[0] not in {*PLUGIN_FIELDS, *LIST_PLUGIN_FIELDS}:
        return False
    if len(path) > (1 if path[0] in PLUGIN_FIELDS else 2):
        return False
    return any(other.path[: len(path)] == path for other in others)


def _line_of(problem: Problem) -> tuple[int, str]:
    match = re.search(r":(\d+)$", problem.where)
    return (int(match.group(1)) if match else 10**9, problem.render())


# ---- keys and numbers anywhere --------------------------------------------------------------


def _mappings(data: Any, path: Path = ()) -> Any:
    """(path, mapping) for every mapping in the data, depth first (trainer_args' contents are
    SFTConfig's to judge)."""
    if isinstance(data, dict):
        yield path, data
        if path == ("trainer_args",):
            return
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return
    for key, value in items:
        yield from _mappings(value, (*path, key))


def _key_problems(data: dict[str, Any], source: SourceMap) -> list[Problem]:
    """A key that YAML read as something other than text (`1:`, `null:`, `yes:`) names nothing."""
    problems = []
    for path, mapping in _mappings(data):
        for key in mapping:
            if not isinstance(key, str):
                problems.append(Problem(path, _key_message(key), source.where((*path, key))))
    return problems


def _key_message(key: Any) -> str:
    shown = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
    if isinstance(key, bool):
        kind = "a boolean (YAML reads yes/no/on/off/true/false as booleans)"
    elif isinstance(key, int | float):
        kind = "a number"
    elif key is None:
        kind = "null (an empty key, ~ or null)"
    else:
        kind = f"a {type(key).__name__}"
    return f"key '{shown}' is {kind}, not a name; keys are text (quote it if it is one)"


LARGEST_INT = 2**63 - 1


def _number_problems(data: Any, path: Path = ()) -> list[Problem]:
    """nan and inf are no setting's value (a ratio, a count, a rate, ...), and no count, size or seed
    is beyond 64 bits (torch, numpy and the memory estimate's arithmetic could not hold it)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [Problem(path, f"must be a finite number (got {data})")]
    if isinstance(data, int) and not isinstance(data, bool) and abs(data) > LARGEST_INT:
        return [Problem(path, f"is out of range: beyond 64 bits (at most {LARGEST_INT} in magnitude)")]
    if path == ("trainer_args",):
        return []
    items: Any = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    return [problem for key, value in items for problem in _number_problems(value, (*path, key))]


def _is_key_error(error: Any) -> bool:
    """pydantic's complaint about a key that is not text (reported by _key_problems instead)."""
    return error["type"] == "invalid_key" or (
        error["loc"][-1:] == ("[key]",) and not isinstance(error.get("input"), str)
    )


# ---- core keys -------------------------------------------------------------------------------


def _validate_core(data: dict[str, Any], problems: list[Problem]) -> TrainConfig | None:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        seen: dict[Path, Problem] = {}
        for error in err.errors():
            if _is_key_error(error):
                continue
            path = _trim_loc(data, error["loc"], error["type"])
            if path in seen:
                if error["type"] == "literal_error" and len(error["loc"]) > len(path):
                    # `bool | Literal["auto"]`: the union's other member says which words it takes too
                    problem = seen[path]
                    allowed = error.get("ctx", {}).get("expected", "")
                    problem.message = problem.message.replace(" (got ", f" or {allowed} (got ", 1)
                continue
            seen[path] = Problem(path, _message(error, path, TrainConfig))
            problems.append(seen[path])
        return None


def _trim_loc(data: Any, loc: tuple[Any, ...], kind: str) -> Path:
    """Cut pydantic's union-member tags out of a location: keep the part that exists in data."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        elif last and kind == "missing":
            path.append(part)
            break
        else:
            break
        path.append(part)
    return tuple(path)


def _message(error: Any, path: Path, model: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        if len(path) == 1 and path[0] in RENAMED:
            value = error.get("input")
            shown = value if isinstance(value, str | int | float) and not isinstance(value, bool) else "..."
            if path[0] == "rl" and value == "ipo":
                shown = "{type: dpo, loss_type: ipo}"
            return (
                f"unknown key '{path[0]}': here it is {RENAMED[str(path[0])].replace('{value}', str(shown))}"
            )
        fields = _fields_at(model, path[:-1])
        return f"unknown key '{path[-1]}'{did_you_mean(str(path[-1]), fields)}"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        given = error.get("input")
        choices = re.findall(r"'([^']*)'", allowed)
        return f"unknown value {_short(given)}{did_you_mean(str(given), choices)}; expected one of {allowed}"
    given = error.get("input")
    shown = f" (got {_short(given)})" if not isinstance(given, dict | list) else ""
    return f"{error['msg'][0].lower()}{error['msg'][1:]}{shown}"


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def _fields_at(model: type[BaseModel], path: Path) -> list[str]:
    """Field names of the pydantic model found at `path` (for did-you-mean)."""
    if path and path[0] in DATASET_LISTS:
        return list(DatasetSpec.model_fields)
    if path and path[0] == "filters":
        return list(Filters.model_fields)
    if path and path[0] == "special_tokens":
        return list(SpecialTokens.model_fields)
    return list(model.model_fields)


# ---- plugins ---------------------------------------------------------------------------------


def _choose_plugins(data: dict[str, Any], registry: Registry, problems: list[Problem]) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    for key, kind in PLUGIN_FIELDS.items():
        block = data.get(key, TrainConfig.model_fields[key].default)
        chosen[key] = _choose(registry, kind, (key,), block, problems)
    for key, kind in LIST_PLUGIN_FIELDS.items():
        blocks = data.get(key) or []
        if not isinstance(blocks, list):
            problems.append(Problem((key,), f"must be a list of {kind.rstrip('s')} blocks"))
            blocks = []
        chosen[key] = [_choose(registry, kind, (key, i), block, problems) for i, block in enumerate(blocks)]
    for key, target in (("datasets", "formatters"), ("test_datasets", "test_formatters")):
        specs = data.get(key) or []
        chosen[target] = [
            _choose(registry, "formatters", (key, i), _formatter_block(spec), problems)
            for i, spec in enumerate(specs if isinstance(specs, list) else [])
            if isinstance(spec, dict) and "type" in spec
        ]
    return chosen  # entries may be None where a problem was recorded


def plugin_for_block(kind: str, block: Any, registry: Registry | None = None) -> Plugin[Any] | None:
    """The plugin a config block chooses (`lora` or `{type: lora, ...}`, e.g. from a finished run's
    config.resolved.yml), its options validated; None when it does not resolve."""
    problems: list[Problem] = []
    chosen = _choose(registry or default_registry(), kind, (), block, problems)
    return chosen.plugin if chosen is not None and not problems else None


def _formatter_block(spec: dict[str, Any]) -> dict[str, Any]:
    """A dataset entry's formatter block: its `type` and the keys that are not dataset keys."""
    return {k: v for k, v in spec.items() if k == "type" or k not in DatasetSpec.model_fields}


def _choose(registry: Registry, kind: str, path: Path, block: Any, problems: list[Problem]) -> Chosen | None:
    if isinstance(block, str):
        block = {"type": block}
    if not isinstance(block, dict):
        given = f"a list {block!r:.60}" if isinstance(block, list) else repr(block)
        problems.append(Problem(path, f"must be a plugin name or a mapping with 'type' (got {given})"))
        return None
    name = block.get("type")
    if "type" not in block:
        problems.append(Problem((*path, "type"), "required key 'type' (the plugin name) is missing"))
        return None
    if not isinstance(name, str):
        problems.append(Problem((*path, "type"), f"must be a plugin name (got {name!r})"))
        return None
    try:
        entry = registry.entry(kind, name)
        cls = entry.load()
    except PluginError as err:
        problems.append(Problem((*path, "type"), str(err)))
        return None
    if kind == "formatters" and (clash := set(cls.Options.model_fields) & set(DatasetSpec.model_fields)):
        problems.append(
            Problem(
                (*path, "type"),
                f"formatter '{name}' ({entry.distribution}) has options "
                f"named like dataset keys: {sorted(clash)}; its author must rename them",
            )
        )
        return None
    options = {k: v for k, v in block.items() if k != "type"}
    try:
        parsed = cls.Options.model_validate(options)
    except ValidationError as err:
        for error in err.errors():
            if _is_key_error(error):
                continue
            sub = _trim_loc(options, error["loc"], error["type"])
            problems.append(Problem((*path, *sub), _message(error, sub, cls.Options)))
        return None
    return Chosen(path=path, entry=entry, plugin=cls(parsed))


# ---- trainer_args ----------------------------------------------------------------------------


@functools.cache
def sft_config_fields() -> frozenset[str]:
    """Names of trl.SFTConfig's fields (imports trl, hence torch)."""
    from trl import SFTConfig

    return config_fields(SFTConfig)


def config_fields(config_class: type) -> frozenset[str]:
    """Names of a TRL config dataclass's fields."""
    import dataclasses

    return frozenset(f.name for f in dataclasses.fields(config_class) if f.init)


def _check_trainer_args(args: dict[str, Any], method: Chosen | None) -> list[Problem]:
    config_class: Any = None
    if method is not None and method.entry.name != "sft":
        try:
            config_class = method.plugin.trainer()[1]
        except (ImportError, AttributeError) as err:
            return [
                Problem(
                    ("method", "type"), f"method '{method.entry.name}' cannot load its TRL trainer: {err}"
                )
            ]
    known = config_fields(config_class) if config_class is not None else sft_config_fields()
    label = (
        f"{config_class.__module__.split('.')[0]}.{config_class.__name__}"
        if config_class
        else "trl.SFTConfig"
    )
    problems = []
    for key in args:
        path = ("trainer_args", key)
        if not isinstance(key, str):
            continue  # reported by _key_problems
        if key in OWNED_BY_TOP_LEVEL:
            problems.append(Problem(path, f"set this with the top-level key '{OWNED_BY_TOP_LEVEL[key]}'"))
        elif method is not None and key in _method_fields(method):
            problems.append(Problem(path, f"set this in the method block (method.{key} or its option)"))
        elif key not in known:
            problems.append(Problem(path, f"not a {label} field{did_you_mean(key, known)}"))
    return problems


def _method_fields(method: Chosen) -> set[str]:
    """The trainer config fields a method's options set (trainer_args may not set them again)."""
    try:
        return set(method.plugin.trainer_args(TrainConfig.model_construct()))
    except Exception:  # an option that reads the config: nothing to compare with
        return set()


# ---- cross-key rules -------------------------------------------------------------------------


def _fill_defaults(config: TrainConfig) -> TrainConfig:
    """Resolve the defaults that depend on other keys, so the resolved file states them."""
    updates: dict[str, Any] = {}
    if config.eval_strategy is None:
        has_val = config.val_set_size > 0 or bool(config.test_datasets)
        updates["eval_strategy"] = "steps" if config.eval_steps else ("epoch" if has_val else "no")
    if config.eval_batch_size is None:
        updates["eval_batch_size"] = config.micro_batch_size
    if config.eval_sample_packing is None:
        updates["eval_sample_packing"] = config.sample_packing
    if config.save_strategy == "steps" and config.save_steps is None:
        updates["save_steps"] = 500
    wants_metric = config.load_best_model_at_end or config.early_stopping_patience is not None
    if wants_metric and config.metric_for_best_model is None:
        updates["metric_for_best_model"] = "eval_loss"
    return config.model_copy(update=updates)


def _cross_checks(c: TrainConfig) -> list[Problem]:
    problems = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem((key,), message))

    if c.warmup_ratio is not None and c.warmup_steps is not None:
        bad("warmup_steps", "set warmup_ratio or warmup_steps, not both")
    problems += quantization_problems(c.model_quantization_config, c.model_quantization_config_kwargs)
    problems += override_problems(c.overrides_of_model_config)
    if c.bf16 == "auto" and c.fp16:
        bad("fp16", "set bf16: auto or fp16, not both (auto turns bf16 on where the GPU has it)")
    elif c.bf16 and c.fp16:
        bad("fp16", "set bf16 or fp16, not both")
    if c.eval_strategy != "no" and c.val_set_size == 0 and not c.test_datasets:
        bad("eval_strategy", f"'{c.eval_strategy}' needs held-out data: set val_set_size or test_datasets")
    if c.eval_steps is not None and c.eval_strategy != "steps":
        bad("eval_steps", f"has no effect with eval_strategy '{c.eval_strategy}'")
    if c.save_steps is not None and c.save_strategy != "steps":
        bad("save_steps", f"has no effect with save_strategy '{c.save_strategy}'")
    if c.val_set_size >= 1 and c.val_set_size != int(c.val_set_size):
        bad("val_set_size", "a count of rows must be a whole number (or use 0 < x < 1 for a share)")
    for key in ("eval_steps", "save_steps", "logging_steps"):
        value = getattr(c, key)
        if value is not None and value > 1 and value != int(value):
            bad(key, "must be a whole number of steps, or a ratio 0 < x < 1 of the total steps")
    if c.load_best_model_at_end:
        if c.eval_strategy == "no":
            bad("load_best_model_at_end", "needs evaluation: set val_set_size and eval_strategy")
        elif c.save_strategy != c.eval_strategy:
            bad(
                "save_strategy",
                f"must equal eval_strategy ('{c.eval_strategy}') with load_best_model_at_end",
            )
        elif c.save_strategy == "steps" and c.eval_steps and c.save_steps:
            if (c.eval_steps < 1) != (c.save_steps < 1):
                bad(
                    "save_steps",
                    "with load_best_model_at_end give save_steps and eval_steps "
                    "both as step counts or both as ratios",
                )
            elif not _is_multiple(c.save_steps, c.eval_steps):
                bad(
                    "save_steps",
                    f"must be a multiple of eval_steps ({c.eval_steps:g}) with load_best_model_at_end",
                )
    if c.early_stopping_patience is not None and c.eval_strategy == "no":
        bad(
            "early_stopping_patience",
            "stops on the eval metric, but nothing is evaluated: set val_set_size or test_datasets "
            "(and eval_steps, or eval_strategy: epoch)",
        )
    if c.early_stopping_threshold and c.early_stopping_patience is None:
        bad("early_stopping_threshold", "has no effect without early_stopping_patience")
    if c.test_datasets and c.val_set_size:
        bad("val_set_size", "set val_set_size or test_datasets, not both")
    if c.group_by_length and c.sample_packing:
        bad("group_by_length", "has nothing to group with sample_packing (packed rows are already full)")
    if c.group_by_length and c.sampler == "sequential":
        bad("sampler", "sequential keeps the rows in order, group_by_length reorders them by length: choose")
    if c.sample_packing and c.trainer_args.get("dataloader_persistent_workers"):
        problems.append(
            Problem(
                ("trainer_args", "dataloader_persistent_workers"),
                "persistent workers keep the first epoch's packed rows; sample_packing deals new rows each "
                "epoch (workers started per epoch get them)",
            )
        )
    for i, pattern in enumerate(c.filters.drop_regex):
        try:
            re.compile(pattern)
        except re.error as err:
            problems.append(Problem(("filters", "drop_regex", i), f"not a valid regular expression: {err}"))
    low, high = c.filters.min_length, c.filters.max_length
    if low is not None and high is not None and low > high:
        bad("filters", f"min_length ({low}) is above max_length ({high})")
    if high is not None and high > c.sequence_len and c.too_long == "drop":
        problems.append(
            Problem(("filters", "max_length"), f"above sequence_len ({c.sequence_len}), so it drops nothing")
        )
    if c.overwrite_output_dir and c.resume:
        bad("resume", "cannot resume and overwrite output_dir at once")
    elif c.resume not in (None, "auto") and not os.path.isdir(c.resume):
        bad("resume", f"no checkpoint folder '{c.resume}' (use auto for the newest in output_dir)")
    low_rank = c.optimizer.startswith(("galore_", "apollo_"))
    if low_rank and "optim_target_modules" not in c.trainer_args:
        adapter = c.plugin("adapter")
        if (
            c.optimizer.startswith("galore_")
            and adapter is not None
            and not adapter.sets_optim_target_modules
        ):
            bad(
                "optimizer",
                f"'{c.optimizer}' projects the gradients of chosen modules: use adapter: galore "
                "(it sets the target modules and the rank)",
            )
        elif c.optimizer.startswith("apollo_"):
            bad("optimizer", f"'{c.optimizer}' needs trainer_args.optim_target_modules (e.g. [attn, mlp])")
    return problems


def _packing_checks(config: TrainConfig, attention: Chosen | None) -> list[Problem]:
    """Packing needs an attention kernel that keeps packed examples apart; padding-free batches
    need one that reads flattened rows."""
    if attention is None:
        return []
    problems = []
    packed_inputs = getattr(attention.plugin, "packed_inputs", None)
    if config.padding_free and packed_inputs != "position_ids":
        problems.append(
            Problem(
                ("padding_free",),
                f"attention '{attention.entry.name}' keeps rows padded (it reads no flattened rows); "
                "use attention: sdpa, flex_attention or flash_attention_2, or padding_free: false",
            )
        )
    packs = config.sample_packing or bool(config.eval_sample_packing)
    if packs and not packed_inputs:
        key = "sample_packing" if config.sample_packing else "eval_sample_packing"
        problems.append(
            Problem(
                (key,),
                f"attention plugin '{attention.entry.name}' cannot keep packed examples apart (it declares "
                "no packed_inputs); use attention: sdpa, eager, flex_attention or flash_attention_2",
            )
        )
    return problems


SFT_ONLY = {
    "neftune_noise_alpha": "NEFTune noise is SFTTrainer's",
    "group_by_length": "the length grouping reads SFT rows' lengths",
    "pad_to_sequence_len": "the fixed-length padding is the SFT collator's",
}
"""Keys that act on supervised fine-tuning only, and why."""

FORMATTER_FOR_SHAPE = {
    "sft": "an SFT formatter (prompt_completion, alpaca, chat_template, ...)",
    "preference": "type: preference",
    "unpaired": "type: kto",
    "prompt": "type: prompt",
}


def _method_checks(config: TrainConfig, chosen: dict[str, Any]) -> list[Problem]:
    """The datasets must give the rows the method trains on, and the settings it cannot run are
    refused with the reason."""
    method: Chosen | None = chosen.get("method")
    if method is None:
        return []
    plugin, name = method.plugin, method.entry.name
    accepted = tuple(plugin.data)
    problems = []
    for target in ("formatters", "test_formatters"):
        for formatter in filter(None, chosen.get(target, [])):
            shape = getattr(formatter.plugin, "data", "sft")
            if shape not in accepted:
                wanted = FORMATTER_FOR_SHAPE.get(accepted[0], accepted[0])
                problems.append(
                    Problem(
                        (*formatter.path, "type"),
                        f"formatter '{formatter.entry.name}' gives {shape} rows, but method '{name}' trains "
                        f"on {' or '.join(accepted)} rows: use {wanted}",
                    )
                )
    if "sft" in accepted:
        return problems
    for key, why in SFT_ONLY.items():
        if getattr(config, key) not in (None, False):
            problems.append(Problem((key,), f"has no effect with method '{name}': {why}"))
    if config.sampler == "sequential" and name == "grpo":
        problems.append(Problem(("sampler",), "has no effect with method 'grpo': GRPO samples its prompts"))
    if getattr(config, "kernels", None):  # a key of the plugin-kind table (set on TrainConfig from it)
        problems.append(
            Problem(
                ("kernels",),
                f"kernel plugins swap SFT's loss and modules; method '{name}' computes its own loss",
            )
        )
    attention = chosen.get("attention")
    reads_rows = attention is not None and getattr(attention.plugin, "packed_inputs", None) == "position_ids"
    for key in ("sample_packing", "eval_sample_packing", "padding_free"):
        if not getattr(config, key):
            continue
        if not plugin.packing:
            problems.append(
                Problem(
                    (key,),
                    f"method '{name}' runs padded batches only (it cannot keep packed sequences apart)",
                )
            )
        elif not reads_rows and key != "padding_free":  # padding_free has its own rule (_packing_checks)
            kernel = attention.entry.name if attention is not None else "?"
            problems.append(
                Problem(
                    (key,),
                    f"method '{name}' packs sequences as flattened rows, which attention '{kernel}' cannot "
                    "keep apart: use attention: sdpa, flex_attention or flash_attention_2",
                )
            )
    return problems


def _reward_checks(chosen: dict[str, Any], registry: Registry) -> list[Problem]:
    """Each reward the method names must be an installed `trainer.rewards` entry point that loads:
    the registry's error (did-you-mean, the known names, an import failure) at `method.rewards[i]`,
    the line of the name (a method without a `rewards` option: at the method block)."""
    method: Chosen | None = chosen.get("method")
    if method is None:
        return []
    listed = "rewards" in type(method.plugin.options).model_fields
    problems = []
    for i, name in enumerate(method.plugin.rewards()):
        try:
            registry.get("rewards", name)
        except PluginError as err:
            problems.append(Problem((*method.path, "rewards", i) if listed else method.path, str(err)))
    return problems


def _metric_checks(chosen: dict[str, Any], registry: Registry) -> list[Problem]:
    """The metrics of every eval the config lists (metric_problems)."""
    return [
        p
        for item in filter(None, chosen.get("evals", []))
        for p in metric_problems(item.path, item.plugin, registry)
    ]


def metric_problems(path: Path, plugin: Any, registry: Registry) -> list[Problem]:
    """Each metric an eval plugin names must be an installed `trainer.metrics` entry point that
    loads, reported at `<path>.metrics[j]`."""
    problems = []
    for j, name in enumerate(plugin.metric_names()):
        try:
            registry.get("metrics", name)
        except PluginError as err:
            problems.append(Problem((*path, "metrics", j), str(err)))
    return problems


def _eval_checks(chosen: dict[str, Any]) -> list[Problem]:
    """Evals run before and after training on the main process with the whole model: a backend
    that shards the weights over processes (FSDP, ZeRO-3) has no whole model there."""
    evals, distributed = [e for e in chosen.get("evals", []) if e], chosen.get("distributed")
    if not evals or distributed is None or not distributed.plugin.sharding().weights:
        return []
    return [
        Problem(
            ("evals",),
            f"evals run on the main process with the whole model, but distributed "
            f"'{distributed.entry.name}' shards the weights over the processes; evaluate the saved run "
            "after training instead: trainer evaluate OUTPUT_DIR",
        )
    ]


def _is_multiple(big: float, small: float) -> bool:
    ratio = big / small
    if not math.isfinite(ratio):  # e.g. eval_steps 5e-324: no whole number of them fits
        return False
    return abs(ratio - round(ratio)) < 1e-6 and round(ratio) >= 1


def _check_paths(data: dict[str, Any]) -> list[Problem]:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    problems = []

    def check(path: Path, name: Any, what: str, is_file: bool, hub_model: bool) -> None:
        if not isinstance(name, str) or os.path.exists(os.path.expanduser(name)):
            return
        if is_file or looks_local(name):
            # the file system is the machine's: a config written for a cluster names the cluster's paths
            problems.append(Problem(path, f"{what} '{name}' does not exist", machine=True))
        elif offline and hub_model and not _in_hub_cache(name):
            problems.append(
                Problem(
                    path,
                    f"{what} '{name}' is neither a local path nor in the hub cache, and "
                    "HF_HUB_OFFLINE is set",
                    machine=True,  # what this machine can reach; the machine that trains may download it
                )
            )

    check(("base_model",), data.get("base_model"), "model", is_file=False, hub_model=True)
    check(("tokenizer",), data.get("tokenizer"), "tokenizer", is_file=False, hub_model=True)
    for key in DATASET_LISTS:
        specs = data.get(key)
        for i, spec in enumerate(specs if isinstance(specs, list) else []):
            path = spec.get("path") if isinstance(spec, dict) else None
            if isinstance(path, str) and glob.has_magic(path):
                if not glob.glob(os.path.expanduser(path), recursive=True):
                    message = f"no file matches the pattern '{path}'"
                    problems.append(Problem((key, i, "path"), message, machine=True))
                continue
            is_file = isinstance(path, str) and path.endswith(LOCAL_DATA_SUFFIXES)
            check((key, i, "path"), path, "dataset", is_file, hub_model=False)
    return problems


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub client rejects is simply not cached
        return False

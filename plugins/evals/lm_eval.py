"""`lm_eval`: tasks of EleutherAI's lm-evaluation-harness, run on the model in memory.

    evals:
      - type: lm_eval                   # pip install 'trainer[eval]'
        tasks: [reverse_words, reverse_words_choice]
        include_path: examples/lm-eval  # a folder of task YAMLs (*.yaml), from the working directory
        limit: 100                      # rows per task (a smoke test; the full task without it)
        batch_size: 8

The model is wrapped as it stands (a transformers model or a PEFT model, on its device, in its
dtype; nothing is moved, cast or merged) in lm_eval's `HFLM` and scored by `simple_evaluate`. The
prompt format follows the run: its chat template for a model trained on chat data, raw text for a
raw-text run (`apply_chat_template` overrides); generation also stops at the run's end-of-turn
markers, as the trainer's own generation does. Results are `{"<task>/<metric>": value}` for every
task and group (`<task>/<metric>,<filter>` for a task's named filters); no standard errors.

lm_eval seeds Python's, NumPy's and torch's global random generators when it starts: their states
are restored afterwards, as are the model's train/eval mode and the run's tokenizer (lm_eval gets
a copy). Task names are checked when the eval runs: looking every name up costs lm_eval a scan of
its ~15,000 task files (seconds), done only when a name is not one of `include_path`'s tasks.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from trainer.api import Eval, EvalContext, Options, TrainConfig


class LmEvalOptions(Options):
    tasks: list[str] = Field(
        min_length=1, description="lm_eval task, group or tag names (or paths of task YAML files)"
    )
    include_path: str | None = Field(
        None, description="A folder of extra task YAMLs (*.yaml), relative to the working directory"
    )
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (None: each task's own)")
    limit: int | None = Field(None, gt=0, description="Score only the first N rows of each task")
    batch_size: int = Field(8, gt=0, description="Requests run together")
    max_gen_toks: int | None = Field(
        None, gt=0, description="Tokens generated at most, for every generation task (None: each task's own)"
    )
    apply_chat_template: bool | None = Field(
        None, description="Render prompts with the tokenizer's chat template (None: as the run was trained)"
    )
    system_instruction: str | None = Field(None, description="A system message put before every prompt")


class LmEval(Eval[LmEvalOptions]):
    name = "lm_eval"
    requires = {"lm_eval": "eval"}

    def __init__(self, options: LmEvalOptions | None = None):
        super().__init__(options)
        self._task_manager: Any = None

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        method = config.plugin("method")
        if method is not None and getattr(method, "model", "causal_lm") != "causal_lm":
            problems.append(
                f"scores the text a causal language model writes; method '{method.name}' trains a "
                f"{method.model} model"
            )
        include = self.options.include_path
        if include is not None:
            problems += [("include_path", message) for message in include_path_problems(include)]
        return problems

    def run(self, context: EvalContext) -> dict[str, float]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        opts = self.options
        manager = self.task_manager()
        model = context.model
        chat, stops = prompt_format(context, opts.apply_chat_template)
        tokenizer = copy.deepcopy(context.tokenizer)  # lm_eval may set a pad token on the one it gets
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

        class RunLM(HFLM):
            """HFLM that also stops generating at the run's end-of-turn markers."""

            def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
                for request in requests if stops else ():
                    text, kwargs = request.args
                    until = kwargs.get("until")
                    until = [until] if isinstance(until, str) else list(until or [])
                    until += [stop for stop in stops if stop not in until]
                    request.arguments = (text, {**kwargs, "until": until})
                return list(super().generate_until(requests, disable_tqdm=disable_tqdm))

        was_training = model.training
        try:
            with _rng_restored(), _quiet("lm_eval"):
                # A rendered chat template holds its own BOS (training added none); raw text gets the
                # tokenizer's special tokens, as training and the trainer's own generation do.
                lm = RunLM(
                    pretrained=model,
                    tokenizer=tokenizer,
                    batch_size=opts.batch_size,
                    add_bos_token=False if chat else None,
                )
                results = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=list(opts.tasks),
                    task_manager=manager,
                    num_fewshot=opts.num_fewshot,
                    limit=opts.limit,
                    log_samples=False,
                    bootstrap_iters=0,  # no standard errors (they are not reported)
                    apply_chat_template=chat,
                    system_instruction=opts.system_instruction,
                    gen_kwargs={"max_gen_toks": opts.max_gen_toks} if opts.max_gen_toks else None,
                )
        finally:
            model.train(was_training)
        return flat_metrics(results)

    def task_manager(self) -> Any:
        """lm_eval's TaskManager for the tasks asked for (built once): `include_path`'s tasks alone
        when every name is one of them, otherwise with lm_eval's own (a scan of its task files).
        ValueError naming each unknown task, with close matches."""
        if self._task_manager is not None:
            return self._task_manager
        from lm_eval.tasks import TaskManager

        include = self.options.include_path
        if include is not None:
            problems = include_path_problems(include)
            if problems:
                raise ValueError(f"lm_eval include_path: {problems[0]}")
            local = TaskManager(include_path=include, include_defaults=False)
            if all(_is_task(local, name) for name in self.options.tasks):
                self._task_manager = local
                return local
        manager = TaskManager(include_path=include)
        unknown = [name for name in self.options.tasks if not _known(manager, name)]
        if unknown:
            raise ValueError("; ".join(_unknown_message(manager, name, include) for name in unknown))
        self._task_manager = manager
        return manager


def include_path_problems(include: str) -> list[str]:
    """What is wrong with a task folder: missing, not a folder, or without *.yaml files."""
    path = Path(include).expanduser()
    where = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
    if not path.exists():
        return [f"folder '{include}' does not exist{where}"]
    if not path.is_dir():
        return [f"'{include}' is not a folder: give the folder that holds the task YAMLs"]
    if not any(p.is_file() for p in path.glob("**/*.yaml")):
        yml = " (lm_eval reads *.yaml only, not *.yml)" if any(path.glob("**/*.yml")) else ""
        return [f"folder '{include}' holds no task YAML files{yml}"]
    return []


def prompt_format(context: EvalContext, apply_chat_template: bool | None) -> tuple[bool, list[str]]:
    """(whether prompts go through the chat template, the texts besides EOS that end an answer: the
    run's end-of-turn markers), from the core (`context.prompt_format`): as the run was trained
    unless `apply_chat_template` says otherwise."""
    chat, stops = context.prompt_format(apply_chat_template)
    if chat and not getattr(context.tokenizer, "chat_template", None):
        raise ValueError("lm_eval apply_chat_template: the tokenizer has no chat template")
    return bool(chat), [str(stop) for stop in stops if stop]


def flat_metrics(results: dict[str, Any] | None) -> dict[str, float]:
    """`{"<task>/<metric>": value}` from simple_evaluate's results (`,<filter>` kept unless it is
    lm_eval's "none"); standard errors, sample counts and text left out."""
    flat: dict[str, float] = {}
    if not results:  # not the main process
        return flat
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, filter_name = str(key).partition(",")
            if not filter_name or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            name = metric if filter_name == "none" else f"{metric},{filter_name}"
            flat[f"{task}/{name}"] = number if math.isfinite(number) else float("nan")
    return flat


def _is_task(manager: Any, name: str) -> bool:
    return name in set(manager.all_subtasks) or (name.endswith(".yaml") and os.path.isfile(name))


def _known(manager: Any, name: str) -> bool:
    return name in set(manager.all_tasks) or os.path.isfile(name)


def _unknown_message(manager: Any, name: str, include: str | None) -> str:
    close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.75)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    where = f"lm_eval's tasks or include_path '{include}'" if include else "lm_eval's tasks (no include_path)"
    return f"unknown lm_eval task '{name}'{hint}: not in {where}"


@contextmanager
def _rng_restored() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and initialised CUDA) global random states, put back after:
    simple_evaluate seeds them all, which would otherwise reseed a training run mid-way."""
    import random

    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """lm_eval's loggers at ERROR for the duration (it warns on every in-memory model and
    custom dataset: noise among a run's output), unless LMEVAL_LOG_LEVEL (lm_eval's own) is set."""
    if os.environ.get("LMEVAL_LOG_LEVEL"):
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

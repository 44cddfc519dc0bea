"""One training run, top to bottom: launch processes if asked, guard output_dir, build, train, save.

Also usable from Python: `train(load_config("cfg.yml"))` returns the `Built` run after training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from trainer.api.resolved import Resolved
from trainer.config.errors import ConfigErrors
from trainer.outputs.checkpoints import newest_complete, resume_point
from trainer.outputs.output_dir import (
    RESOLVED_NAME,
    check_output_dir,
    clear_previous_run,
    write_resolved,
)
from trainer.resolve.precision import Machine
from trainer.resolve.precision import too_many_processes as too_many_processes  # re-exported
from trainer.resolve.validate import machine_problems
from trainer.runtime.build import Built, build_trainer, for_this_machine, plan
from trainer.runtime.launcher import CHECKED_ENV, PREPARED_ENV, REPORT_ENV, describe_failures, read_failures
from trainer.training import parallel
from trainer.training.saving import save_final
from trainer.training.stops import RunStopped


def launched() -> bool:
    """True inside torchrun / accelerate launch (or any launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def check_machine(resolved: Resolved, machine: Machine | None = None) -> None:
    """Raise ConfigErrors (with file:line) for settings this machine cannot run, the machine checks
    `validate` runs too (trainer.resolve.validate.machine_problems): bf16/fp16/tf32 and CUDA-only
    optimizers, packages the optimizer or a plugin needs, more processes than GPUs, and every
    plugin's `check_machine()`. Again here, because the launch settings may have come from the
    environment since, and a config's `auto` precision has been decided."""
    problems = machine_problems(
        resolved.config, resolved.plugins(), resolved.distributed.plugin, machine or Machine()
    )
    for problem in problems:
        problem.where = problem.where or resolved.source.where(problem.path)
    if problems:
        raise ConfigErrors(problems)


def _say(line: str) -> None:
    print(line, flush=True)  # before the started processes write to the same stream


def relaunch(resolved: Resolved, argv: list[str], log: Any = _say) -> int:
    """Start the configured number of processes with torchrun, running the same command. The data
    is prepared here first, once, so no process waits on a barrier while another tokenizes."""
    config = resolved.config
    plugin = resolved.distributed.plugin
    given = {str(path[1]) for path in resolved.source.overrides if len(path) > 1 and path[0] == "distributed"}
    for note in plugin.apply_environment(os.environ, given):
        log(f"distributed.{note}")
    resolved, _ = for_this_machine(resolved)  # each process decides (and says) it again
    check_machine(resolved)  # once, here, rather than once per process
    # Fail fast (exit 2) before starting processes, but do not clear output_dir here: the config may
    # be output_dir/config.resolved.yml, which the processes still have to read. The main process
    # clears it once every process has read its config (_prepare_output_dir).
    check_output_dir(config.output_dir, config.overwrite_output_dir, config.resume)
    prepared_root = config.dataset_prepared_path or tempfile.mkdtemp(prefix="trainer-prepared-")
    report_dir = tempfile.mkdtemp(prefix="trainer-launch-")
    try:
        prepare_data(resolved, prepared_root, log)
        launcher = plugin.launcher_args()
        command = [
            sys.executable,
            "-m",
            "trainer.runtime.launcher",
            *launcher,
            "-m",
            "trainer.cli.train",
            *argv,
        ]
        log("launching: " + " ".join(command))
        report = os.path.join(report_dir, "failures.json")
        env = {**os.environ, CHECKED_ENV: "1", PREPARED_ENV: prepared_root, REPORT_ENV: report}
        code, signum = _run_forwarding_signals(command, env)
        failures = read_failures(report)
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
        if config.dataset_prepared_path is None:
            shutil.rmtree(prepared_root, ignore_errors=True)
    if signum:  # the processes saved and stopped; torchrun reports that as its own failure
        import signal

        raise RunStopped(
            f"stopped by {signal.Signals(signum).name}: the newest checkpoint is "
            f"{newest_complete(config.output_dir, _quiet)}.\nResume with: {resume_command(config)}",
            128 + signum,
        )
    if failures:
        last = newest_complete(config.output_dir, _quiet)
        where = f"the newest complete checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise RunStopped(
            f"training failed: {describe_failures(failures, plugin.world_size())}; the launcher "
            f"stopped the other processes. {where[0].upper()}{where[1:]}."
            + (f"\nResume with: {resume_command(config)}" if last else ""),
            1,
        )
    return code


def _run_forwarding_signals(command: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run the launcher in its own session and pass it SIGTERM / SIGINT as SIGTERM, so that it asks
    its processes to checkpoint and stop (rather than this process dying or killing it). Returns the
    launcher's exit status and the first signal passed on (0: none)."""
    import signal

    child = subprocess.Popen(command, env=env, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        forwarded.append(signum)
        child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait(), (forwarded[0] if forwarded else 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def prepare_data(resolved: Resolved, root: str, log: Any) -> None:
    """Format, tokenize and cache the datasets under `root` (as `preprocess` does)."""
    from trainer.data.pipeline import build_datasets
    from trainer.runtime.build import load_tokenizer

    with_root = with_prepared_path(resolved, root)
    prepared = build_datasets(with_root, load_tokenizer(with_root.config))
    log(f"data prepared once for every process: {prepared.cache_dir}")


def with_prepared_path(resolved: Resolved, root: str) -> Resolved:
    config = resolved.config.model_copy(update={"dataset_prepared_path": root})
    return dataclasses.replace(resolved, config=config)


def wants_relaunch(resolved: Resolved) -> bool:
    """A multi-process backend (even with one process) started outside any launcher."""
    return bool(resolved.distributed.plugin.launcher_args()) and not launched()


def _prepare_output_dir(
    resolved: Resolved, main: bool, barrier: Any, decided: dict[str, str] | None = None
) -> None:
    config = resolved.config
    if os.environ.get(CHECKED_ENV) != "1":
        check_output_dir(config.output_dir, config.overwrite_output_dir, config.resume)
    barrier()  # every rank has read its config and looked before any rank writes
    if main and config.overwrite_output_dir:
        clear_previous_run(config.output_dir)
    if main:
        comments = {key: f"{text} (the config says {key}: auto)" for key, text in (decided or {}).items()}
        write_resolved(config.output_dir, resolved.to_dict(), comments)
    barrier()


def train(resolved: Resolved, log: Any = print) -> Built:
    """Run training for a resolved config and save the outputs; returns the built run."""
    resolved, decided = for_this_machine(resolved)  # bf16/tf32 auto: what this machine runs
    as_written = resolved  # what config.resolved.yml records (auto as decided, said in a comment)
    prepared_root = os.environ.get(PREPARED_ENV)
    if launched() and prepared_root and resolved.config.dataset_prepared_path is None:
        resolved = with_prepared_path(resolved, prepared_root)  # the launcher prepared the data
    config = resolved.config
    check_machine(resolved)  # precision flags and device-bound optimizers, before building anything
    merged, args = plan(resolved)  # fails fast on bad trainer_args or conflicting plugins
    state = args.distributed_state  # initializes the process group under a launcher
    main = state.is_main_process
    if main:
        for key, text in decided.items():
            log(f"{key}: {text}")
    _prepare_output_dir(as_written, main, state.wait_for_everyone, decided)
    start = resume_point(config, log if main else _quiet)  # a bad `resume` fails before any loading
    if launched():
        resolved.distributed.plugin.init_processes()
    built = build_trainer(resolved, (merged, args))
    trainer = built.trainer
    if main:
        for line in start_report(built, state.num_processes):
            log(line)
    parallel.report_at_start(trainer, log)
    if start and main:
        log(f"resuming from {start}")
    trainer.train(resume_from_checkpoint=start)
    if trainer.guard.stopped is not None:
        raise stopped_early(trainer, resolved)
    save_final(trainer, config.output_dir)
    if main:
        for line in end_report(built, curves=config.training_curves):
            log(line)
    return built


def end_processes(finished: bool) -> None:
    """Tear down this launched process's process group in order, while the interpreter is whole.

    Left to interpreter exit, gloo's worker threads can still hold work objects whose tensors need
    the GIL during finalization, and the process aborts ("terminate called without an active
    exception", SIGABRT) after a run that finished and saved: torchrun then reports the run failed.
    After a finished (or stopped-and-saved) run every process first waits for the others, so no
    process tears down while another still saves; after an error there is no barrier (a peer may be
    gone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a launched process that has finished its part (saved, process group torn down) without
    interpreter finalization: there, C++ threads of the communication libraries (gloo's, DeepSpeed's)
    can still be joinable while their objects are destroyed, and the process aborts with SIGABRT
    ("terminate called without an active exception") after a run that finished, which torchrun then
    reports as a failed run (seen about 1 in 30 ZeRO-3 runs under load even after
    destroy_process_group). Output and logging are flushed first."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _quiet(line: str) -> None:
    pass


def resume_command(config: Any) -> str:
    """The command that continues this run from its newest checkpoint."""
    command = f"python -m trainer.cli.train {os.path.join(config.output_dir, RESOLVED_NAME)} resume=auto"
    return command + (" overwrite_output_dir=false" if config.overwrite_output_dir else "")


def stopped_early(trainer: Any, resolved: Resolved) -> RunStopped:
    """What a signal or the loss watchdog stopped, where the good checkpoint is, how to go on."""
    stopped = trainer.guard.stopped
    config = resolved.config
    command = resume_command(config)
    last = newest_complete(config.output_dir, _quiet)
    if stopped.reason == "signal":
        return RunStopped(
            f"stopped by {stopped.detail} at step {stopped.step} of {trainer.state.max_steps}: checkpoint "
            f"saved to {last}.\nResume with: {command}",
            128 + stopped.signum,
        )
    kept = (
        f"the last good checkpoint is {last}; resume with: {command}"
        if last
        else "no checkpoint was saved before it (save_steps keeps some)"
    )
    return RunStopped(
        f"loss watchdog stopped the run at step {stopped.step}: {stopped.detail} "
        f"(loss_watchdog_patience {config.loss_watchdog_patience}); the diverged weights were not "
        f"saved, {kept}. Lower learning_rate, add warmup or check the data.",
        1,
    )


def start_report(built: Built, processes: int) -> list[str]:
    args = built.args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    batches = built.batches_per_epoch or math.ceil(
        len(built.train_dataset) / (args.per_device_train_batch_size * processes)
    )
    steps_per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    lines = ["data: " + line for line in built.report.lines()]
    packed = getattr(built.train_dataset, "summary", None)  # a PackedDataset
    if packed is not None:
        lines.append(packed())
    lines.append(
        f"effective batch size {per_step} = micro {args.per_device_train_batch_size} x accumulation "
        f"{args.gradient_accumulation_steps} x processes {processes}; ~{steps} optimizer steps "
        f"({steps_per_epoch} per epoch)"
    )
    return lines


def end_report(built: Built, curves: bool = True) -> list[str]:
    """The loss before and after, the summary table with the fit diagnosis, and (a side effect, on
    the main process that calls this, unless `curves` is off) output_dir/training_curves.png titled
    by the diagnosis."""
    from trainer.outputs.run_report import (
        CURVES_NAME,
        PREFERENCE_ACCURACY,
        diagnose,
        summary,
        table,
        write_curves,
    )

    history = built.trainer.state.log_history
    rewarded = "reward" in built.metrics  # GRPO: the loss is ~0 by construction, the reward tells
    first_last = [("reward", "reward", "eval_reward")] if rewarded else [("loss", "loss", "eval_loss")]
    lines = []
    for name, train_key, eval_key in first_last:
        train = [h[train_key] for h in history if train_key in h]
        evals = [h[eval_key] for h in history if eval_key in h]
        if train:
            lines.append(f"train {name}: first logged {train[0]:.4f} -> last logged {train[-1]:.4f}")
        if len(evals) >= 2:
            lines.append(f"eval {name}:  before {evals[0]:.4f} -> after {evals[-1]:.4f}")
    accuracy = [h[PREFERENCE_ACCURACY] for h in history if PREFERENCE_ACCURACY in h]
    if len(accuracy) >= 2:
        lines.append(
            f"preference accuracy (held-out pairs, chosen scored above rejected): before {accuracy[0]:.1%} "
            f"-> after {accuracy[-1]:.1%}"
        )
    diagnosis = diagnose(history)
    if rewarded:
        diagnosis = (
            "the loss of a reward-driven method says nothing of fit: read the reward above and the curves"
        )
    if curves:
        metrics = tuple(getattr(built, "metrics", ()))
        write_curves(history, os.path.join(built.args.output_dir, CURVES_NAME), diagnosis, metrics)
    lines += table(summary(built.trainer, built.parameters, diagnosis))
    plot = f", {CURVES_NAME}" if curves else ""
    lines.append(
        f"saved to {built.args.output_dir} (model, tokenizer, config.resolved.yml, trainer_state.json{plot})"
    )
    return lines

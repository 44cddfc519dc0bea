"""`python -m trainer.cli.validate [--skip-machine-checks] cfg.yml [overrides]`: every config problem at
once, or a summary.

Loads no model and no dataset; imports torch only when the config has `trainer_args` or a machine
check needs it (fp16, tf32, a CUDA-only optimizer, a GPU kernel; bf16 or several processes on a
machine with a GPU driver). `--skip-machine-checks` checks the config alone: what this machine lacks
(a GPU, a GPU package) is printed as notes after the plan instead of failing, for a config written
on one machine to train on another.
"""

from __future__ import annotations

from trainer.api.resolved import Resolved
from trainer.cli.common import config_parser, run
from trainer.config.errors import ConfigErrors, dotted
from trainer.resolve.memory import Unavailable, estimate
from trainer.resolve.validate import load_config

SKIP_FLAG = "--skip-machine-checks"


def summary(resolved: Resolved) -> list[str]:
    """A short description of the resolved run: plugins with their options and distribution."""
    c = resolved.config
    width = max(12, *(len(dotted(chosen.path)) + 1 for chosen in resolved.plugins()))

    def row(label: str, text: str) -> str:
        return f"  {label:<{width}}{text}"

    lines = [f"config {resolved.source.file}: OK", row("base_model", c.base_model)]
    if c.trust_remote_code:
        from trainer.runtime.build import remote_code_warning

        lines.append(str(remote_code_warning(c)))
    for chosen in resolved.plugins():
        opts = chosen.plugin.options.model_dump(mode="json")
        shown = ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "(no options)"
        entry = chosen.entry
        lines.append(
            row(dotted(chosen.path), f"{entry.name} [{entry.distribution} {entry.version}]  {shown}")
        )
    held_out = (
        f"{len(c.test_datasets)} test dataset(s)" if c.test_datasets else f"val_set_size {c.val_set_size:g}"
    )
    shuffle = "on" if c.shuffle else "off"
    lines.append(
        row(
            "data",
            f"sequence_len {c.sequence_len}, too_long {c.too_long}, {held_out}, shuffle {shuffle}, "
            f"prepared in {c.dataset_prepared_path or '(not kept)'}",
        )
    )
    world = resolved.distributed.plugin.world_size()
    per_step = c.micro_batch_size * c.gradient_accumulation_steps * world
    lines.append(
        row(
            "batch",
            f"micro {c.micro_batch_size} x accumulation {c.gradient_accumulation_steps} x processes {world}"
            f" = {per_step} rows per step",
        )
    )
    auto = [key for key in ("bf16", "tf32") if getattr(c, key) == "auto"]
    if auto:
        lines.append(
            row(
                "precision",
                ", ".join(f"{key}: auto" for key in auto)
                + " (decided when the run starts, on the machine that trains: on where its GPU has it)",
            )
        )
    lines.append(row("output_dir", c.output_dir))
    lines.extend(memory_lines(resolved))
    return lines


def skipped_lines(resolved: Resolved) -> list[str]:
    """The machine checks that failed here and were set aside by --skip-machine-checks, one a line."""
    if not resolved.skipped:
        return ["skipped on this machine: nothing (every machine check passes here too)"]
    count = len(resolved.skipped)
    return [
        f"skipped on this machine ({count} machine check{'s' if count != 1 else ''} failing here, "
        "about its GPU, installed packages or files; train checks them where it runs):",
        *(f"  {problem.render()}" for problem in resolved.skipped),
    ]


def memory_lines(resolved: Resolved) -> list[str]:
    """The memory-per-device estimate (trainer.resolve.memory), or why there is none."""
    try:
        found = estimate(resolved)
    except Unavailable as err:
        return [f"memory estimate: unavailable ({err})"]
    except (OSError, ValueError) as err:  # an unreadable or malformed checkpoint header
        return [f"memory estimate: unavailable ({type(err).__name__}: {err})"]
    return [f"memory per device (estimate): {found.render()}", f"  ({'; '.join(found.notes)})"]


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("python -m trainer.cli.validate", __doc__.splitlines()[0])
    parser.add_argument(
        SKIP_FLAG,
        action="store_true",
        help="check the config alone: what this machine lacks (a GPU, a GPU package, a local model or "
        "data file the training machine has) is printed as notes instead of errors",
    )
    args = parser.parse_intermixed_args(argv)
    try:
        resolved = load_config(args.config, args.overrides, skip_machine_checks=args.skip_machine_checks)
    except ConfigErrors as err:
        machine = sum(problem.machine for problem in err.problems)
        if machine:
            which = "are machine checks" if machine != 1 else "is a machine check"
            err.header.append(
                f"({machine} of the errors below {which}: this machine's GPU, packages or files, not the "
                f"config; {SKIP_FLAG} checks the config alone)"
            )
        raise
    print("\n".join(summary(resolved)))
    if args.skip_machine_checks:
        print("\n".join(skipped_lines(resolved)))
    return 0


if __name__ == "__main__":
    run(main)

"""`python -m trainer.cli.validate cfg.yml [overrides]`: every config problem at once, or a summary.

Loads no model and no dataset; imports torch only when the config has `trainer_args`.
"""

from __future__ import annotations

from trainer.api.resolved import Resolved
from trainer.cli.common import config_parser, run
from trainer.config.errors import dotted
from trainer.resolve.memory import Unavailable, estimate
from trainer.resolve.validate import load_config


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
    lines.append(row("output_dir", c.output_dir))
    lines.extend(memory_lines(resolved))
    return lines


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
    args = parser.parse_args(argv)
    resolved = load_config(args.config, args.overrides)
    print("\n".join(summary(resolved)))
    return 0


if __name__ == "__main__":
    run(main)

"""`python -m trainer.cli.validate cfg.yml [overrides]`: every config problem at once, or a summary.

Loads no model and no dataset; imports torch only when the config has `trainer_args`.
"""

from __future__ import annotations

from trainer.cli.common import config_parser, run
from trainer.config.errors import dotted
from trainer.config.validate import Resolved, load_config


def summary(resolved: Resolved) -> list[str]:
    """A short description of the resolved run: plugins with their options and distribution."""
    c = resolved.config
    lines = [f"config {resolved.source.file}: OK", f"  base_model  {c.base_model}"]
    for chosen in resolved.plugins():
        opts = chosen.plugin.options.model_dump(mode="json")
        shown = ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "(no options)"
        where = dotted(chosen.path)
        lines.append(
            f"  {where:<12} {chosen.entry.name} [{chosen.entry.distribution} {chosen.entry.version}]  {shown}"
        )
    world = resolved.distributed.plugin.world_size()  # type: ignore[attr-defined]
    lines.append(
        f"  batch       micro {c.micro_batch_size} x accumulation {c.gradient_accumulation_steps}"
        f" x processes {world} = {c.micro_batch_size * c.gradient_accumulation_steps * world} rows per step"
    )
    lines.append(f"  output_dir  {c.output_dir}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("python -m trainer.cli.validate", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    resolved = load_config(args.config, args.overrides)
    print("\n".join(summary(resolved)))
    return 0


if __name__ == "__main__":
    run(main)

"""`python -m trainer.cli.evaluate RUN_OR_CFG [key=value ...]`: measure a trained model.

RUN_OR_CFG is a run folder (its config.resolved.yml says how its data was encoded), a checkpoint,
a plain model folder, or a config file (the model is its output_dir once training wrote one, else
its base_model). What is measured:
- the config's `evals:` (loss, generation metrics, lm-eval tasks; see docs/evaluate.md), or the
  loss eval on the eval split when it lists none;
- or only what the flags ask: `--data FILE --type FORMATTER` (loss and perplexity on that data,
  trained tokens only, encoded as training encodes it), `--prompts FILE` (greedy answers scored
  against reference answers with `--metrics`), `--lm-eval TASKS` (lm-evaluation-harness).
Results print as a table and, with `--json OUT`, are written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from trainer.cli.common import USER_ERROR, add_model_args, run
from trainer.config.errors import ConfigErrors, Problem
from trainer.outputs.output_dir import RESOLVED_NAME


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.cli.evaluate",
        description="Measure a trained model: loss/perplexity, generation metrics, lm-eval tasks.",
    )
    add_model_args(p)
    p.add_argument("overrides", nargs="*", help="config overrides, key.sub=value (values parsed as YAML)")
    data = p.add_argument_group("loss and perplexity on other data")
    data.add_argument("--data", metavar="FILE", help="a dataset (file, folder or hub name)")
    data.add_argument(
        "--type", metavar="FORMATTER", help="its formatter (prompt_completion, chat_template, ...)"
    )
    gen = p.add_argument_group("generation metrics")
    gen.add_argument("--prompts", metavar="JSONL", help="rows with a prompt and a reference answer")
    gen.add_argument("--prompt-field", default="prompt")
    gen.add_argument("--answer-field", default="answer")
    gen.add_argument("--metrics", default="exact_match", help="comma-separated trainer.metrics names")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    harness = p.add_argument_group("lm-evaluation-harness (pip install 'trainer[eval]')")
    harness.add_argument("--lm-eval", metavar="TASKS", help="comma-separated task names")
    harness.add_argument("--include-path", metavar="DIR", help="a folder of task YAMLs (local tasks)")
    harness.add_argument("--limit", type=int, help="at most this many rows per task")
    p.add_argument("--json", metavar="OUT", help="also write the results here as JSON")
    return p


def flag_evals(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The eval blocks the flags ask for (none: the config's own)."""
    blocks: list[dict[str, Any]] = []
    if args.data:
        blocks.append({"type": "loss"})
    if args.prompts:
        blocks.append(
            {
                "type": "generation",
                "path": args.prompts,
                "prompt_field": args.prompt_field,
                "answer_field": args.answer_field,
                "metrics": [m.strip() for m in args.metrics.split(",") if m.strip()],
                "max_new_tokens": args.max_new_tokens,
            }
        )
    if args.lm_eval:
        block: dict[str, Any] = {
            "type": "lm_eval",
            "tasks": [t.strip() for t in args.lm_eval.split(",") if t.strip()],
        }
        if args.include_path:
            block["include_path"] = args.include_path
        if args.limit:
            block["limit"] = args.limit
        blocks.append(block)
    return blocks


def config_file(target: Path) -> Path | None:
    """The config that goes with RUN_OR_CFG: the file itself, or a run's config.resolved.yml."""
    from trainer.inference.load import run_folder

    if target.is_file():
        return target
    run = run_folder(target)
    return run / RESOLVED_NAME if run is not None else None


def finished_model(output_dir: str) -> bool:
    names = set(os.listdir(output_dir)) if os.path.isdir(output_dir) else set()
    return bool(names & {"adapter_config.json", "config.json"})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if bool(args.data) != bool(args.type):
        print("evaluate: error: --data and --type go together", file=sys.stderr)
        return USER_ERROR
    target = Path(args.run)
    if not target.exists():
        print(f"evaluate: error: {args.run}: no such file or directory", file=sys.stderr)
        return USER_ERROR
    blocks = flag_evals(args)
    overrides = list(args.overrides)
    if args.data:
        dataset = json.dumps({"path": args.data, "type": args.type})
        overrides = [f"test_datasets=[{dataset}]", "val_set_size=0", *overrides]
    if blocks:
        overrides = [f"evals={json.dumps(blocks)}", *overrides]

    from trainer.resolve.validate import load_config

    config_path = config_file(target)
    resolved = None
    with tempfile.TemporaryDirectory() as scratch:
        if config_path is None and args.data:  # a plain model folder: a config just for its data
            config_path = Path(scratch) / "evaluate.yml"
            spec = {"base_model": str(target), "datasets": [{"path": args.data, "type": args.type}]}
            config_path.write_text(yaml.safe_dump({**spec, "output_dir": str(Path(scratch) / "out")}))
        if config_path is not None:
            # the config says how the data was encoded; training's machine checks are not ours
            resolved = load_config(str(config_path), overrides, skip_machine_checks=True)
        model_path = str(target)
        if target.is_file():
            assert resolved is not None
            output_dir = resolved.config.output_dir
            model_path = output_dir if finished_model(output_dir) else resolved.config.base_model
            if model_path != output_dir:
                print(
                    f"note: {output_dir} holds no trained model yet; evaluating the base model",
                    file=sys.stderr,
                )
        return _evaluate(args, resolved, model_path, blocks)


def _evaluate(args: argparse.Namespace, resolved: Any, model_path: str, blocks: list[dict[str, Any]]) -> int:
    from trainer.cli.common import load_from
    from trainer.evaluation.context import RunContext
    from trainer.evaluation.run import chosen_evals, run_evals, table

    if resolved is not None:
        evals = chosen_evals(resolved)
        if not evals:
            evals = _default_evals(resolved)
    else:
        evals = _plain_evals(blocks)
    if not evals:
        raise ConfigErrors(
            [
                Problem(
                    ("evals",),
                    "nothing to evaluate: the config lists no evals and has no eval split; "
                    "give --data, --prompts or --lm-eval",
                )
            ]
        )
    args.run = model_path
    loaded = load_from(args)
    context = RunContext(resolved, loaded.model, loaded.tokenizer, loaded.name)
    try:
        results = run_evals(evals, context)
    except ValueError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return USER_ERROR
    print(f"evals of {loaded.name} ({loaded.description}):")
    for line in table({"value": results}):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model_path, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _default_evals(resolved: Any) -> list[tuple[str, Any]]:
    """The loss eval, when the config has an eval split and trains on prompt/answer rows."""
    from trainer.resolve.validate import plugin_for_block

    config = resolved.config
    if not config.test_datasets and config.val_set_size <= 0:
        return []
    if resolved.method.plugin.data[0] != "sft":
        return []
    plugin = plugin_for_block("evals", {"type": "loss"})
    return [("loss", plugin)] if plugin is not None else []


def _plain_evals(blocks: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Eval blocks for a model folder without a config: options validated, metrics looked up."""
    from pydantic import ValidationError

    from trainer.resolve.registry import PluginError, default_registry
    from trainer.resolve.validate import metric_problems

    registry = default_registry()
    problems, evals = [], []
    for i, block in enumerate(blocks):
        name = block["type"]
        try:
            cls: Any = registry.get("evals", name)
            plugin = cls(cls.Options.model_validate({k: v for k, v in block.items() if k != "type"}))
        except PluginError as err:
            problems.append(Problem(("evals", i), str(err)))
            continue
        except ValidationError as err:
            problems += [Problem(("evals", i, *e["loc"]), e["msg"]) for e in err.errors()]
            continue
        problems += [Problem(("evals", i), m) for m in plugin.missing_requirements()]
        problems += metric_problems(("evals", i), plugin, registry)
        evals.append((name, plugin))
    if problems:
        raise ConfigErrors(problems)
    return evals


if __name__ == "__main__":
    run(main)

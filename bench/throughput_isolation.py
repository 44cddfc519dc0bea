"""Isolation of packed examples in bench/throughput.py: the first batches of each packed trainer's
own train dataloader (TRL's packing, our sample_packing) through its `compute_loss` and through plain
model calls, each packed example's logits against the example run alone. `isolation_child` runs in
a child process (`throughput.py --child-isolation`), started by `check_isolation`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchlib import child_env, run_child
from throughput_common import Spec, our_config, self_command, trl_trainer
from throughput_probe import example_spans

ISOLATION_ATOL = 1e-4


def isolation_of(trainer: Any, batches: int) -> dict[str, Any]:
    """Max |logit error| of packed examples against each example alone, on the first `batches`
    batches of the trainer's own train dataloader, with the model called three ways:

    - `compute_loss`: the batch through `trainer.compute_loss` (logits from the decoder's last hidden
      states, caught by a hook, through the LM head), i.e. exactly as training calls the model;
    - `plain`: `model(**batch)` on the model as the trainer holds it (its `config.use_cache`);
    - `use_cache`: `model(**batch, use_cache=True)`, the default of a checkpoint loaded outside a
      Trainer (config.json `use_cache: true`).
    """
    import torch

    model = trainer.model.eval()
    pad_id = trainer.processing_class.pad_token_id
    caught: list[Any] = []
    hook = model.get_decoder().register_forward_hook(lambda m, a, out: caught.append(out.last_hidden_state))
    errors = {"compute_loss": 0.0, "plain": 0.0, "use_cache": 0.0}
    examples = rows = 0
    try:
        with torch.no_grad():
            for batch in itertools.islice(trainer.get_train_dataloader(), batches):
                caught.clear()
                trainer.compute_loss(model, dict(batch))
                plain = {k: v for k, v in batch.items() if k not in ("labels", "num_real_tokens")}
                logits = {
                    "compute_loss": model.get_output_embeddings()(caught[-1]),
                    "plain": model(**plain).logits,
                    "use_cache": model(**plain, use_cache=True).logits,
                }
                ids, positions = batch["input_ids"], batch["position_ids"]
                for row in range(ids.shape[0]):
                    rows += 1
                    for start, end in example_spans(ids[row], positions[row], pad_id):
                        alone = model(input_ids=ids[row : row + 1, start:end]).logits[0]
                        for key, got in logits.items():
                            error = (got[row, start:end] - alone).abs().max().item()
                            errors[key] = max(errors[key], error)
                        examples += 1
    finally:
        hook.remove()
    return {**errors, "examples": examples, "rows": rows, "config_use_cache": bool(model.config.use_cache)}


def isolation_child(specs: dict[str, Spec], batches: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import build_trainer

    out: dict[str, Any] = {}
    for label, spec in specs.items():
        if spec.side == "trl":
            trainer = trl_trainer(spec, [])
        else:
            config = Path(spec.output_dir) / "isolation.yml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(our_config(spec, probe=False), encoding="utf-8")
            trainer = build_trainer(load_config(str(config))).trainer
        out[label] = isolation_of(trainer, batches)
    return out


def check_isolation(specs: dict[str, Spec], work: Path, site: Path, args: argparse.Namespace) -> dict:
    """Check (b) and (d) for isolation in one child process; max errors by run label."""
    packed = {k: Spec(**{**asdict(specs[k]), "output_dir": str(work / "isolation" / k)}) for k in ("b", "d")}
    spec_file, result = work / "isolation.spec.json", work / "isolation.result.json"
    payload = {"batches": args.isolation_batches, "specs": {k: asdict(s) for k, s in packed.items()}}
    spec_file.write_text(json.dumps(payload), encoding="utf-8")
    env = child_env(args.threads, work / "hf-datasets" / "isolation", site)
    run_child(self_command("--child-isolation", spec_file, result), env, work / "isolation.log")
    return json.loads(result.read_text(encoding="utf-8"))

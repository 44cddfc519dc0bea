"""The probe of bench/throughput.py: what the model was fed, and the training loop's clock.

It runs inside the training processes: ours loads this file by its path from the probe plugin
(throughput_common.PLUGIN_MODULE), the TRL child imports it. It imports nothing from this folder.

With `BENCH_PROBE_EXIT=1` in the environment the process exits (status 0) right after the probe has
written its file at the end of training, skipping the final save (bench/gpu_suite.py: a 1B model's
checkpoint per case would cost seconds of a short GPU budget and measures nothing).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from typing import Any

PROBE_FILE = "bench_probe.json"
FED_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")


def probe_callback(path: str) -> Any:
    """A TrainerCallback that records every training batch the model is called with (references,
    no copies, no device syncs), the loop's wall and CPU time and the time after each optimizer
    step, and writes a summary to `path` at the end of training."""
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.batches: list[dict[str, Any]] = []
            self.steps: list[tuple[float, int]] = []  # (seconds since train begin, micro-batches so far)

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            if not torch.cuda.is_available():
                torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
            self.pad_id = processing_class.pad_token_id
            self.hook = model.register_forward_pre_hook(self.keep, with_kwargs=True)
            self.labels = None
            self.lm_loss = sys.modules.get("trainer.training.lm_loss")  # ours only; not imported here
            if self.lm_loss is not None:
                self.labelled_loss = self.lm_loss.labelled_loss
                self.lm_loss.labelled_loss = self.stash_labels
            self.start = (time.perf_counter(), time.process_time())

        def stash_labels(self, trainer, model, inputs, *args, **kwargs):
            """Ours on CPU calls the model without `labels` (trainer.training.lm_loss asks for the
            trained positions' logits only): keep them for the model call that follows."""
            self.labels = inputs.get("labels")
            return self.labelled_loss(trainer, model, inputs, *args, **kwargs)

        def keep(self, module, args, kwargs):
            if module.training:
                fed = {k: kwargs[k] for k in FED_KEYS if torch.is_tensor(kwargs.get(k))}
                if "labels" not in fed and torch.is_tensor(self.labels):
                    fed["labels"] = self.labels
                self.labels = None
                self.batches.append({k: v for k, v in fed.items() if v.dim() == 2})  # not 4D masks

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.steps.append((time.perf_counter() - self.start[0], len(self.batches)))

        def on_train_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
            self.hook.remove()
            if self.lm_loss is not None:
                self.lm_loss.labelled_loss = self.labelled_loss
            cuda = torch.cuda.is_available()
            record = {
                "loop_wall": wall,
                "loop_cpu": cpu,
                "steps": self.steps,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "max_memory": torch.cuda.max_memory_allocated() if cuda else 0,
                "max_reserved": torch.cuda.max_memory_reserved() if cuda else 0,
                **feed_stats(self.batches, self.pad_id),
            }
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            if os.environ.get("BENCH_PROBE_EXIT") == "1":
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

    return Probe()


def example_spans(ids: Any, positions: Any, pad_id: int) -> list[tuple[int, int]]:
    """(start, end) of each example in one row: split at restarting position ids (packed rows) or
    the right-padded real part (plain rows); blocks of padding are left out."""
    is_real = ids != pad_id
    if positions is None:
        return [(0, int(is_real.sum()))]
    starts = (positions == 0).nonzero().flatten().tolist()
    bounds = [*starts, len(ids)] if starts and starts[0] == 0 else [0, *starts, len(ids)]
    return [(s, e) for s, e in itertools.pairwise(bounds) if e > s and bool(is_real[s:e].any())]


def feed_stats(batches: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Token counts and example hashes of the batches a model was fed."""
    processed = real = trainable = mask_disagrees = 0
    digests: list[str] = []
    per_batch = []  # (real tokens, sum of squared example lengths) per micro-batch
    for batch in batches:
        ids, labels = batch["input_ids"].cpu(), batch["labels"].cpu()
        positions = batch["position_ids"].cpu() if "position_ids" in batch else None
        n_real = int((ids != pad_id).sum())
        if "attention_mask" in batch and int(batch["attention_mask"].sum()) != n_real:
            mask_disagrees += 1
        processed += ids.numel()
        real += n_real
        trainable += int((labels != -100).sum())
        squares = 0
        for row in range(ids.shape[0]):
            row_positions = None if positions is None else positions[min(row, positions.shape[0] - 1)]
            for start, end in example_spans(ids[row], row_positions, pad_id):
                data = ids[row, start:end].numpy().tobytes() + labels[row, start:end].numpy().tobytes()
                digests.append(hashlib.blake2b(data, digest_size=8).hexdigest())
                squares += (end - start) ** 2
        per_batch.append((n_real, squares))
    return {
        "micro_batches": len(batches),
        "processed": processed,
        "real": real,
        "trainable": trainable,
        "examples": len(digests),
        "example_set": hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16],
        "example_order": hashlib.sha256("".join(digests).encode()).hexdigest()[:16],
        "mask_disagrees": mask_disagrees,
        "per_batch": per_batch,
    }

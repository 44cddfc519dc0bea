"""`generation_eval`: held-out prompts scored before and after training, as a user would check them.

    callbacks:
      - type: generation_eval
        path: data/toy/eval.jsonl       # {"prompt": ..., "generation": ...} rows
        prompt_field: prompt
        answer_field: generation
        max_new_tokens: 16

At the start and at the end of training it reports, on the main process:
- `loss`: mean cross-entropy of the answer tokens (+ EOS) given the prompt, and
- `exact_match`: the share of greedy generations (stopped at EOS) equal to the answer, stripped.
Results are printed, logged to the trainer (`heldout_*` keys) and written to
`output_dir/generation_eval.json`. Prompts are tokenized as a user would at inference:
`tokenizer(prompt)`, with the tokenizer's own special tokens.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import Field

from trainer.api import Callback, Contribution, Options, TrainConfig


class GenerationEvalOptions(Options):
    path: str = Field(description="JSONL file of held-out rows")
    prompt_field: str = "prompt"
    answer_field: str = "completion"
    max_new_tokens: int = Field(32, gt=0)
    limit: int | None = Field(None, gt=0, description="Score only the first N rows")
    batch_size: int = Field(32, gt=0)
    show: int = Field(3, ge=0, description="Sample generations to print")


def read_pairs(path: str, prompt_field: str, answer_field: str, limit: int | None) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{number}  not a JSON line ({err.msg}): generation_eval reads JSONL rows "
                    f"with '{prompt_field}' and '{answer_field}'"
                ) from None
            if not isinstance(row, dict) or prompt_field not in row or answer_field not in row:
                raise ValueError(f"{path}:{number}  needs fields '{prompt_field}' and '{answer_field}'")
            pairs.append((row[prompt_field], row[answer_field]))
            if limit and len(pairs) >= limit:
                break
    return pairs


def score(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_new_tokens: int = 32, batch_size: int = 32
) -> dict[str, Any]:
    """Answer loss and greedy exact match of `model` on (prompt, answer) pairs."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    total_loss, total_tokens, correct, samples = 0.0, 0, 0, []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            prompts = [tokenizer(p).input_ids for p, _ in batch]
            answers = [[*tokenizer(a, add_special_tokens=False).input_ids, eos] for _, a in batch]
            # answer loss, right-padded
            seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            labels = torch.full((len(seqs), width), -100, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
                ids[i, : len(p) + len(a)] = torch.tensor(p + a)
                labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
                mask[i, : len(p) + len(a)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total_loss += losses.item()
            total_tokens += int((shift_labels != -100).sum())
            # greedy generation, left-padded
            width = max(map(len, prompts))
            gen_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            gen_mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for i, p in enumerate(prompts):
                gen_ids[i, width - len(p) :] = torch.tensor(p)
                gen_mask[i, width - len(p) :] = 1
            out = model.generate(
                input_ids=gen_ids.to(device),
                attention_mask=gen_mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            for (prompt, answer), row in zip(batch, out[:, width:], strict=True):
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                correct += text == answer.strip()
                samples.append({"prompt": prompt, "expected": answer, "generated": text})
    if was_training:
        model.train()
    return {
        "loss": total_loss / max(total_tokens, 1),
        "exact_match": correct / max(len(pairs), 1),
        "correct": correct,
        "total": len(pairs),
        "samples": samples,
    }


def make_callback(opts: GenerationEvalOptions) -> Any:
    from transformers import TrainerCallback

    class GenerationEvalCallback(TrainerCallback):
        def __init__(self) -> None:
            self.results: dict[str, dict[str, Any]] = {}

        def _run(self, when: str, args: Any, state: Any, model: Any, tokenizer: Any) -> None:
            if not state.is_world_process_zero:
                return
            pairs = read_pairs(opts.path, opts.prompt_field, opts.answer_field, opts.limit)
            result = score(model, tokenizer, pairs, opts.max_new_tokens, opts.batch_size)
            self.results[when] = result
            print(
                f"held-out [{when}] {opts.path}: answer loss {result['loss']:.4f}, exact match "
                f"{result['exact_match']:.1%} ({result['correct']}/{result['total']})",
                flush=True,
            )
            for sample in result["samples"][: opts.show]:
                print(
                    f"    {sample['prompt']!r} -> {sample['generated']!r} (expected {sample['expected']!r})"
                )
            state.log_history.append(
                {
                    f"heldout_{when}_loss": result["loss"],
                    f"heldout_{when}_exact_match": result["exact_match"],
                    "step": state.global_step,
                }
            )
            if when == "after":
                summary = {k: {m: v for m, v in r.items() if m != "samples"} for k, r in self.results.items()}
                summary["after"]["samples"] = result["samples"][:20]
                os.makedirs(args.output_dir, exist_ok=True)
                with open(os.path.join(args.output_dir, "generation_eval.json"), "w", encoding="utf-8") as f:
                    json.dump(summary, f, indent=2)
                if "before" in self.results:
                    before = self.results["before"]
                    print(
                        f"held-out before -> after: answer loss {before['loss']:.4f} -> "
                        f"{result['loss']:.4f}, "
                        f"exact match {before['exact_match']:.1%} -> {result['exact_match']:.1%}",
                        flush=True,
                    )

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._run("before", args, state, kw["model"], kw["processing_class"])

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._run("after", args, state, kw["model"], kw["processing_class"])

    return GenerationEvalCallback()


class GenerationEval(Callback[GenerationEvalOptions]):
    name = "generation_eval"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        """The rows are read here, at validate time, so a wrong file fails before training starts."""
        opts = self.options
        if not os.path.isfile(opts.path):
            return [("path", f"file '{opts.path}' does not exist")]
        try:
            read_pairs(opts.path, opts.prompt_field, opts.answer_field, opts.limit)
        except (ValueError, UnicodeDecodeError) as err:
            return [("path", str(err))]
        return []

    def contribute(self, config: TrainConfig) -> Contribution:
        return Contribution(callbacks=[make_callback(self.options)])

"""Real (tiny) training runs, offline, no mocks: the loss falls, the outputs reload to the same model,
gradient accumulation is token-weighted, output_dir is guarded, eval is logged (resume: test_long_runs).

Runs are kept to a few optimizer steps of a ~1M-parameter Llama. Torch runs single-threaded here: on
a small shared CPU box, two OpenMP threads contending with other processes make a step ~30x slower.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")

from plugins.attention import segments  # noqa: E402
from tests.conftest import logits_of, run_api, run_command, toy_config, write_yaml  # noqa: E402
from trainer.resolve.validate import load_config  # noqa: E402
from trainer.runtime.build import build_trainer  # noqa: E402
from trainer.runtime.run import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 300


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_command("train", *args, cwd=cwd)


def log_history(output_dir: Path) -> list[dict[str, Any]]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def train_losses(history: list[dict[str, Any]]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


def snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under a directory: size, mtime and content hash."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(directory))] = (
                stat.st_size,
                stat.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


def initial_state(model_dir: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- one full fine-tuning run shared by the output tests --------------------------------------


@pytest.fixture(scope="module")
def full_run(tiny_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("full")
    out = tmp / "out"
    built = run_api(tmp, toy_config(tiny_model, toy_data / "train.jsonl", out, max_steps=10))
    return built, out


def test_cli_full_finetune_loss_falls_and_rerun_is_refused(tiny_model, toy_data, tmp_path):
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path / "cfg.yml", toy_config(tiny_model, toy_data / "train.jsonl", out))
    done = run_cli(str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train loss: first logged" in done.stdout

    losses = train_losses(log_history(out))
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, losses  # random init ~5.5 nats -> ~3.3 in 12 steps

    # The same command again: output_dir is not empty, so it exits 2 and touches nothing.
    before = snapshot(out)
    again = run_cli(str(cfg), cwd=tmp_path)
    assert again.returncode == 2, again.stdout[-2000:] + again.stderr[-2000:]
    assert "output_dir" in again.stderr
    assert "Traceback" not in again.stderr
    assert snapshot(out) == before


def test_full_outputs_and_reload(full_run, tiny_model):
    from transformers import AutoModelForCausalLM

    built, out = full_run
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert {"config.resolved.yml", "trainer_state.json"} <= files
    assert "pytorch_model.bin" not in files
    assert not any(name.startswith(".") or name.endswith(".tmp") for name in files), files

    losses = train_losses(log_history(out))
    assert len(losses) == 10
    assert losses == [h["loss"] for h in built.trainer.state.log_history if "loss" in h]

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    trained = built.trainer.model
    assert torch.allclose(
        logits_of(reloaded, built.tokenizer), logits_of(trained, built.tokenizer), atol=1e-5
    )
    # ... and training did change the model (the comparison above is not base vs base).
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.allclose(
        logits_of(base, built.tokenizer), logits_of(trained, built.tokenizer), atol=1e-2
    )


def test_resolved_config_round_trips_and_reruns(full_run, tmp_path):
    _, out = full_run
    resolved_file = out / "config.resolved.yml"
    written = yaml.safe_load(resolved_file.read_text())
    assert written["overwrite_output_dir"] is False
    assert written["adapter"] == {"type": "full", "unfrozen_parameters": None}
    assert written["datasets"][0]["completion_field"] == "generation"

    resolved = load_config(str(resolved_file))
    assert resolved.to_dict() == written  # every default stated: loading it changes nothing

    # Re-run from the resolved file, into a copy of the run's directory, overwriting it.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    rerun = load_config(
        str(copy / "config.resolved.yml"), ["overwrite_output_dir=true", f"output_dir={copy}", "max_steps=2"]
    )
    assert rerun.to_dict() == {
        **written,
        "overwrite_output_dir": True,
        "output_dir": str(copy),
        "max_steps": 2,
    }
    built = train(rerun, log=lambda *_: None)
    assert built.trainer.state.global_step == 2
    assert len(train_losses(log_history(copy))) == 2  # the old history was replaced, not appended to
    assert yaml.safe_load((copy / "config.resolved.yml").read_text())["max_steps"] == 2
    assert (copy / "model.safetensors").is_file()


def test_lora_outputs_reload_and_only_adapters_train(tiny_model, toy_data, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    adapter = {"type": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"}
    config = toy_config(tiny_model, toy_data / "train.jsonl", out, adapter=adapter, max_steps=6)
    config["learning_rate"] = 1.0e-2
    built = run_api(tmp_path, config)

    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "config.resolved.yml"} <= files
    assert "model.safetensors" not in files and "pytorch_model.bin" not in files
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8

    trained = built.trainer.model
    assert isinstance(trained, PeftModel)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    assert torch.allclose(
        logits_of(reloaded, built.tokenizer), logits_of(trained, built.tokenizer), atol=1e-5
    )

    params = dict(trained.named_parameters())
    lora_b = {k: v for k, v in params.items() if "lora_B" in k}
    assert lora_b and all(v.abs().max() > 0 for v in lora_b.values())  # PEFT initialises B to zero
    assert all(v.requires_grad for k, v in params.items() if "lora_" in k)
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert len(saved) == len([k for k in params if "lora_" in k])

    # The base weights did not move.
    initial = initial_state(tiny_model)
    base_names = 0
    for name, value in trained.state_dict().items():
        if "lora_" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(value, initial[plain]), name
        base_names += 1
    assert base_names >= len(initial) - 1  # lm_head is tied to the embeddings


# ---- gradient accumulation ---------------------------------------------------------------------


def varied_rows(path: Path) -> Path:
    """8 rows whose trained parts differ a lot in length (2 .. 37 trained tokens)."""
    import random

    rng = random.Random(0)
    rows = []
    for length in (1, 36, 3, 20, 2, 28, 6, 12):
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length))
        rows.append({"prompt": f"Reverse: {word[:4]}\n", "generation": word})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_sgd_step(tmp: Path, model: Path, data: Path, micro: int, accumulation: int, **overrides: Any):
    """One optimizer step of plain SGD; returns (logged loss, weight update / lr, micro-batches seen)."""
    lr = 1.0
    config = toy_config(
        model,
        data,
        tmp / f"out-{micro}x{accumulation}",
        micro_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optimizer="sgd",
        learning_rate=lr,
        lr_scheduler="constant",
        max_grad_norm=0,
        weight_decay=0,
        **overrides,
    )
    config.pop("max_train_samples")  # all 8 rows
    resolved = load_config(str(write_yaml(tmp / f"cfg-{micro}x{accumulation}.yml", config)))
    built = build_trainer(resolved)
    seen: list[dict[str, Any]] = []
    compute_loss = built.trainer.compute_loss

    def record(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if model.training:
            kept = ("input_ids", "labels", "attention_mask", "position_ids")
            seen.append({k: v.clone() for k, v in inputs.items() if k in kept})
        return compute_loss(model, inputs, *args, **kwargs)

    model_obj = built.trainer.model
    before = {k: v.detach().clone() for k, v in model_obj.named_parameters()}
    built.trainer.compute_loss = record
    built.trainer.train()
    update = {k: (before[k] - v.detach()) / lr for k, v in model_obj.named_parameters()}
    loss = next(h["loss"] for h in built.trainer.state.log_history if "loss" in h)
    return loss, update, seen


def rows_of(batches: list[dict[str, Any]]) -> list[tuple[int, ...]]:
    rows = []
    for batch in batches:
        if "attention_mask" not in batch:  # padding-free: one flattened row, examples at position 0
            ids, positions = batch["input_ids"][0], batch["position_ids"][0]
            starts = [*(positions == 0).nonzero().flatten().tolist(), len(ids)]
            rows += [tuple(ids[a:b].tolist()) for a, b in itertools.pairwise(starts)]
            continue
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            rows.append(tuple(ids[mask.bool()].tolist()))
    return sorted(rows)


def relative_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    diff = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))
    return float(diff / torch.sqrt(sum((a[k] ** 2).sum() for k in a)))


@pytest.mark.parametrize("padding_free", [False, None])
def test_gradient_accumulation_is_token_weighted(full_run, tmp_path, padding_free):
    from transformers import AutoModelForCausalLM

    # Start from the briefly trained model: at random init every token costs ~ln(vocab), so any
    # weighting of micro-batches gives the same mean; after training, EOS is cheaper than letters and
    # short rows (mostly EOS) differ from long ones.
    _, start = full_run
    data = varied_rows(tmp_path / "varied.jsonl")
    step = functools.partial(one_sgd_step, tmp_path, start, data, padding_free=padding_free)
    loss_big, update_big, seen_big = step(micro=8, accumulation=1)
    loss_acc, update_acc, seen_acc = step(micro=2, accumulation=4)

    # Both runs saw the same 8 rows in their one step: 1 batch of 8 vs 4 micro-batches of 2. (The
    # Trainer's sampler is a permutation seeded by `seed` over a dataset of the same length, so it
    # is the same order in both; with exactly 8 rows any order gives the same step anyway.)
    assert len(seen_big) == 1 and len(seen_acc) == 4
    assert rows_of(seen_big) == rows_of(seen_acc)
    trained_counts = [int((b["labels"][:, 1:] != -100).sum()) for b in seen_acc]
    assert len(set(trained_counts)) > 1, trained_counts  # micro-batches differ in trained tokens

    assert loss_acc == pytest.approx(loss_big, rel=1e-4)
    assert relative_difference(update_big, update_acc) < 1e-4

    if padding_free is None:
        return  # the padded case below shows the check is meaningful
    # The check is meaningful: averaging the 4 micro-batch means (the classic accumulation bug)
    # gives a different loss and a different gradient on these rows.
    model = AutoModelForCausalLM.from_pretrained(start)
    sums, counts = [], []
    for batch in seen_acc:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        sums.append(
            torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
        )
        counts.append(int((labels != -100).sum()))
    weighted = (sum(sums) / sum(counts)).detach()
    naive = sum(s / c for s, c in zip(sums, counts, strict=True)) / len(sums)
    assert float(weighted) == pytest.approx(loss_big, rel=1e-4)
    # measured here: loss 3.6057 vs 3.5886 (0.5%), gradient 14% apart (accumulated run: 2e-7)
    assert abs(float(naive.detach()) - float(weighted)) / float(weighted) > 20 * 1e-4
    naive.backward()
    naive_grad = {k: v.grad for k, v in model.named_parameters()}
    assert relative_difference(update_big, naive_grad) > 5e-2


# ---- output_dir safety and resume ------------------------------------------------------------------


def test_api_refuses_non_empty_output_dir(tiny_model, toy_data, tmp_path):
    from trainer.config.errors import ConfigErrors

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = toy_config(tiny_model, toy_data / "train.jsonl", out, max_steps=1)
    with pytest.raises(ConfigErrors, match="not empty"):
        run_api(tmp_path, config)
    # overwrite_output_dir does not delete a folder that trainer did not write
    with pytest.raises(ConfigErrors, match="not written by trainer"):
        run_api(tmp_path, config, ["overwrite_output_dir=true"])
    assert os.listdir(out) == ["notes.txt"]


# ---- data limits, evaluation, attention -----------------------------------------------------------


def test_max_train_samples_is_honoured(tiny_model, toy_data, tmp_path):
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_train_samples=24, shuffle=False
    )
    config.pop("max_steps")
    built = run_api(tmp_path, config)
    assert len(built.train_dataset) == 24
    assert built.report.train_rows == 24
    assert built.trainer.state.global_step == 3  # 24 rows / micro batch 8, one epoch

    first_rows = [json.loads(line) for line in (toy_data / "train.jsonl").read_text().splitlines()[:24]]
    decoded = [
        built.tokenizer.decode(ids, skip_special_tokens=True) for ids in built.train_dataset["input_ids"]
    ]
    assert decoded == [row["prompt"] + row["generation"] for row in first_rows]


def test_val_set_size_logs_eval_loss_at_start_and_end(tiny_model, toy_data, tmp_path):
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_train_samples=16, val_set_size=8
    )
    config.pop("max_steps")
    built = run_api(tmp_path, config)
    assert len(built.train_dataset) == 16 and len(built.eval_dataset) == 8
    history = built.trainer.state.log_history
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    assert [step for step, _ in evals] == [0, 2], evals
    assert evals[-1][1] < evals[0][1]
    assert [h["step"] for h in log_history(tmp_path / "out") if "eval_loss" in h] == [0, 2]


def test_eager_and_sdpa_attention_train_alike(tiny_model, toy_data, tmp_path):
    first_losses = {}
    for attention in ("eager", "sdpa"):
        config = toy_config(
            tiny_model, toy_data / "train.jsonl", tmp_path / attention, attention=attention, max_steps=2
        )
        built = run_api(tmp_path, config, name=f"{attention}.yml")
        model_config = built.trainer.model.config
        assert (
            model_config._attn_implementation
            == {"eager": "eager", "sdpa": segments.ATTENTION_NAME}[attention]
        )
        losses = train_losses(built.trainer.state.log_history)
        assert len(losses) == 2
        first_losses[attention] = losses[0]
    assert first_losses["eager"] == pytest.approx(first_losses["sdpa"], abs=1e-4)


def test_the_final_summary_counts_the_steps_after_the_last_log(tiny_model, toy_data, tmp_path):
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "o", max_steps=5, logging_steps=2)
    built = run_api(tmp_path, config)
    history = built.trainer.state.log_history
    logged = [h["num_tokens"] for h in history if "loss" in h]
    final = next(h for h in history if "train_runtime" in h)
    assert len(logged) == 3  # steps 1 (logging_first_step), 2 and 4: not step 5
    assert final["num_tokens"] == built.trainer._real_tokens > logged[-1]

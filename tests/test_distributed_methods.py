"""Preference methods on several processes on CPU (gloo): DPO with full training (a frozen reference
copy) and with LoRA (the reference is the model with its adapter off), under DDP, FSDP2 and ZeRO-3;
QLoRA, alone and under FSDP2; KTO and SimPO once each.

As for SFT (tests/test_distributed.py), 2 processes x micro-batch 2 must equal 1 process x micro-batch
4: the same per-step losses and final weights, saved whole. The DPO loss is a mean over the pairs of a
micro-batch (not token-weighted), and every backend averages the processes' gradients, so equal
micro-batches per process give the mean over the same 4 pairs, however their lengths differ. SGD with
momentum, constant learning rate and no clipping keep every step's update comparable. Every run also
scores 8 held-out pairs (eval loss and `preference_accuracy`, measured on every process at the start
and end), and the multi-process runs write checkpoints.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_api, write_yaml
from tests.test_distributed import adapter_weights, assert_same_model, sgd_config, train, weights

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]  # they use both cores: one at a time

STEPS = 4
LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
QLORA = {**LORA, "type": "qlora"}
ADAPTERS: dict[str, tuple[Any, float]] = {"full": ("full", 0.1), "lora": (LORA, 0.05), "qlora": (QLORA, 0.05)}
"""Each adapter's block and learning rate (a full model moves much faster under SGD)."""

BACKENDS = {
    "ddp": ({"type": "ddp"}, "DDP", "100%"),
    "fsdp2": ({"type": "fsdp", "version": 2}, "FSDP2 (full_shard)", "50%"),
    "zero3": ({"type": "deepspeed", "stage": 3}, "DeepSpeed ZeRO-3", "50%"),
}
"""Each backend's block, the name the run reports, and the share of the weights process 0 holds."""

RUN_FILES = {"config.resolved.yml", "tokenizer.json", "tokenizer_config.json", "trainer_state.json"}
RUN_FILES |= {"training_args.bin", "training_curves.png", "checkpoint-2", "checkpoint-4", "README.md"}
SAVED = {
    "full": {"config.json", "generation_config.json", "model.safetensors"},
    "lora": {"adapter_config.json", "adapter_model.safetensors"},
}


def pairs(path: Path, n: int, seed: int) -> Path:
    """Pairs whose prompts, chosen and rejected completions all differ in length (1 to 36 characters
    each), so a micro-batch is padded and each sequence's summed log-prob weighs differently."""
    rng = random.Random(seed)
    lengths = [1, 36, 3, 20, 2, 28, 6, 12, 9, 30, 4, 16, 7, 22, 5, 14]

    def word(length: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length))

    rows = []
    for i in range(n):
        chosen = word(lengths[i % len(lengths)])
        rejected = word(lengths[(5 * i + 3) % len(lengths)])
        prompt = f"Reverse: {word(1 + i % 6)}\n"
        rows.append({"prompt": prompt, "chosen": chosen[::-1].upper(), "rejected": rejected})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    return {"train": pairs(folder / "train.jsonl", 16, 0), "eval": pairs(folder / "eval.jsonl", 8, 1)}


def method_config(
    model: Path, data: dict[str, Path], out: Path, adapter: str, method: Any = "dpo", **overrides: Any
) -> dict[str, Any]:
    """STEPS steps of SGD over the 16 training pairs (one epoch at 4 pairs a step); the 8 held-out
    pairs evaluated at the start and the end (4 per process-step: equal batches everywhere)."""
    block, learning_rate = ADAPTERS[adapter]
    config = sgd_config(
        model,
        data["train"],
        out,
        method=method,
        datasets=[{"path": str(data["train"]), "type": "preference"}],
        test_datasets=[{"path": str(data["eval"]), "type": "preference"}],
        adapter=block,
        learning_rate=learning_rate,
    )
    config.update(overrides)
    return config


def history(out: Path) -> list[dict[str, Any]]:
    return list(json.loads((out / "trainer_state.json").read_text())["log_history"])


def logged(out: Path, key: str) -> list[float]:
    return [h[key] for h in history(out) if key in h]


def assert_same_curves(out: Path, reference: Path, keys: tuple[str, ...] = ("rewards/margins",)) -> None:
    """Per step: the same loss (rel 1e-5, the SFT tests' tolerance; measured <= 1.1e-6), the same real
    tokens counted over all processes, the same method metrics; the same held-out eval loss and
    preference accuracy at the start and the end."""
    assert [h["step"] for h in history(out) if "loss" in h] == list(range(1, STEPS + 1))  # logged once
    assert logged(out, "loss") == pytest.approx(logged(reference, "loss"), rel=1e-5)
    assert logged(out, "num_tokens") == logged(reference, "num_tokens")
    for key in keys:
        assert logged(out, key) == pytest.approx(logged(reference, key), rel=1e-4, abs=1e-6), key
    assert len(logged(out, "eval_loss")) == 2
    assert logged(out, "eval_loss") == pytest.approx(logged(reference, "eval_loss"), rel=1e-5)
    accuracy = logged(out, "preference_accuracy")
    assert len(accuracy) == 2 and accuracy == logged(reference, "preference_accuracy")


def assert_same_adapter(out: Path, reference: Path, model: Path) -> None:
    """Every adapter tensor whole (the single process's shapes, not one process's shard) and equal to
    the single process's; B starts at zero, so a moved B shows the adapters trained; the folder loads
    with PEFT."""
    got, expected = adapter_weights(out), adapter_weights(reference)
    assert {k: tuple(t.shape) for k, t in got.items()} == {k: tuple(t.shape) for k, t in expected.items()}
    assert max(float(t.abs().max()) for k, t in expected.items() if "lora_B" in k) > 1e-3
    for key, tensor in expected.items():
        assert torch.allclose(got[key], tensor, atol=1e-5, rtol=0), key
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), out).state_dict()
    for key, tensor in expected.items():  # PEFT names the loaded tensors by adapter: lora_B.default.weight
        assert torch.allclose(loaded[key.replace(".weight", ".default.weight")], tensor, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def single(tiny_model: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """One process, micro-batch 4 (run in this process, once per setting): `single(adapter, method,
    padding_free)` is the output folder the 2-process runs must equal."""
    done: dict[tuple[str, str, bool], Path] = {}

    def run(adapter: str, method: Any = "dpo", padding_free: bool = True) -> Path:
        key = (adapter, json.dumps(method), padding_free)
        if key not in done:
            tmp = tmp_path_factory.mktemp(f"single-{adapter}")
            config = method_config(
                tiny_model, data, tmp / "out", adapter, method, micro_batch_size=4, padding_free=padding_free
            )
            run_api(tmp, config)
            done[key] = tmp / "out"
        return done[key]

    return run


@pytest.fixture(scope="module")
def start_weights(tiny_model: Path) -> dict[str, Any]:
    return weights(tiny_model)


def run_two(tmp_path: Path, config: dict[str, Any], backend: str, saved: str) -> Path:
    """The train command with 2 processes of `backend`, checkpoints every 2 steps: it must report the
    backend it wrapped and the share of the weights process 0 holds (read after the held-out pairs
    were scored on every process), and save the final outputs (`saved`: full or lora) once."""
    block, shown, held = BACKENDS[backend]
    out = Path(config["output_dir"])
    config["distributed"] = {**block, "num_processes": 2}
    config.update(save_strategy="steps", save_steps=2)
    done = train(write_yaml(tmp_path / "cfg.yml", config), cwd=tmp_path)
    assert f"parallel: {shown} on 2 process(es); process 0 holds {held} of the weights" in done.stdout
    assert done.stdout.count("train loss: first logged") == 1  # reported by the main process only
    ds_json = {"deepspeed_config.json"} if block["type"] == "deepspeed" else set()
    assert set(os.listdir(out)) == RUN_FILES | SAVED[saved] | ds_json
    return out


CASES = {
    "full-ddp-padded": ("full", "ddp", False),
    "full-fsdp2": ("full", "fsdp2", True),
    "full-zero3": ("full", "zero3", True),
    "lora-ddp": ("lora", "ddp", True),
    "lora-fsdp2": ("lora", "fsdp2", True),
    "lora-zero3": ("lora", "zero3", True),
}
"""adapter, backend, padding_free. Padding-free is the default (and where the backbone hooks meet the
wrapped models); one case runs TRL's padded batches. Under DDP the policy and the reference run
unwrapped, as on one process, so DDP carries the padded case."""


@pytest.mark.parametrize("case", CASES)
def test_dpo_on_two_processes_equals_one(tiny_model, data, single, start_weights, tmp_path, case):
    """DPO, 2 processes x micro-batch 2 == 1 process x 4: per-step losses, token counts, reward margins,
    held-out eval loss and preference accuracy, and the final weights, saved whole (full:
    model.safetensors that from_pretrained loads; LoRA: the adapter with whole tensors, loaded by
    PEFT). The frozen reference copy runs under each backend as TRL prepares it (a DeepSpeed inference
    engine, an FSDP2 module); the adapter-off reference is the same wrapped model. The full FSDP2 run
    then resumes from its step-2 checkpoint (sharded) to the same losses, token counts and weights."""
    adapter, backend, padding_free = CASES[case]
    if backend == "zero3":
        pytest.importorskip("deepspeed", reason="needs the deepspeed extra: pip install 'trainer[deepspeed]'")
    reference = single(adapter, padding_free=padding_free)
    config = method_config(tiny_model, data, tmp_path / "out", adapter, padding_free=padding_free)
    out = run_two(tmp_path, config, backend, adapter)
    assert_same_curves(out, reference)
    if adapter == "lora":
        assert_same_adapter(out, reference, tiny_model)
        return
    assert_same_model(out, weights(reference), start_weights)  # every tensor whole, and the same
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key, tensor in weights(reference).items():
        assert torch.allclose(loaded[key], tensor, atol=2e-5, rtol=0), key

    if backend == "fsdp2":  # pre-empted after step 2: resume in place from the run's own config
        first_weights, first = weights(out), history(out)
        (out / "checkpoint-4").rename(tmp_path / "checkpoint-4")
        resumed = train(out / "config.resolved.yml", "resume=auto", cwd=tmp_path)
        assert f"resuming from {out / 'checkpoint-2'}" in resumed.stdout
        after = history(out)
        for key in ("loss", "num_tokens"):  # TRL's num_tokens used to restart at 0
            steps = [h for h in after if key in h]
            assert [h["step"] for h in steps] == list(range(1, STEPS + 1))
            assert [h[key] for h in steps][2:] == pytest.approx(
                [h[key] for h in first if key in h][2:], rel=1e-6
            )
        for key, tensor in weights(out).items():
            assert torch.allclose(tensor, first_weights[key], atol=1e-6, rtol=0), key


@pytest.fixture(scope="module")
def single_qlora(tiny_model: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """DPO with QLoRA on one process, micro-batch 4, run in this process: (the built run, its output)."""
    pytest.importorskip("bitsandbytes")
    tmp = tmp_path_factory.mktemp("single-qlora")
    built = run_api(tmp, method_config(tiny_model, data, tmp / "out", "qlora", micro_batch_size=4))
    return built, tmp / "out"


def completion_logps(model: Any, batch: dict[str, Any]) -> Any:
    """Summed log-probabilities of each sequence's completion tokens, by hand from the logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    taken = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (taken * batch["completion_mask"][:, 1:]).sum(-1)


def test_qlora_dpo_on_one_process(tiny_model, single_qlora):
    """DPO with QLoRA: the base is 4-bit, only the float32 adapters train, the loss falls; the reference
    (the adapter switched off) is a freshly loaded 4-bit base, while the trained policy moved away from
    it; the saved adapter, on a fresh 4-bit base, computes what the trained model does."""
    from bitsandbytes.nn import Linear4bit
    from peft import PeftModel

    from tests.test_qlora import quantized_base

    built, out = single_qlora
    trainer, model = built.trainer, built.trainer.model
    assert any(isinstance(m, Linear4bit) for m in model.modules())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    losses = logged(out, "loss")
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.1, losses  # measured 0.693 -> 0.473

    batch = next(iter(trainer.get_train_dataloader()))
    reference = torch.cat(trainer.compute_ref_log_probs(model, dict(batch)))
    by_hand = completion_logps(quantized_base(tiny_model, out).eval(), batch)
    torch.testing.assert_close(reference, by_hand, rtol=1e-5, atol=1e-5)
    model.eval()
    policy = completion_logps(model, batch)
    assert (policy - reference).abs().max() > 0.05  # the adapter moved the log-probs

    reloaded = PeftModel.from_pretrained(quantized_base(tiny_model, out), out).eval()
    torch.testing.assert_close(completion_logps(reloaded, batch), policy, rtol=1e-5, atol=1e-4)


def test_qlora_dpo_under_fsdp2_equals_one_process(tiny_model, data, single_qlora, tmp_path):
    """FSDP2 + 4-bit QLoRA + DPO on 2 processes (the combination Axolotl lists as incompatible): the
    4-bit weights, stored in the compute dtype, shard with the rest (process 0 holds half), and the
    run equals one process's QLoRA run, whose 4-bit weights are stored as uint8 (same losses and
    adapter, whole tensors, loading with PEFT)."""
    _, reference = single_qlora
    config = method_config(tiny_model, data, tmp_path / "out", "qlora")
    out = run_two(tmp_path, config, "fsdp2", "lora")
    assert_same_curves(out, reference)
    assert_same_adapter(out, reference, tiny_model)


OTHERS = {
    "kto-full-fsdp2": ({"type": "kto", "loss_type": "apo_zero_unpaired"}, "full", "fsdp2"),
    "simpo-lora-zero3": ({"type": "simpo"}, "lora", "zero3"),
}
"""KTO with its frozen reference copy (apo_zero_unpaired: the default kto loss's KL term pairs rows
within a micro-batch, so 2 x 2 and 1 x 4 rows give different, equally valid estimates), and SimPO
(reference-free, TRL's CPO trainer with our tokenize_row). ORPO adds an SFT loss averaged over a
micro-batch's tokens, so 2 x 2 equals 1 x 4 only for equal token counts: it is not compared."""


@pytest.mark.parametrize("case", OTHERS)
def test_kto_and_simpo_on_two_processes_equal_one(tiny_model, data, single, start_weights, tmp_path, case):
    """KTO (each pair split into a desirable and an undesirable row; a frozen reference copy under
    FSDP2) and SimPO (LoRA under ZeRO-3), 2 processes x micro-batch 2 == 1 process x 4: the same
    losses, token counts and eval loss (SimPO: also its reward margins and the pair accuracy), and the
    same weights, saved whole."""
    method, adapter, backend = OTHERS[case]
    if backend == "zero3":
        pytest.importorskip("deepspeed", reason="needs the deepspeed extra: pip install 'trainer[deepspeed]'")
    reference = single(adapter, method)
    config = method_config(tiny_model, data, tmp_path / "out", adapter, method)
    out = run_two(tmp_path, config, backend, adapter)
    if method["type"] == "kto":  # it evaluates unpaired rows: no pair accuracy
        assert logged(out, "loss") == pytest.approx(logged(reference, "loss"), rel=1e-5)
        assert logged(out, "num_tokens") == logged(reference, "num_tokens")
        assert logged(out, "eval_loss") == pytest.approx(logged(reference, "eval_loss"), rel=1e-5)
    else:
        assert_same_curves(out, reference)
    if adapter == "lora":
        assert_same_adapter(out, reference, tiny_model)
    else:
        assert_same_model(out, weights(reference), start_weights)

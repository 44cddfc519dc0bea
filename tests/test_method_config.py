"""`method:` at validate time: every combination a method cannot run is refused with its reason at
its line, Axolotl's keys point to ours, trainer_args are checked against the method's TRL config, and
bad preference rows are located by file:line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_config_errors import cli, errors_of
from trainer.config.errors import ConfigErrors
from trainer.resolve.validate import load_config


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n', encoding="utf-8")
    return path


def problems(write_config, text: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    cfg = write_config(text)
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(cfg))
    return [(p.where.rsplit(":", 1)[-1], p.render()) for p in caught.value.problems]


def test_each_refused_combination_names_its_line_and_reason(
    write_config, tiny_model, pairs, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    found = problems(
        write_config,
        f"""
        base_model: {tiny_model}
        method:
          type: dpo
          reference: adapter_off
          loss_type: [sigmoid, sft]
          loss_weights: [1.0]
        datasets:
          - path: {pairs}
            type: prompt_completion
          - path: {pairs}
            type: preference
        neftune_noise_alpha: 5
        group_by_length: true
        kernels: [liger]
        output_dir: {tmp_path / "out"}
        """,
    )
    lines: dict[str, str] = {}
    for line, text in found:
        lines[line] = lines.get(line, "") + text
    assert "adapter_off needs a PEFT adapter (lora, qlora); 'full' trains the base weights" in lines["4"]
    assert "has 1 weights for 2 loss types" in lines["6"]
    assert (
        "formatter 'prompt_completion' gives sft rows, but method 'dpo' trains on preference rows"
        in lines["9"]
    )
    assert "use type: preference" in lines["9"]
    assert "neftune_noise_alpha: has no effect with method 'dpo'" in lines["12"]
    assert "group_by_length: has no effect with method 'dpo'" in lines["13"]
    assert "computes its own loss" in lines["14"]


@pytest.mark.parametrize(
    "extra,line_key,expected",
    [
        ("method: {type: kto}\nmicro_batch_size: 1", "method", "set micro_batch_size to 2 or more"),
        ("method: {type: kto}\nmicro_batch_size: 4\nsample_packing: true", "method.loss_type",
         "packed micro-batches of changing size"),
        ("method: {type: dpo}\nattention: eager\nsample_packing: true", "sample_packing",
         "which attention 'eager' cannot keep apart"),
        ("method: {type: reward}\nsample_packing: true", "sample_packing", "runs padded batches only"),
        ("method: {type: dpo, loss_type: sigmoidd}", "method.loss_type", "unknown DPO loss 'sigmoidd'"),
        ("method: {type: dpo, beta: 0}", "method.beta", "greater than 0"),
        ("method: {type: dpoo}", "method.type", "unknown method 'dpoo' (did you mean 'dpo'?)"),
        ("method: dpo\ntrainer_args: {beta: 0.2}", "trainer_args.beta", "set this in the method block"),
        ("method: dpo\ntrainer_args: {packing: true}", "trainer_args.packing", "not a trl.DPOConfig field"),
    ],
)  # fmt: skip
def test_method_refusals(write_config, tiny_model, pairs, tmp_path, extra, line_key, expected) -> None:  # type: ignore[no-untyped-def]
    extra_lines = "\n".join("        " + line for line in extra.splitlines())
    found = problems(
        write_config,
        f"""
        base_model: {tiny_model}
        datasets:
          - path: {pairs}
            type: preference
        output_dir: {tmp_path / "out"}
{extra_lines}
        """,
    )
    assert any(expected in text and f"  {line_key}:" in f"  {text}" for _, text in found), found


def test_axolotl_preference_keys_point_to_the_method_block(write_config, tiny_model, pairs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        f"""
        base_model: {tiny_model}
        rl: dpo
        dpo_beta: 0.05
        reward_model: true
        datasets:
          - path: {pairs}
            type: preference
        output_dir: {tmp_path / "out"}
        """
    )
    errors = errors_of(cli("validate", cfg))
    assert errors == [
        f"{cfg}:2  rl: unknown key 'rl': here it is `method: dpo` (dpo, kto, orpo, simpo, grpo; ipo is "
        "method: {type: dpo, loss_type: ipo})",
        f"{cfg}:3  dpo_beta: unknown key 'dpo_beta': here it is `method: {{type: dpo, beta: 0.05}}`",
        f"{cfg}:4  reward_model: unknown key 'reward_model': here it is `method: reward`",
    ]


def test_sft_refuses_preference_rows(write_config, tiny_model, pairs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    found = problems(
        write_config,
        f"""
        base_model: {tiny_model}
        datasets:
          - path: {pairs}
            type: preference
        output_dir: {tmp_path / "out"}
        """,
    )
    assert found == [
        ("4", f"{found[0][1].split('  ')[0]}  datasets[0].type: formatter 'preference' gives preference "
         "rows, but method 'sft' trains on sft rows: use an SFT formatter (prompt_completion, alpaca, "
         "chat_template, ...)"),
    ]  # fmt: skip


def test_bad_pairs_are_located_and_skipped_or_fatal(write_config, tiny_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Reverse: ab\nAnswer: ", "chosen": "BA", "rejected": "ba"},
        {"prompt": "Reverse: cd\nAnswer: ", "chosen": "dc", "rejected": "dc"},
        {"prompt": "x" * 80, "chosen": "A", "rejected": "B"},
        {"prompt": "Reverse: ef\nAnswer: ", "chosen": "FE"},
        {"prompt": "Reverse: gh\nAnswer: ", "chosen": "HG", "rejected": "hg" * 40},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    text = f"""
        base_model: {tiny_model}
        method: dpo
        datasets:
          - path: {data}
            type: preference
        sequence_len: 48
        on_bad_rows: skip
        output_dir: {tmp_path / "out"}
        """
    cfg = write_config(text)
    result = cli("preprocess", cfg, "--show", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{data}:2\ndropped (bad): chosen and rejected are the same, so the pair prefers nothing" in out
    no_room = "the prompt has 81 tokens, leaving no room for the completions in sequence_len 48"
    assert f"{data}:3\ndropped (bad): {no_room}" in out
    assert f"{data}:4\ndropped (bad): missing field 'rejected'" in out
    assert f"{data}:5\ndropped (too long)" in out
    assert f"{data}:1 chosen: 24 tokens, 3 trained\n<s>Reverse: ab\nAnswer: [[BA</s>]]" in out
    assert f"{data}:1 rejected: 24 tokens, 3 trained\n<s>Reverse: ab\nAnswer: [[ba</s>]]" in out
    fatal = write_config(text.replace("on_bad_rows: skip", "on_bad_rows: fail"), name="fatal.yml")
    failed = cli("preprocess", fatal)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"data error: {data}:2  chosen and rejected are the same" in failed.stderr


def test_memory_estimate_counts_the_reference_copy_and_both_sequences(
    write_config, tiny_model, pairs, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Full DPO holds a frozen copy of the base (its weights once more; no gradients or optimizer
    state); under LoRA the reference is the adapter switched off (nothing more). A pair puts two
    sequences through the model, so the activations double."""
    from trainer.resolve.memory import estimate

    def estimated(method: str, adapter: str) -> Any:
        cfg = write_config(
            f"""
            base_model: {tiny_model}
            method: {method}
            adapter: {adapter}
            datasets:
              - path: {pairs}
                type: {"preference" if method != "sft" else "prompt_completion"}
            output_dir: {tmp_path / "out"}
            """,
            name=f"{method}-{adapter}.yml",
        )
        return estimate(load_config(str(cfg)))

    sft, dpo = estimated("sft", "full"), estimated("dpo", "full")
    base_bytes = sum(p.numel() * p.element_size() for p in _weights(tiny_model))
    assert dpo.weights == pytest.approx(sft.weights + base_bytes)
    assert (dpo.gradients, dpo.optimizer) == (sft.gradients, sft.optimizer)
    assert dpo.activations == 2 * sft.activations
    lora_sft, lora_dpo = estimated("sft", "lora"), estimated("dpo", "lora")
    assert lora_dpo.weights == lora_sft.weights  # the adapter switched off: no second copy
    assert estimated("orpo", "full").weights == sft.weights  # reference-free


def _weights(model: Path) -> list[Any]:
    from safetensors.torch import load_file

    return list(load_file(str(model / "model.safetensors")).values())

"""Padding-free batches and the tiled sdpa kernel (plugins.attention.segments): a flattened row's
logits equal each example alone (plain, grouped-query and sliding-window models, with and without a
cache, tiles of every shape), a padding-free step has the padded step's gradients and loss, and
everything that is not a flattened row (generation with left padding) runs as transformers' sdpa."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from plugins.attention import segments  # noqa: E402
from tests.conftest import run_api, run_command, write_yaml  # noqa: E402
from tests.test_packing import (  # noqa: E402
    ISOLATION_ATOL,
    one_step_config,
    random_examples,
    varied_data,
    weight_change,
)
from trainer.data.collate import Collator  # noqa: E402


def test_examples_are_grouped_into_tiles_at_their_boundaries():
    bounds = [0, 51, 113, 226, 281, 496, 511, 588, 608]
    assert segments.group_examples(bounds, 128) == [(0, 113), (113, 226), (226, 281), (281, 496), (496, 608)]
    assert segments.group_examples(bounds, 10_000) == [(0, 608)]
    assert segments.group_examples(bounds, 1) == list(itertools.pairwise(bounds))
    assert segments.group_examples([0, 7], 4) == [(0, 7)]  # one example longer than a tile
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert segments.example_bounds(positions) == [[0, 3, 5, 6, 8], [0, 8]]


def llama(kv_heads: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=256,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def mistral_with_window() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, max_position_embeddings=256,
    )  # fmt: skip
    return MistralForCausalLM(config).eval()


@pytest.mark.parametrize("tile_tokens", [1, 16, 40, 4096])
@pytest.mark.parametrize(
    "make", [lambda: llama(4), lambda: llama(2), mistral_with_window], ids=["mha", "gqa", "window"]
)
@pytest.mark.parametrize("use_cache", [False, True])
def test_a_flattened_row_gives_each_example_its_own_logits(monkeypatch, tile_tokens, make, use_cache):
    model = make()
    monkeypatch.setitem(segments.TILE_TOKENS, "cpu", tile_tokens)
    examples = random_examples(64, [9, 30, 5, 18, 11, 2, 25])
    features = [{"input_ids": ex, "labels": ex} for ex in examples]
    batch = Collator(pad_token_id=0, packed_inputs="position_ids", padding_free=True, pad_to=20)(features)
    assert batch["input_ids"].shape == (1, 7 * 20)  # padding after the examples: its own block
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        alone = [model(input_ids=torch.tensor([ex])).logits[0] for ex in examples]
        model.set_attn_implementation(segments.register())
        inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
        flat = model(**inputs, use_cache=use_cache).logits[0]
    worst, offset = 0.0, 0
    for ex, expected in zip(examples, alone, strict=True):
        worst = max(worst, (flat[offset : offset + len(ex)] - expected).abs().max().item())
        offset += len(ex)
    assert worst < ISOLATION_ATOL, worst
    # the check can fail: as one plain causal row, the second example sees the first
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        joined = model(input_ids=torch.tensor([examples[0] + examples[1]])).logits[0, 9:]
    assert (joined - alone[1]).abs().max().item() > 1e-3


def test_generation_with_left_padding_is_transformers_sdpa(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.padding_side, tokenizer.pad_token = "left", tokenizer.eos_token
    prompts = tokenizer(["Reverse the word: hello\nAnswer: ", "Hi\n"], return_tensors="pt", padding=True)
    outputs = {}
    for name in ("sdpa", segments.register()):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=name).eval()
        with torch.no_grad():
            outputs[name] = model.generate(**prompts, max_new_tokens=12, do_sample=False, output_logits=True,
                                           return_dict_in_generate=True)  # fmt: skip
    plain, tiled = outputs.values()
    assert torch.equal(plain.sequences, tiled.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(plain.logits, tiled.logits, strict=True)) < 1e-5


def test_a_padding_free_step_has_the_gradients_and_loss_of_a_padded_one(tiny_model, tmp_path):
    data = varied_data(tmp_path / "varied.jsonl")
    padded = run_api(
        tmp_path,
        one_step_config(tiny_model, data, tmp_path / "padded", padding_free=False),
        name="padded.yml",
    )
    flat = run_api(tmp_path, one_step_config(tiny_model, data, tmp_path / "flat"), name="flat.yml")
    batch = next(iter(flat.trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    padded_delta, flat_delta = weight_change(padded, tiny_model), weight_change(flat, tiny_model)
    scale = max(delta.abs().max().item() for delta in padded_delta.values())
    worst = max((padded_delta[n] - flat_delta[n]).abs().max().item() for n in padded_delta)
    assert scale > 1e-2 and worst < 1e-5 * max(1.0, scale), (worst, scale)
    first = {
        key: next(h for h in built.trainer.state.log_history if "loss" in h)
        for key, built in (("padded", padded), ("flat", flat))
    }
    assert first["padded"]["loss"] == pytest.approx(first["flat"]["loss"], rel=1e-5)
    assert first["flat"]["padding_efficiency"] == 1.0 > 0.8 > first["padded"]["padding_efficiency"]
    saved = json.loads((tmp_path / "flat" / "config.json").read_text(encoding="utf-8"))
    assert segments.ATTENTION_NAME not in json.dumps(saved)  # loads anywhere as a plain model


def test_padding_free_needs_a_kernel_that_reads_flattened_rows(tiny_model, toy_data, tmp_path: Path):
    from tests.conftest import toy_config

    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "o", attention="eager", padding_free=True
    )
    result = run_command("validate", write_yaml(tmp_path / "c.yml", config))
    assert result.returncode == 2
    assert "padding_free" in result.stderr and "eager" in result.stderr and "Traceback" not in result.stderr
    config["padding_free"] = None
    assert run_command("validate", write_yaml(tmp_path / "c.yml", config)).returncode == 0

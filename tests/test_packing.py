"""Sample packing: the bin packing, the collated batches, isolation of packed examples (logits of a
packed row equal each example alone) and equivalence of training with and without packing (same
gradients, same loss), on real tiny models."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import run_api, toy_config, write_yaml  # noqa: E402
from trainer.data.collate import Collator  # noqa: E402
from trainer.data.packing import PackedDataset, PackingPlan  # noqa: E402
from trainer.resolve.validate import load_config  # noqa: E402
from trainer.runtime.build import collated_datasets, packed_inputs_for  # noqa: E402

ISOLATION_ATOL = 1e-4


def long_tailed_lengths(n: int, cap: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(cap, max(2, int(rng.lognormvariate(4.0, 0.9)))) for _ in range(n)]


# ---- the plan -------------------------------------------------------------------------------------


def test_best_fit_decreasing_uses_every_example_once_and_fills_rows():
    lengths = long_tailed_lengths(5000, 512)
    plan = PackingPlan.best_fit_decreasing(lengths, 512)
    rows = plan.rows(seed=7)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert [sorted(lengths[i] for i in row) for row in rows] == [sorted(slots) for slots in plan.slots]
    lower_bound = -(-sum(lengths) // 512)
    assert len(rows) <= lower_bound + 1, (len(rows), lower_bound)
    assert plan.efficiency >= 0.99


def test_rows_are_deterministic_by_seed_and_change_between_epochs():
    lengths = long_tailed_lengths(2000, 256)
    plan = PackingPlan.best_fit_decreasing(lengths, 256)
    assert plan.rows(3) == PackingPlan.best_fit_decreasing(lengths, 256).rows(3)
    first, second = plan.rows(3), plan.rows(4)
    assert len(first) == len(second)  # same steps every epoch
    moved = sum(a != b for a, b in zip(first, second, strict=True))
    assert moved > len(first) // 2, moved  # equal-length examples are dealt differently


def test_an_example_longer_than_the_row_is_refused():
    with pytest.raises(ValueError, match="cannot pack an example of 70 tokens into rows of 64"):
        PackingPlan.best_fit_decreasing([10, 70], 64)


# ---- collated batches -----------------------------------------------------------------------------


def packed_feature(lengths: list[int], start: int = 10) -> dict[str, Any]:
    ids = list(range(start, start + sum(lengths)))
    return {"input_ids": ids, "labels": list(ids), "seq_lengths": lengths}


def test_mask_4d_batch_restarts_positions_masks_first_labels_and_blocks_attention():
    batch = Collator(pad_token_id=0, packed_inputs="mask_4d")([packed_feature([3, 2]), packed_feature([4])])
    assert batch["input_ids"].shape == (2, 5)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 14], [-100, 11, 12, 13, -100]]
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.bool
    expected_row0 = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert mask[0, 0].int().tolist() == expected_row0
    assert mask[1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]  # padding sees only itself: no empty row
    assert batch["num_real_tokens"] == 9


def test_additive_mask_and_padding_to_sequence_len():
    collate = Collator(pad_token_id=0, packed_inputs="mask_4d", additive_mask=True, pad_to=8)
    batch = collate([packed_feature([3, 2])])
    mask = batch["attention_mask"]
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.float32
    assert mask[0, 0, 4, 3] == 0 and mask[0, 0, 4, 2] == torch.finfo(torch.float32).min
    plain = Collator(pad_token_id=0, pad_to=8)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}])
    assert plain["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0]]
    assert plain["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]
    assert plain["labels"].tolist() == [[-100, 6, 7, -100, -100, -100, -100, -100]]


def test_position_ids_batch_is_flattened_with_sequence_boundaries():
    batch = Collator(pad_token_id=0, packed_inputs="position_ids")(
        [packed_feature([3, 2]), packed_feature([4])]
    )
    assert batch["input_ids"].shape == (1, 9)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9]
    assert batch["max_length_q"] == 4
    assert (batch["labels"][batch["position_ids"] == 0] == -100).all()


# ---- isolation: packed logits == each example alone -----------------------------------------------


def random_examples(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def packed_vs_alone_error(
    model: Any, collate: Collator, rows: list[list[list[int]]], alone_model: Any = None
) -> float:
    """Max |logit difference| between packed rows (collated as in training, called as TRL's
    compute_loss calls the model) and each example run alone (by `alone_model`, the same weights
    under another kernel, when given)."""
    alone_model = alone_model or model
    features = [
        {
            "input_ids": [t for ex in row for t in ex],
            "labels": [t for ex in row for t in ex],
            "seq_lengths": [len(ex) for ex in row],
        }
        for row in rows
    ]
    batch = collate(features)
    batch.pop("num_real_tokens")
    batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits
        worst = 0.0
        flat_offset = 0
        for r, row in enumerate(rows):
            offset = 0
            for ex in row:
                alone = alone_model(input_ids=torch.tensor([ex])).logits[0]
                if collate.packed_inputs == "position_ids":  # one flattened row
                    got = packed[0, flat_offset : flat_offset + len(ex)]
                    flat_offset += len(ex)
                else:
                    got = packed[r, offset : offset + len(ex)]
                offset += len(ex)
                worst = max(worst, (got - alone).abs().max().item())
    return worst


def load_model(path: Path, attention: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attention, dtype=torch.float32
    ).eval()


@pytest.mark.parametrize(
    ("attention", "packed_inputs", "additive"),
    [("eager", "mask_4d", True), ("sdpa", "mask_4d", False), ("flex_attention", "position_ids", False)],
)
def test_packed_logits_equal_each_example_alone(tiny_model, attention, packed_inputs, additive):
    """FlexAttention on CPU compiles a kernel for every new sequence length (~7 s each), so under
    flex only the packed batch runs through it; each example alone runs through sdpa, same weights."""
    model = load_model(tiny_model, attention)
    alone = load_model(tiny_model, "sdpa") if attention == "flex_attention" else model
    examples = random_examples(model.config.vocab_size, [7, 30, 5, 18, 11, 2])
    rows = [examples[:3], examples[3:]]  # two packed rows of different lengths: padding too
    collate = Collator(pad_token_id=2, packed_inputs=packed_inputs, additive_mask=additive)
    error = packed_vs_alone_error(model, collate, rows, alone)
    assert error < ISOLATION_ATOL, error
    # the same tokens as one plain row (no boundaries) do attend across examples: the check can fail
    with torch.no_grad():
        joined = torch.tensor([[t for ex in rows[0] for t in ex]])
        leak = (
            alone(input_ids=joined).logits[0, 7:37] - alone(input_ids=torch.tensor([examples[1]])).logits[0]
        )
    assert leak.abs().max().item() > 1e-2


def test_sliding_window_model_keeps_its_window_when_packed(tmp_path):
    """A sliding-window model gets position ids without a 4D mask (which would make every layer
    full-attention); packed logits still equal each example alone, window included."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, max_position_embeddings=128, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()

    class FourDMaskKernel:  # eager; sdpa flattens rows (tests/test_padding_free.py covers its window)
        packed_inputs = "mask_4d"

    mode = packed_inputs_for(FourDMaskKernel(), model.config, sequence_len=64)
    assert mode == "position_ids_rows"
    assert packed_inputs_for(FourDMaskKernel(), model.config, sequence_len=4) == "mask_4d"  # window >= rows
    examples = random_examples(64, [9, 12, 6])
    error = packed_vs_alone_error(model, Collator(pad_token_id=0, packed_inputs=mode), [examples])
    assert error < ISOLATION_ATOL, error
    # and the window matters here: full attention over a 12-token example gives other logits
    with torch.no_grad():
        windowed = model(input_ids=torch.tensor([examples[1]])).logits
        model.config.sliding_window = None
        full = model(input_ids=torch.tensor([examples[1]])).logits
    assert (windowed - full).abs().max().item() > 1e-3


# ---- training with and without packing ------------------------------------------------------------


def varied_data(path: Path, rows: int = 48, seed: int = 1) -> Path:
    """prompt/completion rows of very different lengths (bytes = tokens for the tiny tokenizer)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            prompt = "".join(rng.choice(letters) for _ in range(rng.randint(2, 60)))
            answer = "".join(rng.choice(letters) for _ in range(rng.randint(1, 30)))
            f.write(json.dumps({"prompt": prompt + "\n", "generation": answer}) + "\n")
    return path


def one_step_config(model: Path, data: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    """One plain-SGD step over all 48 rows, no clipping: the weight change is -lr * gradient."""
    settings: dict[str, Any] = {
        "sequence_len": 128, "max_train_samples": None, "micro_batch_size": 48, "max_steps": 1,
        "optimizer": "sgd", "learning_rate": 1.0, "max_grad_norm": 0.0,
    }  # fmt: skip
    return toy_config(model, data, out, **{**settings, **overrides})


def weight_change(built: Any, base: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    after = built.trainer.model.state_dict()
    return {name: after[name].float() - before[name] for name in before if name in after}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_one_step_with_packing_has_the_gradients_and_loss_of_one_without(tiny_model, tmp_path, attention):
    data = varied_data(tmp_path / "varied.jsonl")
    plain = run_api(
        tmp_path, one_step_config(tiny_model, data, tmp_path / "plain", attention=attention), name="plain.yml"
    )
    packed_config = one_step_config(
        tiny_model, data, tmp_path / "packed", attention=attention, sample_packing=True
    )
    packed = run_api(tmp_path, packed_config, name="packed.yml")
    assert len(packed.train_dataset) <= 48 / 2  # rows really hold several examples
    plain_delta, packed_delta = weight_change(plain, tiny_model), weight_change(packed, tiny_model)
    worst = max((plain_delta[n] - packed_delta[n]).abs().max().item() for n in plain_delta)
    scale = max(plain_delta[n].abs().max().item() for n in plain_delta)
    assert scale > 1e-2  # the step moved the weights
    assert worst < 1e-5 * max(1.0, scale), (worst, scale)
    loss = {
        key: next(h["loss"] for h in b.trainer.state.log_history if "loss" in h)
        for key, b in (("plain", plain), ("packed", packed))
    }
    assert loss["plain"] == pytest.approx(loss["packed"], rel=1e-5)


def test_packed_training_learns_logs_efficiency_and_repacks_each_epoch(tiny_model, toy_data, tmp_path):
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "out",
        sequence_len=256, max_train_samples=400, max_steps=None, num_epochs=2, micro_batch_size=2,
        sample_packing=True, logging_steps=2, val_set_size=40, eval_batch_size=64,
    )  # fmt: skip
    built = run_api(tmp_path, config)
    rows = len(built.train_dataset)
    assert rows < 360 / 5
    history = built.trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    # a logged loss covers 2 steps of 2 rows: one window swings by +-0.15, so the last five are averaged
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
    efficiencies = [h["padding_efficiency"] for h in history if "padding_efficiency" in h]
    assert len(efficiencies) == len(losses)
    overall = built.trainer._real_tokens / built.trainer._processed_tokens
    assert overall >= 0.95, (overall, efficiencies)  # only the last, part-filled rows pad much
    assert built.trainer.state.global_step == 2 * -(-rows // 2)  # fixed steps per epoch
    assert built.train_dataset.epoch == 1  # the trainer moved it to the second epoch's rows
    real_tokens = sum(built.train_dataset.plan.tokens for _ in range(2))
    last_count = [h["num_tokens"] for h in history if "num_tokens" in h][-1]
    assert last_count <= real_tokens and last_count > 0.9 * real_tokens  # real tokens, not mask pairs
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert evals[-1] < evals[0]


def test_packed_eval_loss_equals_unpacked_eval_loss(tiny_model, tmp_path):
    """With the whole eval set in one batch, both give the mean over all its trainable tokens."""
    data = varied_data(tmp_path / "varied.jsonl")
    common = {"val_set_size": 16, "eval_batch_size": 64, "max_steps": 1, "learning_rate": 1e-9}
    plain = run_api(tmp_path, one_step_config(tiny_model, data, tmp_path / "a", **common), name="plain.yml")
    packed = run_api(
        tmp_path,
        one_step_config(tiny_model, data, tmp_path / "b", eval_sample_packing=True, **common),
        name="packed.yml",
    )
    assert plain.trainer.args.eval_strategy != "no"
    first = {
        key: next(h["eval_loss"] for h in b.trainer.state.log_history if "eval_loss" in h)
        for key, b in (("plain", plain), ("packed", packed))
    }
    assert len(packed.eval_dataset) <= 16 / 2
    assert first["plain"] == pytest.approx(first["packed"], rel=1e-5)


def test_group_by_length_batches_similar_lengths(tiny_model, tmp_path):
    data = varied_data(tmp_path / "varied.jsonl", rows=96)
    common = {
        "micro_batch_size": 8,
        "max_steps": 12,
        "max_train_samples": None,
        "sequence_len": 128,
        "padding_free": False,  # padded rows: what grouping is for
    }
    random_order = run_api(
        tmp_path, toy_config(tiny_model, data, tmp_path / "a", **common), name="random.yml"
    )
    grouped = run_api(
        tmp_path,
        toy_config(tiny_model, data, tmp_path / "b", group_by_length=True, **common),
        name="grouped.yml",
    )

    def mean_efficiency(built: Any) -> float:
        values = [
            h["padding_efficiency"] for h in built.trainer.state.log_history if "padding_efficiency" in h
        ]
        return sum(values) / len(values)

    assert grouped.trainer.args.train_sampling_strategy == "group_by_length"
    assert mean_efficiency(grouped) > mean_efficiency(random_order) + 0.1, (
        mean_efficiency(grouped),
        mean_efficiency(random_order),
    )


@pytest.mark.parametrize(("padding_free", "shape"), [(False, (8, 48)), (None, (1, 8 * 48))])
def test_pad_to_sequence_len_gives_fixed_shapes(tiny_model, toy_data, tmp_path, padding_free, shape):
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        tmp_path / "out",
        pad_to_sequence_len=True,
        padding_free=padding_free,
    )
    built = run_api(tmp_path, config, name="c.yml")
    batch = next(iter(built.trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == shape
    efficiency = [
        h["padding_efficiency"] for h in built.trainer.state.log_history if "padding_efficiency" in h
    ]
    assert max(efficiency) < 0.9  # toy rows are ~40 tokens: the rest is padding, and it is counted


def test_packed_dataset_rows_hold_the_examples_of_the_plan(tiny_model, toy_data, tmp_path):
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "o", sequence_len=200, sample_packing=True
    )
    resolved = load_config(str(write_yaml(tmp_path / "c.yml", config)))
    from trainer.data.pipeline import build_datasets
    from trainer.runtime.build import load_tokenizer

    tokenizer = load_tokenizer(resolved.config)
    data = build_datasets(resolved, tokenizer)
    model = load_model(tiny_model, "sdpa")
    train_rows, _, collate = collated_datasets(resolved, data, model, tokenizer)
    assert isinstance(train_rows, PackedDataset) and collate.packed_inputs == "position_ids"
    seen = []
    for index in range(len(train_rows)):
        row = train_rows[index]
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) <= 200
        seen += row["seq_lengths"]
    assert sorted(seen) == sorted(len(ids) for ids in data.train["input_ids"])

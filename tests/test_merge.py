"""`python -m trainer.cli.merge`: LoRA (trained by our own `train`), DoRA with new tokens and a chat
template, and a QLoRA-style adapter (trained on a bitsandbytes 4-bit base) merge into standalone models
whose logits equal the adapter model's; user mistakes exit 2 without a traceback and touch nothing.

The DoRA and QLoRA adapters are made directly with PEFT (a few optimizer steps by hand) and saved into a
run-like folder (adapter + tokenizer + config.resolved.yml), exactly what a trainer run writes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")

from tests.conftest import run_api, run_command, toy_config  # noqa: E402
from trainer.cli.merge import main as merge_main  # noqa: E402

TEXTS = ["Reverse the word: hello\nAnswer: ", "abc xyz 123", "The quick brown fox"]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_command("merge", *args, cwd=cwd)


@torch.no_grad()
def logits(model: Any, tokenizer: Any, texts: list[str] = TEXTS) -> list[Any]:
    model.eval()
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        out.append(model(input_ids=ids.input_ids).logits.float())
    return out


def max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def adapter_reference(run: Path, base: Path) -> tuple[Any, Any]:
    """The adapter model as PEFT loads it: fp32 base (grown to the run's tokenizer) + PeftModel."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(model, run), tokenizer


def load_merged(out: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), AutoTokenizer.from_pretrained(out)


def differs_from_base(merged: Any, tokenizer: Any, base_dir: Path) -> float:
    """How far the merged model is from its base on TEXTS (over the base's vocabulary)."""
    from transformers import AutoModelForCausalLM

    base: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    vocab = base.get_input_embeddings().weight.shape[0]
    merged_logits = [x[..., :vocab] for x in logits(merged, tokenizer)]
    return max_diff(merged_logits, logits(base, tokenizer))


def check_standalone(out: Path) -> None:
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json"} <= files
    assert not files & set(ADAPTER_FILES), files
    assert "pytorch_model.bin" not in files
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # no staging left behind
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not [k for k in keys if "lora_" in k or "base_layer" in k or "magnitude" in k]


def check_tokens(out: Path, run: Path) -> Any:
    """The merged folder keeps the run's tokenizer (EOS, pad, chat template) and its ids agree."""
    from transformers import AutoTokenizer, GenerationConfig

    saved, original = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(run)
    assert len(saved) == len(original)
    assert (saved.eos_token, saved.pad_token, saved.bos_token) == (
        original.eos_token,
        original.pad_token,
        original.bos_token,
    )
    assert saved.chat_template == original.chat_template
    generation = GenerationConfig.from_pretrained(out)
    eos = generation.eos_token_id
    assert (eos[0] if isinstance(eos, list) else eos) == saved.eos_token_id
    assert generation.pad_token_id == saved.pad_token_id
    return saved


def write_run(run: Path, model: Any, tokenizer: Any, base: Path, adapter: dict[str, Any]) -> Path:
    """Save a PEFT model the way a trainer run does: adapter + tokenizer + config.resolved.yml."""
    model.save_pretrained(run)
    tokenizer.save_pretrained(run)
    resolved = {"base_model": str(base), "adapter": adapter, "output_dir": str(run), "seed": 42}
    (run / "config.resolved.yml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return run


def train_by_hand(model: Any, tokenizer: Any, texts: list[str], steps: int = 4, lr: float = 2e-2) -> None:
    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


# ---- the three kinds of runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tiny_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA run of our own `train` (the `lora` adapter)."""
    tmp = tmp_path_factory.mktemp("merge-lora")
    out = tmp / "run"
    adapter = {"type": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"}
    data = toy_data / "train.jsonl"
    config = toy_config(
        tiny_model, data, out, max_train_samples=32, max_steps=4, learning_rate=1.0e-2, adapter=adapter
    )
    run_api(tmp, config)
    return out


@pytest.fixture(scope="module")
def dora_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DoRA with three added special tokens (ChatML markers as EOS, a distinct pad) trained through
    PEFT's trainable_token_indices, and a chat template on the tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plugins.formatters.chat_templates import BUILTIN_TEMPLATES

    tokenizer: Any = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "pad_token": "<pad>"}
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = BUILTIN_TEMPLATES["chatml"].source
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<pad>")]

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        use_dora=True,
        trainable_token_indices=new_ids,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    texts = [chat_text(tokenizer, "hello"), chat_text(tokenizer, "reverse abc") + "cba<|im_end|>"]
    train_by_hand(peft_model, tokenizer, texts)
    run = tmp_path_factory.mktemp("merge-dora") / "run"
    return write_run(run, peft_model, tokenizer, tiny_model, {"type": "lora", "r": 4, "use_dora": True})


def chat_text(tokenizer: Any, content: str) -> str:
    return str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    )


@pytest.fixture(scope="module")
def qlora_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA trained against the base loaded in 4 bits (bitsandbytes nf4), as the `qlora` adapter does."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=quantization, dtype=torch.float32
    )
    assert model.is_loaded_in_4bit
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token  # what a run's tokenizer holds
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    train_by_hand(peft_model, tokenizer, TEXTS)
    run = tmp_path_factory.mktemp("merge-qlora") / "run"
    return write_run(run, peft_model, tokenizer, tiny_model, {"type": "qlora", "r": 8, "bits": 4})


# ---- merges ---------------------------------------------------------------------------------------------


def test_lora_run_merges_through_the_cli(lora_run: Path, tiny_model: Path) -> None:
    done = cli(str(lora_run), "--dtype", "float32", cwd=lora_run.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = lora_run.parent / "run-merged"  # the default --out: beside the run
    for expected in ("adapter:  LoRA (r=8, alpha=16)", f"base:     {tiny_model}", "float32", str(out)):
        assert expected in done.stdout, done.stdout
    assert "parameters" in done.stdout and "smoke test" in done.stdout and "completion:" in done.stdout

    check_standalone(out)
    merged, tokenizer = load_merged(out)
    reference, _ = adapter_reference(lora_run, tiny_model)
    assert max_diff(logits(merged, tokenizer), logits(reference, tokenizer)) < 1e-4
    assert differs_from_base(merged, tokenizer, tiny_model) > 1e-2  # the adapter did something
    check_tokens(out, lora_run)
    info = json.loads((out / "merge_info.json").read_text())
    assert info["dequantized_merge"] is False and info["base_model"] == str(tiny_model)


def test_dora_with_new_tokens_and_chat_template(
    dora_run: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nested" / "dora-merged"
    assert merge_main([str(dora_run), "--out", str(out), "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "adapter:  DoRA (r=4, alpha=8)" in printed
    assert "resized:  embeddings 259 -> 262 rows" in printed
    assert "<|im_start|>user\\nHello<|im_end|>" in printed  # the smoke test used the chat template

    check_standalone(out)
    merged, tokenizer = load_merged(out)
    assert merged.get_input_embeddings().weight.shape[0] == 262
    reference, _ = adapter_reference(dora_run, tiny_model)
    texts = [*TEXTS, chat_text(tokenizer, "hello"), "<|im_start|>x<|im_end|><pad>"]
    # fp32 DoRA merged vs unmerged differ by op order only (the magnitude re-normalisation): 1e-6 to
    # 1e-5 over 10 random inits alone, 1.2e-4 once in a full-suite run; logits are ~5, the training
    # moved them by more than 1e-2
    assert max_diff(logits(merged, tokenizer, texts), logits(reference, tokenizer, texts)) < 5e-4
    assert differs_from_base(merged, tokenizer, tiny_model) > 1e-2

    saved = check_tokens(out, dora_run)
    assert saved.eos_token == "<|im_end|>" and saved.pad_token == "<pad>" and saved.chat_template
    assert merged.config.eos_token_id[0] == saved.eos_token_id  # new EOS first, the base's kept after it
    assert merged.config.pad_token_id == saved.pad_token_id


def test_qlora_adapter_merges_into_the_full_precision_base(
    qlora_run: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qlora-merged"
    assert merge_main([str(qlora_run), "--out", str(out), "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "QLoRA (LoRA trained on a 4-bit base; r=8, alpha=16)" in printed
    assert "dequantized merge" in printed and "full-precision" in printed

    check_standalone(out)
    merged, tokenizer = load_merged(out)
    assert getattr(merged.config, "quantization_config", None) is None
    reference, _ = adapter_reference(qlora_run, tiny_model)
    assert max_diff(logits(merged, tokenizer), logits(reference, tokenizer)) < 1e-4
    assert differs_from_base(merged, tokenizer, tiny_model) > 1e-2
    check_tokens(out, qlora_run)
    assert json.loads((out / "merge_info.json").read_text())["dequantized_merge"] is True


def test_bfloat16_merge_and_no_half_written_output(
    lora_run: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bf16"
    out.mkdir()  # an existing empty folder is fine
    assert merge_main([str(lora_run), "--out", str(out), "--dtype", "bfloat16", "--no-smoke-test"]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert merged.dtype == torch.bfloat16
    reference, tokenizer = adapter_reference(lora_run, tiny_model)
    assert max_diff(logits(merged, tokenizer), logits(reference, tokenizer)) < 0.1

    # A failure at the last moment leaves neither --out nor the staging folder behind.
    import trainer.tools.merge

    def fail(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(trainer.tools.merge.os, "rename", fail)
    failed = tmp_path / "failed"
    with pytest.raises(OSError, match="disk full"):
        merge_main([str(lora_run), "--out", str(failed), "--no-smoke-test"])
    assert sorted(os.listdir(tmp_path)) == ["bf16"]


def test_our_own_run_with_new_tokens_merges(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    """A LoRA run of our own `train` that added tokens (its grown embeddings saved in full beside the
    adapter) merges through the command into a model with the grown vocabulary and the same logits,
    new tokens included."""
    adapter = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "run", max_train_samples=16, max_steps=2,
        learning_rate=1.0e-2, adapter=adapter, tokens=["<|tool|>"], special_tokens={"pad_token": "<pad>"},
    )  # fmt: skip
    run_api(tmp_path, config)
    done = cli(str(tmp_path / "run"), "--dtype", "float32", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resized:  embeddings" in done.stdout
    merged, tokenizer = load_merged(tmp_path / "run-merged")
    assert merged.get_input_embeddings().weight.shape[0] == len(tokenizer)
    reference, _ = adapter_reference(tmp_path / "run", tiny_model)
    texts = [*TEXTS, "x<|tool|>y<pad>"]
    assert max_diff(logits(merged, tokenizer, texts), logits(reference, tokenizer, texts)) < 1e-4
    assert differs_from_base(merged, tokenizer, tiny_model) > 1e-3


def test_moved_base_dtypes_and_the_runs_trust_remote_code(
    lora_run: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose base model has moved is refused, naming --base-model, and merges with it; --dtype
    auto keeps the base checkpoint's own dtype (float32 here), float16 saves float16; a run trained
    with trust_remote_code says so before its base model's code could run."""
    import shutil

    from transformers import AutoModelForCausalLM

    moved_base = tmp_path / "moved-base"
    shutil.copytree(tiny_model, moved_base)
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(tmp_path / "gone")
    (run / "adapter_config.json").write_text(json.dumps(adapter_config))
    resolved = yaml.safe_load((run / "config.resolved.yml").read_text())
    (run / "config.resolved.yml").write_text(yaml.safe_dump({**resolved, "trust_remote_code": True}))

    refused = cli(str(run), "--out", str(tmp_path / "never"), cwd=tmp_path)
    assert refused.returncode == 2 and "does not exist (moved?); pass --base-model PATH" in refused.stderr
    assert not (tmp_path / "never").exists()

    reference, tokenizer = adapter_reference(lora_run, tiny_model)
    for dtype, expected, tolerance in (("auto", torch.float32, 1e-4), ("float16", torch.float16, 0.1)):
        out = tmp_path / f"merged-{dtype}"
        args = [str(run), "--out", str(out), "--base-model", str(moved_base), "--dtype", dtype]
        assert merge_main([*args, "--no-smoke-test"]) == 0
        printed = capsys.readouterr().out
        assert f"base:     {moved_base} (loaded unquantized, dtype {dtype})" in printed
        assert f"base model overridden: {moved_base} (the adapter names {tmp_path / 'gone'})" in printed
        assert "warning:  trust_remote_code is on (from the run's config)" in printed
        merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
        assert merged.dtype == expected
        assert max_diff(logits(merged.float(), tokenizer), logits(reference, tokenizer)) < tolerance
        assert json.loads((out / "merge_info.json").read_text())["base_model"] == str(moved_base)


# ---- refusals: exit 2, a clear message, no traceback, nothing written -----------------------------------


def test_refusals_exit_2_without_traceback(lora_run: Path, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    # A full fine-tune: its folder holds the model itself.
    full = tmp_path / "full-run"
    shutil.copytree(tiny_model, full)
    (full / "config.resolved.yml").write_text(yaml.safe_dump({"adapter": {"type": "full"}}))
    # An adapter run missing its weights; a run that never finished; a non-empty --out.
    broken = tmp_path / "broken"
    shutil.copytree(lora_run, broken)
    (broken / "adapter_model.safetensors").unlink()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.resolved.yml").write_text(yaml.safe_dump({"adapter": {"type": "lora"}}))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")

    cases = [
        ((str(full),), "full fine-tune"),
        ((str(tmp_path / "nope"),), "no such directory"),
        ((str(broken),), "missing adapter_model.safetensors"),
        ((str(unfinished),), "did not finish"),
        ((str(lora_run), "--out", str(taken)), "not empty"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout[-2000:], done.stderr[-2000:])
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no *-merged, no staging folders
    assert os.listdir(taken) == ["notes.txt"]
    assert not (lora_run.parent / "broken-merged").exists()

"""FSDP's `cpu_ram_efficient_loading`: only process 0 reads the checkpoint; the other processes build
the model on the meta device (trainer.runtime.meta_loading) and get process 0's weights when FSDP
shards the model. Its rules at validate time, the empty model itself, and a real 2-process FSDP2 run
on CPU that equals the same run without the option while process 1 opens no safetensors file."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_yaml
from tests.test_distributed_rules import problems, resolved_config
from trainer.config.errors import ConfigErrors

EFFICIENT = {"type": "fsdp", "cpu_ram_efficient_loading": True}


def test_the_option_reaches_accelerate_and_the_model_loading(tmp_path, tiny_model, toy_data):
    resolved = resolved_config(tmp_path, tiny_model, toy_data, distributed=EFFICIENT)
    plugin = resolved.distributed.plugin
    contribution = plugin.contribute(resolved.config)
    assert contribution.sft_args["fsdp_config"]["cpu_ram_efficient_loading"] is True
    assert contribution.weights_from_process_0 is True
    off = resolved_config(tmp_path, tiny_model, toy_data, distributed="fsdp").distributed.plugin
    assert "cpu_ram_efficient_loading" not in off.fsdp_config()
    assert off.contribute(resolved.config).weights_from_process_0 is False


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"adapter": "qlora"}, "distributed.cpu_ram_efficient_loading: needs a full-precision base"),
        ({"adapter": {"type": "lora", "load_in_8bit": True}}, "needs a full-precision base"),
        ({"adapter": {"type": "lora", "init": "pissa"}}, "the adapter's init (pissa) is computed"),
        ({"method": "dpo"}, "method 'dpo' builds its trainer (and reference model)"),
    ],
)  # fmt: skip
def test_runs_that_need_the_weights_everywhere_are_refused(
    tmp_path, tiny_model, toy_data, overrides, expected
):
    assert expected in problems(tmp_path, tiny_model, toy_data, distributed=EFFICIENT, **overrides)
    assert problems(tmp_path, tiny_model, toy_data, distributed=EFFICIENT, adapter="lora") == ""


def test_fsdp1_needs_a_gpu_for_it(tmp_path, tiny_model, toy_data):
    import torch

    from trainer.runtime.run import check_machine

    if torch.cuda.is_available():
        pytest.skip("the rule is for CPU-only machines")
    resolved = resolved_config(tmp_path, tiny_model, toy_data, distributed={**EFFICIENT, "version": 1})
    with pytest.raises(ConfigErrors, match=r"distributed\.cpu_ram_efficient_loading: FSDP1 copies"):
        check_machine(resolved)
    check_machine(resolved_config(tmp_path, tiny_model, toy_data, distributed=EFFICIENT))


def test_the_empty_model_has_no_weights_but_the_real_buffers_and_ties(tmp_path, tiny_model, toy_data):
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.runtime import meta_loading

    config = resolved_config(tmp_path, tiny_model, toy_data).config
    empty = meta_loading.empty_model(AutoModelForCausalLM, config, {"dtype": "auto"})
    real = AutoModelForCausalLM.from_pretrained(tiny_model, dtype="auto")
    assert all(p.is_meta for p in empty.parameters())
    assert [(n, p.shape, p.dtype) for n, p in empty.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in real.named_parameters()
    ]
    buffers = dict(real.named_buffers())
    assert buffers and all(torch.equal(b, buffers[n]) for n, b in empty.named_buffers())  # rotary inv_freq
    assert empty.lm_head.weight is empty.model.embed_tokens.weight

    empty.model.norm.weight.requires_grad_(False)
    given = meta_loading.materialize_trainable(empty)
    assert given == len(list(empty.parameters())) - 1 and empty.model.norm.weight.is_meta
    trainable = [p for p in empty.parameters() if p.requires_grad]
    assert all(p.device.type == "cpu" for p in trainable)
    assert len({p.data_ptr() for p in trainable}) == len(trainable)  # what accelerate maps them by
    assert empty.lm_head.weight is empty.model.embed_tokens.weight


RECORDER = '''"""Test instrumentation: appends "RANK path" for every safetensors file a process opens."""
import os

if os.environ.get("RECORD_SAFETENSORS_OPENS"):
    import safetensors

    _real = safetensors.safe_open

    def safe_open(filename, *args, **kwargs):
        with open(os.environ["RECORD_SAFETENSORS_OPENS"], "a", encoding="utf-8") as log:
            log.write(f"{os.environ.get('RANK', '-')} {filename}\\n")
        return _real(filename, *args, **kwargs)

    safetensors.safe_open = safe_open
'''
"""A sitecustomize put first on the started processes' PYTHONPATH: it wraps the real safe_open, which
transformers reads every checkpoint through, and records who opened what."""


LORA = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_fsdp2_with_it_equals_fsdp2_without_and_only_process_0_reads(tiny_model, tmp_path, adapter):
    """2 processes on CPU (gloo), FSDP2 full_shard, the same SGD run with and without the option: the
    same per-step losses and final weights (full fine-tune) or adapter (LoRA on a frozen base that
    process 1 keeps on meta), which moved; without it both processes open the checkpoint, with it
    only process 0 does (process 1 built the model on meta and got every weight, and computed its
    rotary buffers, which a wrong value would show in its half of each step's loss)."""
    import torch
    from safetensors.torch import load_file

    from tests import test_distributed as multi
    from tests.conftest import run_command

    recorder = tmp_path / "recorder"
    recorder.mkdir()
    (recorder / "sitecustomize.py").write_text(RECORDER, encoding="utf-8")
    rows = multi.varied_rows(tmp_path / "rows.jsonl")
    checkpoint = str(tiny_model / "model.safetensors")
    saved = "model.safetensors" if adapter == "full" else "adapter_model.safetensors"
    runs = {}
    for efficient in (False, True):
        name = "efficient" if efficient else "plain"
        out, opens = tmp_path / name, tmp_path / f"{name}-opens.txt"
        block = {"type": "fsdp", "version": 2, "num_processes": 2, "cpu_ram_efficient_loading": efficient}
        config = multi.sgd_config(tiny_model, rows, out, distributed=block)
        if adapter == "lora":
            config.update(adapter=LORA, learning_rate=0.5)
        env = {**multi.PROCESS_ENV, "PYTHONPATH": f"{recorder}:{multi.REPO}"}
        env["RECORD_SAFETENSORS_OPENS"] = str(opens)
        done = run_command("train", write_yaml(tmp_path / f"{name}.yml", config), cwd=tmp_path, env=env)
        assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        assert "parallel: FSDP2 (full_shard) on 2 process(es)" in done.stdout
        state = (
            multi.assert_saved_once(out)
            if adapter == "full"
            else json.loads((out / "trainer_state.json").read_text())
        )
        lines = [line.split() for line in opens.read_text().splitlines()]
        readers = {rank for rank, path in lines if path == checkpoint}
        runs[name] = (multi.losses(state), load_file(str(out / saved)), readers)

    (plain, plain_weights, plain_readers), (efficient, got, readers) = runs["plain"], runs["efficient"]
    assert plain_readers == {"0", "1"}  # the recorder sees every process's reads
    assert readers == {"0"}
    assert len(efficient) == multi.STEPS
    assert efficient == pytest.approx(plain, rel=1e-5, abs=1e-5)
    assert got.keys() == plain_weights.keys()
    for key, tensor in plain_weights.items():
        assert torch.allclose(got[key], tensor, atol=1e-5, rtol=0), key
    if adapter == "full":
        start = multi.weights(tiny_model)
        assert max(float((plain_weights[k] - start[k]).abs().max()) for k in start) > 1e-2
    else:  # lora_B starts at zero
        assert max(float(t.abs().max()) for k, t in got.items() if "lora_B" in k) > 1e-2
    args = torch.load(tmp_path / "efficient" / "training_args.bin", weights_only=False)
    assert args.fsdp_config["cpu_ram_efficient_loading"] is True


def test_the_converter_carries_it_where_ours_can_run_it(tmp_path):
    """fsdp_config.cpu_ram_efficient_loading (or the old fsdp_-prefixed spelling) becomes the fsdp
    block's option, and the result validates; beside a quantized base it is dropped with the reason
    (every process reads the checkpoint: more RAM while loading, the same training)."""
    from tests.conftest import run_command
    from tests.test_convert import _convert

    data = "datasets:\n  - path: d.jsonl\n    type: alpaca\n"
    for spelling in ("cpu_ram_efficient_loading", "fsdp_cpu_ram_efficient_loading"):
        fsdp = f"fsdp_version: 2\nfsdp_config:\n  {spelling}: true\n"
        code, stderr, config = _convert(tmp_path, data + fsdp)
        assert code == 0, stderr
        assert config["distributed"] == {
            "type": "fsdp",
            "version": 2,
            "cpu_ram_efficient_loading": True,
        }
        checked = run_command("validate", "--skip-machine-checks", tmp_path / "out.yml", cwd=tmp_path)
        assert checked.returncode == 0, checked.stderr
    quantized = (
        data + "load_in_8bit: true\nfsdp_version: 2\nfsdp_config:\n  cpu_ram_efficient_loading: true\n"
    )
    code, stderr, config = _convert(tmp_path, quantized)
    assert code == 0, stderr
    assert "cpu_ram_efficient_loading" not in config["distributed"]
    assert "cpu_ram_efficient_loading dropped: ours needs a full-precision base for it" in stderr

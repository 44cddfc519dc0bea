"""`qat:` (Axolotl's key): torchao fake quantization in the linear layers while training. The forward
pass equals a plain model whose weights went through torchao's own quantize-dequantize; training
lowers the loss; `fake_quant_after_n_steps` keeps the first steps equal to a run without QAT; the
saved model is a plain transformers model. Validation refuses what torchao cannot do, with reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_api, toy_config, write_yaml
from trainer.config.errors import ConfigErrors
from trainer.config.schema import Qat
from trainer.resolve.precision import Machine
from trainer.resolve.validate import load_config

pytest.importorskip("torchao")

CPU = Machine(accelerator=None)
H100 = Machine(accelerator="cuda", cuda_gpus=1, capability=(9, 0), bf16=True, tf32=True, gpu_name="H100")
B200 = Machine(accelerator="cuda", cuda_gpus=1, capability=(10, 0), bf16=True, tf32=True, gpu_name="B200")


def _problems(tmp: Path, config: dict[str, Any], machine: Machine = CPU) -> list[str]:
    try:
        load_config(str(write_yaml(tmp / "cfg.yml", config)), machine=machine)
    except ConfigErrors as err:
        return [p.render() for p in err.problems]
    return []


REFUSED = [
    ({"weight_dtype": "int3"}, "qat.weight_dtype: unknown value 'int3' (did you mean 'int8'?); expected "
     "one of 'int4', 'int8', 'fp8', 'nvfp4' or 'mxfp4'"),
    ({"weight_dtype": "int4", "activation_dtype": "int4"}, "qat.activation_dtype: torchao's QAT has no "
     "int4-activation/int4-weight scheme. Supported activation/weight pairs: null/int4, null/int8, "
     "int8/int4"),
    ({"weight_dtype": "nvfp4"},
     "qat.activation_dtype: torchao's NVFP4 QAT fake-quantizes the activations too"),
    ({"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": 32},
     "qat.group_size: nvfp4/nvfp4 takes only group_size 16"),
    ({"weight_dtype": "fp8", "activation_dtype": "fp8", "group_size": 32},
     "qat.group_size: fp8 weights are scaled per row"),
    ({"weight_dtype": "fp8", "activation_dtype": "fp8", "quantize_embedding": True},
     "qat.quantize_embedding: torchao fake-quantizes embeddings to int4 or int8 only"),
    ({"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "fake_quant_after_n_steps": 10},
     "qat.fake_quant_after_n_steps: torchao's mxfp4 fake-quantized linears cannot be switched off"),
]  # fmt: skip


@pytest.mark.parametrize(("qat", "expected"), REFUSED)
def test_what_torchao_cannot_do_is_refused_with_the_reason(
    tiny_model: Path, toy_data: Path, tmp_path: Path, qat: dict[str, Any], expected: str
) -> None:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", qat=qat)
    problems = _problems(tmp_path, config, B200)
    assert any(expected in p for p in problems), problems


def test_qat_with_a_peft_adapter_is_refused(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    for adapter in ({"type": "lora", "r": 8, "alpha": 16}, {"type": "qlora", "r": 8, "alpha": 16}):
        config = toy_config(
            tiny_model,
            toy_data / "train.jsonl",
            tmp_path / "out",
            adapter=adapter,
            qat={"weight_dtype": "int4"},
        )
        problems = _problems(tmp_path, config)
        expected = (
            f"qat: QAT trains the full weights through their fake quantization; adapter '{adapter['type']}'"
        )
        assert any(expected in p for p in problems), problems


def test_nvfp4_and_mxfp4_are_machine_checks(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    """NVFP4 QAT needs a Blackwell GPU, MX a CUDA GPU: a CPU or an H100 is refused, `validate
    --skip-machine-checks` sets them aside, a B200 passes."""
    nvfp4 = {"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": 16}
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", qat=nvfp4)
    for machine, name in ((CPU, "no GPU"), (H100, "H100 (compute capability 9.0)")):
        problems = _problems(tmp_path, config, machine)
        assert any("Blackwell GPU (compute capability 10.0+); this is " + name in p for p in problems), (
            problems
        )
    cfg = str(write_yaml(tmp_path / "cfg.yml", config))
    skipped = load_config(cfg, machine=CPU, skip_machine_checks=True).skipped
    assert [p.path for p in skipped] == [("qat", "weight_dtype")]
    assert _problems(tmp_path, config, B200) == []
    mxfp4 = {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4"}
    mx = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", qat=mxfp4)
    assert any(
        "mxfp4 QAT runs torchao's MX kernels, which need a CUDA GPU" in p for p in _problems(tmp_path, mx)
    )
    assert _problems(tmp_path, mx, H100) == []


def test_the_forward_pass_equals_torchaos_quantize_dequantize_of_the_weights(tiny_model: Path) -> None:
    """int8 weights in groups of 32: the prepared model's logits differ from the plain model's and
    equal those of a plain model whose linear weights (all but the output head) were replaced by
    torchao's quantize_affine -> dequantize_affine, computed here from its primitives."""
    import torch
    from torchao.quantization.quant_primitives import (
        MappingType,
        choose_qparams_affine,
        dequantize_affine,
        quantize_affine,
    )
    from transformers import AutoModelForCausalLM

    from trainer.training.qat import prepare

    ids = torch.tensor([[1, 40, 70, 100, 130, 160, 190, 2]])
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    fake = prepare(
        AutoModelForCausalLM.from_pretrained(tiny_model), Qat.model_validate({"weight_dtype": "int8"})
    ).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    head = reference.get_output_embeddings()
    with torch.no_grad():
        changed = 0
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                w = module.weight
                block = (1, 32)
                scale, zero = choose_qparams_affine(
                    w, MappingType.SYMMETRIC, block, torch.int8, eps=torch.finfo(torch.float32).eps
                )
                q = quantize_affine(w, block, scale, zero, torch.int8)
                module.weight.copy_(
                    dequantize_affine(q, block, scale, zero, torch.int8, output_dtype=w.dtype)
                )
                changed += 1
        assert changed == 14  # 2 layers x (q, k, v, o, gate, up, down)
        plain_logits, fake_logits, ref_logits = (m(ids).logits for m in (plain, fake, reference))
    assert not torch.allclose(fake_logits, plain_logits, atol=1e-4)
    torch.testing.assert_close(fake_logits, ref_logits, atol=1e-5, rtol=1e-5)
    # the output head and the (tied) input embeddings stay plain and tied
    assert type(fake.get_output_embeddings()) is torch.nn.Linear
    assert fake.get_output_embeddings().weight is fake.get_input_embeddings().weight


def _losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def test_qat_trains_and_saves_a_plain_model(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    """int8 activations / int4 weights (the Axolotl example's scheme): the loss falls, and the saved
    folder loads with AutoModelForCausalLM as an ordinary model: no torchao module, no quantization
    config, the base's tensor names, and the weights the run trained."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    qat = {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32}
    built = run_api(tmp_path, toy_config(tiny_model, toy_data / "train.jsonl", out, qat=qat))
    trained = built.trainer.model
    assert any(type(m).__name__ == "FakeQuantizedLinear" for m in trained.modules())
    losses = _losses(out)
    assert len(losses) == 12 and losses[-1] < 0.6 * losses[0], losses
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert not [type(m) for m in saved.modules() if type(m).__module__.startswith("torchao")]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert set(saved.state_dict()) == set(base.state_dict())
    ours = trained.state_dict()
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(tensor, ours[name], atol=0, rtol=0)
    assert not torch.equal(saved.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    # quantized for real as docs/qat.md says (transformers' TorchAoConfig with the scheme's torchao
    # config): the very logits the fake-quantized model computes, which the plain model does not
    from transformers import TorchAoConfig

    from trainer.training.qat import base_config, prepare

    scheme = Qat.model_validate(qat)
    real = AutoModelForCausalLM.from_pretrained(out, quantization_config=TorchAoConfig(base_config(scheme)))
    assert type(real.model.layers[0].mlp.up_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"
    fake = prepare(AutoModelForCausalLM.from_pretrained(out), scheme)
    ids = torch.tensor([[1, 40, 70, 100, 130, 160, 190, 2]])
    with torch.no_grad():
        real_logits, fake_logits, plain_logits = (m.eval()(ids).logits for m in (real, fake, saved))
    torch.testing.assert_close(real_logits, fake_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(real_logits, plain_logits, atol=1e-4)


def test_fake_quant_after_n_steps_keeps_the_first_steps_plain(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    """With fake_quant_after_n_steps: 3 the first three steps' losses equal a run without QAT to the
    bit (fake quantization is off), and from the fourth on they differ (it is on)."""
    common = {"max_steps": 6, "max_train_samples": 48}
    data = toy_data / "train.jsonl"
    run_api(tmp_path, toy_config(tiny_model, data, tmp_path / "plain", **common), name="plain.yml")
    qat = {"activation_dtype": "int8", "weight_dtype": "int4", "fake_quant_after_n_steps": 3}
    run_api(tmp_path, toy_config(tiny_model, data, tmp_path / "late", qat=qat, **common), name="late.yml")
    before, after = _losses(tmp_path / "plain"), _losses(tmp_path / "late")
    assert len(before) == len(after) == 6
    assert after[:3] == before[:3], (before, after)
    assert all(abs(a - b) > 1e-6 for a, b in zip(after[3:], before[3:], strict=True)), (before, after)


AXOLOTL = """base_model: {model}
datasets:
  - path: {data}
    type: alpaca
output_dir: {out}
"""


@pytest.mark.parametrize(
    ("block", "ours", "refused"),
    [
        ("{activation_dtype: int8, weight_dtype: int4, group_size: 32}",
         {"weight_dtype": "int4", "activation_dtype": "int8", "group_size": 32}, None),
        ("{weight_dtype: int4}", {"weight_dtype": "int4", "group_size": 32}, None),
        ("{activation_dtype: nvfp4, weight_dtype: nvfp4, group_size: 16}",
         {"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": 16}, None),
        ("{weight_dtype: mxfp4}",
         {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": 32}, None),
        ("{activation_dtype: float8_e4m3fn, weight_dtype: fp8, group_size: 32, fake_quant_after_n_steps: 5}",
         {"weight_dtype": "fp8", "activation_dtype": "fp8", "fake_quant_after_n_steps": 5}, None),
        ("{activation_dtype: nvfp4, weight_dtype: nvfp4}", None, "Axolotl refuses NVFP4 with group_size 32"),
        ("{}", None, None),
        ("{weight_dtype: int8}", None, "Axolotl refuses int8 weights without activation quantization"),
        ("{weight_dtype: ternary}", None, "ternary weights are Axolotl's own BitNet-style QAT"),
        ("{weight_dtype: fp8, activation_dtype: fp8, quantize_embedding: true}", None,
         "quantize_embedding: torchao fake-quantizes embeddings to int4 or int8 only"),
    ],
)  # fmt: skip
def test_the_converter_carries_axolotls_qat_block(
    tmp_path: Path, block: str, ours: dict[str, Any] | None, refused: str | None
) -> None:
    from trainer.tools.axolotl.convert import convert

    path = tmp_path / "axolotl.yml"
    path.write_text(AXOLOTL.format(model="m", data="d.jsonl", out="o") + f"qat: {block}\n", encoding="utf-8")
    conversion = convert(str(path))
    entry = next(e for e in conversion.entries if e.key == "qat")
    if refused is not None:
        assert entry.status == "refused" and refused in entry.note, entry
    elif ours is None:
        assert entry.status == "dropped" and "qat" not in conversion.config
    else:
        assert entry.status == "carried" and conversion.config["qat"] == ours, (entry, conversion.config)


def test_the_converter_refuses_qat_with_an_adapter(tmp_path: Path) -> None:
    from trainer.tools.axolotl.convert import convert

    path = tmp_path / "axolotl.yml"
    text = AXOLOTL.format(model="m", data="d.jsonl", out="o") + "adapter: lora\nqat: {weight_dtype: int4}\n"
    path.write_text(text, encoding="utf-8")
    entry = next(e for e in convert(str(path)).entries if e.key == "qat")
    assert entry.status == "refused" and "Axolotl refuses QAT with an adapter (adapter: lora)" in entry.note


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")  # two processes: both cores
def test_qat_runs_under_fsdp2(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    """QAT composes with FSDP2 (on CPU, two processes): the fake-quantized linears are sharded like
    plain ones, the delayed start switches them on, the loss falls and the final save gathers plain
    weights that load with AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import run_command

    out = tmp_path / "out"
    qat = {"activation_dtype": "int8", "weight_dtype": "int4", "fake_quant_after_n_steps": 2}
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        out,
        qat=qat,
        max_steps=6,
        max_train_samples=64,
        micro_batch_size=4,
        distributed={"type": "fsdp", "num_processes": 2, "version": 2},
    )
    done = run_command("train", write_yaml(tmp_path / "cfg.yml", config))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    losses = _losses(out)
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert not [type(m) for m in saved.modules() if type(m).__module__.startswith("torchao")]

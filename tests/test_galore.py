"""The `galore` adapter: full-parameter training whose targeted linear weights keep a low-rank
optimizer state. Real (tiny) runs on CPU, then the optimizer itself is inspected: the Adam moments of
a targeted m x n weight are m x r (m >= n) or r x n, everything else keeps a full-size state.

Measured on CPU (torch 2.13 CPU build, transformers 5.23, galore-torch 1.0, bitsandbytes 0.50.2):
galore_adamw, galore_adafactor and galore_adamw_layerwise train; galore_adamw_8bit(_layerwise) call
torch.cuda.synchronize() every step (refused at start on a machine without CUDA);
galore_adafactor_layerwise cannot start anywhere in transformers 5.x (refused at validate time).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("galore_torch")

from tests.conftest import run_api, toy_config, write_yaml  # noqa: E402
from trainer.config.errors import ConfigErrors  # noqa: E402
from trainer.resolve.validate import load_config  # noqa: E402
from trainer.runtime.build import plan  # noqa: E402
from trainer.runtime.run import train  # noqa: E402

RANK = 8
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def galore_config(model: Path, data: Path, out: Path, optimizer: str = "galore_adamw", **adapter: Any):
    settings = {"max_train_samples": 32, "max_steps": 3, "optimizer": optimizer}
    return toy_config(
        model, data / "train.jsonl", out, adapter={"type": "galore", "rank": RANK, **adapter}, **settings
    )


def line_of(path: Path, key: str) -> str:
    """'FILE:LINE' of a top-level key in a written config."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return f"{path}:{next(i for i, text in enumerate(lines, 1) if text.startswith(key + ':'))}"


def initial_weights(model_dir: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def states_by_name(built: Any) -> dict[str, dict[str, Any]]:
    """Optimizer state per parameter name (the layer-wise variants keep one optimizer per parameter)."""
    optimizer = built.trainer.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    names = {id(p): n for n, p in built.trainer.model.named_parameters()}
    if hasattr(inner, "optimizer_dict"):  # transformers' LayerWiseDummyOptimizer
        return {names[id(p)]: dict(opt.state[p]) for p, opt in inner.optimizer_dict.items()}
    return {names[id(p)]: dict(state) for p, state in inner.state.items()}


def low_rank(shape: tuple[int, ...], rank: int = RANK) -> tuple[int, int]:
    """GaLore's 'std' projection keeps the larger side: m x r when m >= n, else r x n."""
    m, n = shape
    return (m, rank) if m >= n else (rank, n)


def losses(built: Any) -> list[float]:
    return [h["loss"] for h in built.trainer.state.log_history if "loss" in h]


def test_galore_adamw_projects_attention_and_mlp_states(tiny_model, toy_data, tmp_path) -> None:
    before = initial_weights(tiny_model)
    built = run_api(tmp_path, galore_config(tiny_model, toy_data, tmp_path / "out"))  # default targets

    assert type(built.trainer.optimizer.optimizer).__module__.startswith("galore_torch")
    assert built.args.optim_target_modules == [".*attn.*", ".*attention.*", ".*mlp.*"]
    assert built.args.optim_args == f"rank={RANK},update_proj_gap=200,scale=0.25,proj_type=std"
    states = states_by_name(built)
    params = dict(built.trainer.model.named_parameters())
    assert set(states) == set(params)  # every parameter trained, none frozen
    targeted = {n for n in params if n.endswith(".weight") and any(f".{m}." in n for m in ATTN + MLP)}
    assert len(targeted) == 2 * (len(ATTN) + len(MLP))  # 2 layers of the tiny Llama
    shapes_seen = set()
    for name, param in params.items():
        state = states[name]
        if name in targeted:
            assert tuple(state["exp_avg"].shape) == low_rank(tuple(param.shape)), name
            assert tuple(state["exp_avg_sq"].shape) == low_rank(tuple(param.shape)), name
            assert "projector" in state
            shapes_seen.add(tuple(state["exp_avg"].shape))
        else:  # embeddings (tied with lm_head) and RMSNorm weights: plain AdamW state
            assert tuple(state["exp_avg"].shape) == tuple(param.shape), name
            assert "projector" not in state
    assert shapes_seen == {(256, RANK), (768, RANK), (RANK, 768)}  # q/k/v/o, gate/up, down
    for name, param in params.items():
        assert not torch.equal(param.detach(), before[name]), f"{name} did not change"
    assert len(losses(built)) == 3 and all(math.isfinite(x) for x in losses(built))
    # the output is a complete model, like adapter: full
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_layerwise_variant_with_substring_targets(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(
        tiny_model, toy_data, tmp_path / "out", optimizer="galore_adamw_layerwise", target_modules=["mlp"]
    )
    built = run_api(tmp_path, config)

    assert type(built.trainer.optimizer.optimizer).__name__ == "LayerWiseDummyOptimizer"
    states = states_by_name(built)
    params = dict(built.trainer.model.named_parameters())
    for name, param in params.items():
        mlp = any(f".{m}." in name for m in MLP)
        expected = low_rank(tuple(param.shape)) if mlp else tuple(param.shape)
        assert tuple(states[name]["exp_avg"].shape) == expected, name  # attention is not targeted now
    assert all(math.isfinite(x) for x in losses(built))


def test_galore_adafactor_factored_state_is_low_rank(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(tiny_model, toy_data, tmp_path / "out", optimizer="galore_adafactor")
    config["max_steps"] = 2
    built = run_api(tmp_path, config)

    state = states_by_name(built)["model.layers.0.mlp.down_proj.weight"]  # 256 x 768 -> 8 x 768
    assert tuple(state["exp_avg_sq_row"].shape) == (RANK,)
    assert tuple(state["exp_avg_sq_col"].shape) == (768,)
    embed = states_by_name(built)["model.embed_tokens.weight"]
    assert tuple(embed["exp_avg_sq_col"].shape) == (256,)  # unprojected
    assert all(math.isfinite(x) for x in losses(built))


@pytest.mark.parametrize("optimizer", ["galore_adamw_8bit", "galore_adamw_8bit_layerwise"])
def test_8bit_variants_need_cuda_and_say_so_at_start(optimizer, tiny_model, toy_data, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("documents the CPU behaviour; on CUDA these variants train")
    pytest.importorskip("bitsandbytes")
    path = write_yaml(tmp_path / "cfg.yml", galore_config(tiny_model, toy_data, tmp_path / "out", optimizer))
    with pytest.raises(ConfigErrors) as err:
        train(load_config(str(path)), log=lambda *_: None)
    (problem,) = err.value.problems
    assert problem.path == ("optimizer",)
    assert problem.where == line_of(path, "optimizer")
    assert "needs a CUDA GPU" in problem.message and "torch.cuda.synchronize()" in problem.message
    assert f"Use '{optimizer.replace('_8bit', '')}'" in problem.message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_contribution_is_optim_target_modules_and_optim_args(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(
        tiny_model, toy_data, tmp_path / "out", rank=4, update_proj_gap=7, scale=0.5, proj_type="left",
        target_modules="all-linear",
    )  # fmt: skip
    merged, args = plan(load_config(str(write_yaml(tmp_path / "cfg.yml", config))))
    assert merged.sft_args == {
        "optim_target_modules": "all-linear",
        "optim_args": "rank=4,update_proj_gap=7,scale=0.5,proj_type=left",
    }
    assert args.optim == "galore_adamw" and args.optim_target_modules == "all-linear"


def test_targets_that_match_no_linear_fail_before_training(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(tiny_model, toy_data, tmp_path / "out", target_modules=["attention_block"])
    path = write_yaml(tmp_path / "cfg.yml", config)
    with pytest.raises(ConfigErrors) as err:
        train(load_config(str(path)), log=lambda *_: None)
    (problem,) = err.value.problems
    assert problem.path == ("adapter", "target_modules")
    assert "matches no nn.Linear module" in problem.message
    assert "q_proj" in problem.message and "down_proj" in problem.message  # names to choose from


# ---- validate-time rules (no training) --------------------------------------------------------


def problems_of(tmp: Path, config: dict[str, Any], *overrides: str) -> list[str]:
    with pytest.raises(ConfigErrors) as err:
        load_config(str(write_yaml(tmp / "cfg.yml", config)), list(overrides))
    return [p.render() for p in err.value.problems]


def test_check_requires_a_galore_optimizer(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(tiny_model, toy_data, tmp_path / "out", optimizer="adamw_torch")
    (line,) = problems_of(tmp_path, config)
    assert line.startswith(f"{line_of(tmp_path / 'cfg.yml', 'adapter')}  adapter: needs a GaLore optimizer")
    assert "galore_adamw, galore_adamw_8bit, galore_adafactor, galore_adamw_layerwise" in line
    assert "(it is 'adamw_torch')" in line


def test_layerwise_needs_accumulation_1_and_a_single_process(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(tiny_model, toy_data, tmp_path / "out", optimizer="galore_adamw_layerwise")
    config["gradient_accumulation_steps"] = 4
    config["distributed"] = {"type": "ddp", "num_processes": 2}
    lines = problems_of(tmp_path, config)
    assert any("set gradient_accumulation_steps to 1 (it is 4)" in x for x in lines)
    assert any("does not support multi-process (DDP) training" in x for x in lines)
    config["gradient_accumulation_steps"] = 1
    del config["distributed"]
    load_config(str(write_yaml(tmp_path / "ok.yml", config)))  # accepted


def test_adafactor_layerwise_is_refused(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(tiny_model, toy_data, tmp_path / "out", optimizer="galore_adafactor_layerwise")
    (line,) = problems_of(tmp_path, config)
    assert "fails to start in transformers" in line and "use galore_adafactor" in line


def test_galore_optimizer_without_the_adapter_and_bad_options(tiny_model, toy_data, tmp_path) -> None:
    config = galore_config(tiny_model, toy_data, tmp_path / "out")
    config["adapter"] = "full"
    (line,) = problems_of(tmp_path, config)
    assert "optimizer: 'galore_adamw' projects the gradients of chosen modules: use adapter: galore" in line

    config = galore_config(tiny_model, toy_data, tmp_path / "out", rank=0, proj_type="diagonal")
    lines = problems_of(tmp_path, config)
    assert any("adapter.rank:" in x for x in lines)
    assert any("adapter.proj_type:" in x and "std" in x for x in lines)

    config = galore_config(tiny_model, toy_data, tmp_path / "out", target_modules=["(unclosed"])
    (line,) = problems_of(tmp_path, config)
    assert "adapter.target_modules: not a valid regular expression '(unclosed'" in line

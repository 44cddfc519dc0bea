"""Adapter options, trained for a few steps on the tiny Llama: LoRA variants (DoRA, rsLoRA, PiSSA/OLoRA
init, layers_to_transform, regex targets, modules_to_save), LoRA+, new tokens, `full` with
unfrozen_parameters, NEFTune. Each checks the trainable parameter count against one computed from
the base model's shapes, that trained weights moved and frozen ones did not, and that the output
reloads to the same logits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import logits_of, run_api, run_command, toy_config, write_yaml  # noqa: E402
from trainer.config.errors import ConfigErrors  # noqa: E402
from trainer.resolve.validate import load_config  # noqa: E402
from trainer.runtime.build import build_trainer  # noqa: E402
from trainer.training.saving import save_final  # noqa: E402

LAYER_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def config_for(model: Path, data: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    settings = {"max_train_samples": 16, "micro_batch_size": 4, "max_steps": 3, "learning_rate": 1.0e-2}
    return toy_config(model, data, out, **{**settings, **overrides})


def build_train_save(tmp: Path, config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Build the run, snapshot its parameters, train and save like `trainer.runtime.run.train`."""
    built = build_trainer(load_config(str(write_yaml(tmp / "cfg.yml", config))))
    model = built.trainer.model
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    built.trainer.train()
    save_final(built.trainer, config["output_dir"])
    return built, before


def base_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """name -> (in_features, out_features) of every Linear inside the decoder layers."""
    model = base_model(model_dir)
    return {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in name
    }


def trainable(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


# ---- LoRA variants -------------------------------------------------------------------------------

R = 4
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "pissa": {"init": "pissa"},
    "olora": {"init": "olora"},
    "layers": {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]},
    "regex": {"target_modules": r".*\.layers\.0\.(self_attn\.k_proj|mlp\.down_proj)"},
    "modules_to_save": {"target_modules": ["q_proj"], "modules_to_save": ["post_attention_layernorm"]},
}


def targeted(variant: str, names: list[str]) -> list[str]:
    """The Linear modules a variant should adapt, decided independently of PEFT."""
    if variant == "layers":
        return [n for n in names if ".layers.1." in n and n.endswith(("q_proj", "v_proj"))]
    if variant == "regex":
        return ["model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj"]
    if variant == "modules_to_save":
        return [n for n in names if n.endswith("q_proj")]
    return [n for n in names if n.endswith(LAYER_MODULES)]  # all-linear: every layer Linear, no lm_head


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_variant_trains_the_expected_weights_and_reloads(variant, tiny_model, toy_data, tmp_path):
    from peft import PeftModel

    out = tmp_path / "out"
    adapter = {"type": "lora", "r": R, "alpha": 8, "dropout": 0.0, **VARIANTS[variant]}
    built, before = build_train_save(
        tmp_path, config_for(tiny_model, toy_data / "train.jsonl", out, adapter=adapter)
    )
    model = built.trainer.model
    assert isinstance(model, PeftModel)

    shapes = linear_shapes(tiny_model)
    chosen = targeted(variant, list(shapes))
    expected = sum(R * (shapes[n][0] + shapes[n][1]) for n in chosen)
    if variant == "dora":
        expected += sum(shapes[n][1] for n in chosen)  # one magnitude per output feature
    if variant == "modules_to_save":
        expected += 2 * 256  # one trained copy of each layer's post-attention RMSNorm (hidden 256)
    params = trainable(model)
    assert sum(v.numel() for v in params.values()) == expected
    adapted = {n.split(".lora_A.")[0].removeprefix("base_model.model.") for n in params if ".lora_A." in n}
    assert adapted == set(chosen)

    for name, value in params.items():  # every trained tensor moved
        assert not torch.equal(value.detach(), before[name]), name
    base = dict(base_model(tiny_model).named_parameters())
    mutated = variant in ("pissa", "olora")  # these rewrite the targeted weights into a residual
    for name, value in model.named_parameters():
        if value.requires_grad or ("modules_to_save" in name):
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        plain = plain.replace(".original_module.", ".")
        if mutated and plain.removesuffix(".weight") in chosen:
            assert not torch.equal(value, base[plain]), name
            continue
        assert torch.equal(value, base[plain]), name

    if variant == "rslora":
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == pytest.approx(8 / R**0.5)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == (2 * R if mutated else R)  # PiSSA/OLoRA are saved as a plain rank-2r LoRA
    reloaded = PeftModel.from_pretrained(base_model(tiny_model), out)
    expected_logits = logits_of(model, built.tokenizer)
    assert torch.allclose(logits_of(reloaded, built.tokenizer), expected_logits, atol=1e-5)


def test_loraplus_puts_b_matrices_at_lr_times_ratio(tiny_model, toy_data, tmp_path):
    adapter = {"type": "lora", "r": R, "target_modules": ["q_proj", "v_proj"], "loraplus_lr_ratio": 16}
    config = config_for(tiny_model, toy_data / "train.jsonl", tmp_path / "out", adapter=adapter, max_steps=2)
    built = build_trainer(load_config(str(write_yaml(tmp_path / "cfg.yml", config))))
    trainer = built.trainer
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    built.trainer.train()
    assert trainer.optimizer is not None
    lrs: dict[str, set[float]] = {"lora_A": set(), "lora_B": set()}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            kind = "lora_B" if "lora_B" in names[id(param)] else "lora_A"
            lrs[kind].add(group["lr"])
    assert lrs == {"lora_A": {1.0e-2}, "lora_B": {1.0e-2 * 16}}
    covered = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert covered == sum(v.numel() for v in trainable(trainer.model).values())


def test_lora_8bit_base_trains_on_cpu(tiny_model, toy_data, tmp_path):
    pytest.importorskip("bitsandbytes")
    adapter = {"type": "lora", "r": R, "target_modules": ["q_proj", "v_proj"], "load_in_8bit": True}
    config = config_for(tiny_model, toy_data / "train.jsonl", tmp_path / "out", adapter=adapter, max_steps=2)
    built = run_api(tmp_path, config)
    layer = built.trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear8bitLt"
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


# ---- new tokens ----------------------------------------------------------------------------------


def tool_rows(path: Path) -> Path:
    rows = [{"prompt": f"Call {w}\n", "generation": f"<|tool|>{w}"} for w in ("ls", "cat", "echo", "pwd") * 4]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_new_tokens_train_under_lora_and_reload(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    adapter = {"type": "lora", "r": R, "target_modules": ["q_proj", "v_proj"]}
    config = config_for(
        tiny_model,
        tool_rows(tmp_path / "tools.jsonl"),
        out,
        adapter=adapter,
        tokens=["<|tool|>"],
        special_tokens={"pad_token": "<pad>"},
        max_steps=4,
    )
    built = run_api(tmp_path, config)
    model = built.trainer.model
    base_rows = base_model(tiny_model).get_input_embeddings().weight.shape[0]

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == base_rows + 2 and tokenizer.pad_token == "<pad>"
    tool = tokenizer.convert_tokens_to_ids("<|tool|>")
    assert tokenizer("x<|tool|>y", add_special_tokens=False).input_ids.count(tool) == 1
    assert tool >= base_rows

    # The (tied) embeddings train in full, beside the LoRA matrices.
    shapes = linear_shapes(tiny_model)
    lora = sum(R * sum(s) for n, s in shapes.items() if n.endswith(("q_proj", "v_proj")))
    assert sum(v.numel() for v in trainable(model).values()) == lora + len(tokenizer) * 256
    embed = model.get_input_embeddings()
    assert model.get_output_embeddings().weight is embed.weight  # still tied

    resized = base_model(tiny_model)
    resized.resize_token_embeddings(len(tokenizer))
    original = embed.original_module.weight.detach()
    assert original.shape[0] == len(tokenizer)
    assert not torch.allclose(embed.weight[tool].detach(), original[tool]), "the new token did not train"

    reloaded = PeftModel.from_pretrained(resized, out)
    text = "Call ls\n<|tool|>ls"
    assert torch.allclose(logits_of(reloaded, tokenizer, text), logits_of(model, tokenizer, text), atol=1e-5)


# ---- full with unfrozen_parameters ---------------------------------------------------------------


def test_full_unfrozen_parameters_train_only_matches(tiny_model, toy_data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    patterns = [r"model\.layers\.1\.mlp\.", r"layers\.0\.self_attn\.q_proj"]
    adapter = {"type": "full", "unfrozen_parameters": patterns}
    built, before = build_train_save(
        tmp_path, config_for(tiny_model, toy_data / "train.jsonl", out, adapter=adapter)
    )
    model = built.trainer.model

    base = dict(base_model(tiny_model).named_parameters())
    wanted = {n for n in base if any(re.search(p, n) for p in patterns)}
    assert set(trainable(model)) == wanted
    assert sum(v.numel() for v in trainable(model).values()) == sum(base[n].numel() for n in wanted)
    for name, value in model.named_parameters():
        if name in wanted:
            assert not torch.equal(value.detach(), before[name]), name
        else:
            assert torch.equal(value, base[name]), name

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(logits_of(reloaded, built.tokenizer), logits_of(model, built.tokenizer), atol=1e-5)


def test_full_unfrozen_parameters_checks(tiny_model, toy_data, tmp_path):
    adapter = {"type": "full", "unfrozen_parameters": ["layers\\.(1"]}
    config = config_for(tiny_model, toy_data / "train.jsonl", tmp_path / "out", adapter=adapter)
    with pytest.raises(ConfigErrors, match=r"adapter\.unfrozen_parameters: item 0 .* not a valid regex"):
        load_config(str(write_yaml(tmp_path / "bad.yml", config)))
    config["adapter"] = {"type": "full", "unfrozen_parameters": ["no_such_parameter"]}
    with pytest.raises(ConfigErrors, match="matches no parameter"):
        build_trainer(load_config(str(write_yaml(tmp_path / "none.yml", config))))


def test_lora_checks_name_the_option(tiny_model, toy_data, tmp_path):
    cases = {
        "target_modules": {"target_modules": "(unclosed"},
        "layers_to_transform": {"target_modules": ".*q_proj", "layers_to_transform": [0]},
        "init": {"init": "loftq"},
    }
    for option, options in cases.items():
        adapter = {"type": "lora", **options}
        config = config_for(tiny_model, toy_data / "train.jsonl", tmp_path / "out", adapter=adapter)
        with pytest.raises(ConfigErrors, match=rf"adapter\.{option}: "):
            load_config(str(write_yaml(tmp_path / f"{option}.yml", config)))


# ---- NEFTune -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapter", "extra"),
    [
        ("full", {}),
        ({"type": "lora", "r": R, "target_modules": ["q_proj"]}, {}),
        ({"type": "qlora", "r": R, "target_modules": ["q_proj"]}, {}),
        ({"type": "galore", "rank": 4, "update_proj_gap": 2}, {"optimizer": "galore_adamw"}),
    ],
    ids=["full", "lora", "qlora", "galore"],
)
def test_neftune_noises_embeddings_in_training_only(adapter, extra, tiny_model, toy_data, tmp_path):
    from transformers import TrainerCallback

    config = config_for(
        tiny_model,
        toy_data / "train.jsonl",
        tmp_path / "out",
        adapter=adapter,
        neftune_noise_alpha=5.0,
        **extra,
    )
    built = build_trainer(load_config(str(write_yaml(tmp_path / "cfg.yml", config))))
    assert built.args.neftune_noise_alpha == 5.0
    ids = torch.tensor([[1, 10, 11, 12, 13]])
    seen: list[bool] = []

    class Probe(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            embed = model.get_input_embeddings()
            assert embed.training
            with torch.no_grad():
                seen.append(not torch.equal(embed(ids), embed(ids)))

    built.trainer.add_callback(Probe())
    built.trainer.train()
    assert seen and all(seen)  # noise on every training forward
    embed = built.trainer.model.get_input_embeddings()
    assert not embed._forward_hooks  # the hook is gone after training
    embed.train()
    with torch.no_grad():
        assert torch.equal(embed(ids), embed(ids))


@pytest.mark.parametrize(
    ("target_modules", "message"),
    [
        (
            ["q_proj", "qproj"],
            "'qproj' matches no module; {model}'s linear layers are named down_proj, gate_proj,",
        ),
        (
            r".*\.attn\.q_proj",
            r"the regex '.*\.attn\.q_proj' matches no module name; {model}'s linear layers",
        ),
    ],
    ids=["list", "regex"],
)
def test_a_target_module_that_matches_nothing_fails_validate(
    tiny_model, toy_data, tmp_path, target_modules, message
):
    """A misspelt target_modules entry would train the rest silently: validate reads the module
    names from the model's safetensors header (no torch) and names the layers there are."""
    adapter = {"type": "lora", "target_modules": target_modules}
    cfg = write_yaml(
        tmp_path / "cfg.yml",
        config_for(tiny_model, toy_data / "train.jsonl", tmp_path / "out", adapter=adapter),
    )
    done = run_command("validate", cfg)
    assert done.returncode == 2, done.stdout
    assert f"adapter.target_modules: {message.format(model=tiny_model)}" in done.stderr, done.stderr
    right = {**adapter, "target_modules": ["q_proj", "self_attn.v_proj"]}
    cfg = write_yaml(
        tmp_path / "ok.yml", config_for(tiny_model, toy_data / "train.jsonl", tmp_path / "out", adapter=right)
    )
    assert run_command("validate", cfg).returncode == 0


def test_target_modules_of_a_model_not_on_this_machine_are_left_to_peft():
    from plugins.adapters.lora import unmatched_targets

    assert unmatched_targets(["qproj"], "some-org/not-downloaded-model") == []  # nothing is fetched


def test_added_tokens_train_under_any_peft_config_or_are_refused(tiny_model: Path, capsys: Any) -> None:
    """The core makes the embeddings of added tokens trainable for any adapter's PEFT config that has
    modules_to_save; one that has none is refused, and one that cannot keep tied embeddings tied
    says so."""
    from types import SimpleNamespace

    from peft import IA3Config, LoraConfig, PromptTuningConfig
    from transformers import AutoModelForCausalLM

    from trainer.runtime.build import train_new_token_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = LoraConfig(target_modules=["q_proj"])
    train_new_token_rows(model, lora, "adapters plugin 'lora'")
    assert set(lora.modules_to_save) == {"embed_tokens", "lm_head"} and lora.ensure_weight_tying
    ia3 = IA3Config(target_modules=["v_proj"], feedforward_modules=[])
    train_new_token_rows(model, ia3, "adapters plugin 'ia3'")
    assert set(ia3.modules_to_save) == {"embed_tokens", "lm_head"}
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert ("cannot keep the tied input and output embeddings tied" in capsys.readouterr().err) == tied
    for config in (PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"), SimpleNamespace()):
        if hasattr(config, "modules_to_save"):
            continue  # this PEFT version gives prompt tuning modules_to_save: nothing to refuse
        with pytest.raises(ConfigErrors, match="cannot train whole modules"):
            train_new_token_rows(model, config, "adapters plugin 'x'")


# ---- lora with unfrozen_parameters ---------------------------------------------------------------


def test_lora_unfrozen_parameters_train_in_full_beside_the_adapter_and_reload(tiny_model, toy_data, tmp_path):
    """`lm_head` (tied to the input embeddings in this model: both train, as one) and one layer's norm
    train in full beside the LoRA matrices; every other base weight stays bit-identical, and the saved
    adapter reproduces the trained model's logits."""
    from peft import PeftModel

    out = tmp_path / "out"
    patterns = ["lm_head", r"layers\.1\.post_attention_layernorm\."]
    adapter = {
        "type": "lora",
        "r": R,
        "target_modules": ["q_proj", "v_proj"],
        "unfrozen_parameters": patterns,
    }
    built, before = build_train_save(
        tmp_path, config_for(tiny_model, toy_data / "train.jsonl", out, adapter=adapter)
    )
    model = built.trainer.model
    params = trainable(model)
    shapes = linear_shapes(tiny_model)
    lora = sum(R * sum(s) for n, s in shapes.items() if n.endswith(("q_proj", "v_proj")))
    vocab = model.get_input_embeddings().weight.shape[0]
    assert sum(v.numel() for v in params.values()) == lora + vocab * 256 + 256  # tied embeddings once
    full = {n for n in params if ".lora_" not in n}
    assert any("post_attention_layernorm" in n and ".layers.1." in n for n in full), full
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    for name, value in params.items():  # the adapters and the unfrozen copies all moved
        assert not torch.equal(value.detach(), before[name]), name
    base = dict(base_model(tiny_model).named_parameters())
    for name, value in model.named_parameters():
        if value.requires_grad or "modules_to_save" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        plain = plain.replace(".original_module.", ".")
        assert torch.equal(value, base[plain]), name  # frozen base weights (and the originals) untouched

    saved = json.loads((out / "adapter_config.json").read_text())
    # the tied lm_head is saved as the embedding it shares (PEFT's ensure_weight_tying)
    assert {"model.embed_tokens", "model.layers.1.post_attention_layernorm"} <= set(saved["modules_to_save"])
    assert saved["ensure_weight_tying"]
    reloaded = PeftModel.from_pretrained(base_model(tiny_model), out)
    expected = logits_of(model, built.tokenizer)
    assert torch.allclose(logits_of(reloaded, built.tokenizer), expected, atol=1e-5)
    assert not torch.allclose(logits_of(base_model(tiny_model), built.tokenizer), expected, atol=1e-3)


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (
            {"unfrozen_parameters": ["no_such_parameter"]},
            "item 0 'no_such_parameter' matches no parameter of the base model",
        ),
        (
            {"unfrozen_parameters": [r"layers\.0\.self_attn\.q_proj"]},
            "'model.layers.0.self_attn.q_proj' already gets a LoRA adapter (target_modules)",
        ),
        (
            {"target_modules": ["q_proj"], "unfrozen_parameters": [r"layers\.0\.mlp\.up_proj"]},
            None,  # a linear no adapter targets trains in full: accepted
        ),
        (
            {"type": "qlora", "target_modules": ["q_proj"], "unfrozen_parameters": [r"mlp\.up_proj"]},
            "'model.layers.0.mlp.up_proj' is loaded in 4 bits: bitsandbytes holds its weight packed",
        ),
        ({"unfrozen_parameters": ["(unclosed"]}, "item 0 '(unclosed' is not a valid regex"),
    ],
    ids=["nothing", "adapted", "plain-linear", "quantized", "bad-regex"],
)
def test_lora_unfrozen_parameters_checked_at_validate(tiny_model, toy_data, tmp_path, adapter, message):
    block = {"type": "lora", "r": R, **adapter}
    cfg = write_yaml(
        tmp_path / "cfg.yml",
        config_for(tiny_model, toy_data / "train.jsonl", tmp_path / "out", adapter=block),
    )
    done = run_command("validate", cfg)
    if message is None:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 2, done.stdout
    lines = cfg.read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if text.strip().startswith("unfrozen_parameters:"))
    assert f"{cfg}:{line}  adapter.unfrozen_parameters: {message}" in done.stderr, done.stderr


def test_unfrozen_modules_refuse_part_of_a_module():
    from plugins.adapters.lora import unfrozen_modules

    names = ["m.proj.weight", "m.proj.bias", "m.norm.weight"]
    modules, problems = unfrozen_modules([r"proj\.weight", "norm"], names, {}, set(), None)
    assert modules == ["m.norm", "m.proj"]
    assert problems == [
        "matches ['m.proj.weight'] but not ['m.proj.bias'] of the same module 'm.proj': beside an adapter "
        "whole modules train and are saved (PEFT's modules_to_save), so match all of its parameters "
        "(e.g. 'm\\.proj\\.')"
    ]

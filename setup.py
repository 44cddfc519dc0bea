"""Packaging for trainer: core requirements, extras, and the built-in plugins' entry points.

Built-in plugins are registered through the same entry-point groups a third-party package uses.
"""

from pathlib import Path

from setuptools import find_packages, setup

BUILTIN_PLUGINS = {
    "trainer.formatters": [
        "prompt_completion = plugins.formatters.prompt_completion:PromptCompletion",
        "completion = plugins.formatters.completion:Completion",
        "alpaca = plugins.formatters.alpaca:Alpaca",
        "chat_template = plugins.formatters.chat_template:ChatTemplate",
        "sharegpt = plugins.formatters.chat_template:ShareGPT",
        "input_output = plugins.formatters.input_output:InputOutput",
        "pretokenized = plugins.formatters.pretokenized:Pretokenized",
        "preference = plugins.formatters.preference:PreferenceFormatter",
        "kto = plugins.formatters.preference:KtoFormatter",
        "prompt = plugins.formatters.preference:PromptFormatter",
    ],
    "trainer.methods": [
        "sft = plugins.methods.sft:Sft",
        "dpo = plugins.methods.preference:Dpo",
        "kto = plugins.methods.kto:Kto",
        "orpo = plugins.methods.preference:Orpo",
        "simpo = plugins.methods.preference:Simpo",
        "reward = plugins.methods.preference:Reward",
        "grpo = plugins.methods.grpo:Grpo",
    ],
    "trainer.adapters": [
        "full = plugins.adapters.full:Full",
        "lora = plugins.adapters.lora:Lora",
        "qlora = plugins.adapters.qlora:QLora",
        "galore = plugins.adapters.galore:GaLore",
    ],
    "trainer.attention": [
        "eager = plugins.attention.kernels:Eager",
        "sdpa = plugins.attention.kernels:Sdpa",
        "flex_attention = plugins.attention.kernels:FlexAttention",
        "flash_attention_2 = plugins.attention.kernels:FlashAttention2",
        "flash_attention_3 = plugins.attention.kernels:FlashAttention3",
    ],
    "trainer.distributed": [
        "none = plugins.distributed.single:SingleProcess",
        "ddp = plugins.distributed.ddp:Ddp",
        "fsdp = plugins.distributed.fsdp:Fsdp",
        "deepspeed = plugins.distributed.deepspeed:DeepSpeed",
    ],
    "trainer.callbacks": [
        "generation_eval = plugins.callbacks.generation_eval:GenerationEval",
    ],
    "trainer.kernels": [
        "liger = plugins.kernels.liger:Liger",
    ],
    "trainer.evals": [
        "loss = plugins.evals.loss:Loss",
        "generation = plugins.evals.generation:Generation",
        "lm_eval = plugins.evals.lm_eval:LmEval",
    ],
    "trainer.metrics": [
        "exact_match = plugins.metrics.text:exact_match",
        "contains = plugins.metrics.text:contains",
    ],
    "trainer.rewards": [
        "answer_match = plugins.rewards.rules:answer_match",
        "answer_similarity = plugins.rewards.rules:answer_similarity",
    ],
}

EXTRAS = {
    "qlora": ["bitsandbytes>=0.45"],
    "bnb": ["bitsandbytes>=0.45"],  # 8-bit and paged optimizers
    "deepspeed": ["deepspeed>=0.16"],
    "galore": ["galore-torch>=1.0"],
    "qat": ["torchao>=0.18"],  # qat: fake quantization (0.18: the QATConfig API used, torch 2.13 wheels)
    "flash-attn": ["flash-attn>=2.6"],
    "liger": ["liger-kernel>=0.7"],  # Triton GPU kernels (0.7: first with transformers 5 support)
    "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
    "eval": ["lm-eval>=0.4"],
    "dev": [
        "pytest>=8",
        "pytest-xdist>=3.5",  # scripts/test.sh runs the suite on 2 workers
        "pytest-randomly>=3.15",  # in a new order each run (the seed is printed: --randomly-seed=N)
        "ruff>=0.6",
        "mypy>=1.10",
        "pre-commit>=3",
        "types-PyYAML",
        "jsonschema>=4",
        "tensorboard>=2.14",  # the report_to: tensorboard test
        "openai>=1.0",  # the serve tests talk to the server with the official client
        "pexpect>=4.8",  # the chat test types into a real pseudo-terminal
    ],
}
# GPU-only extras stay out of `all`: flash-attn cannot build without CUDA, and liger-kernel needs
# triton, which has no wheels for macOS or Windows.
EXTRAS["all"] = sorted(
    {req for name, reqs in EXTRAS.items() if name not in ("flash-attn", "liger") for req in reqs}
)

setup(
    name="trainer",
    version="0.1.0",
    description="Validated-YAML fine-tuning for LLMs, assembled from plugins on top of TRL",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["trainer", "trainer.*", "plugins", "plugins.*"]),
    # the chat_template formatter's built-in Jinja templates (from Axolotl, see their NOTICE)
    package_data={"plugins.formatters": ["templates/*.jinja", "templates/NOTICE"]},
    install_requires=[
        "torch>=2.4,<2.14",
        "transformers>=5.0,<6",
        "trl>=1.0,<2",
        "peft>=0.17",
        "accelerate>=1.4",
        "datasets>=3.0",
        "pydantic>=2.7,<3",
        "pyyaml>=6",
        "jsonlines>=4",
        "safetensors>=0.4",
        "matplotlib>=3.7",  # training_curves.png
    ],
    extras_require=EXTRAS,
    entry_points={**BUILTIN_PLUGINS, "console_scripts": ["trainer = trainer.cli.main:main"]},
)

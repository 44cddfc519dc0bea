"""`grpo`: group relative policy optimisation on prompts (TRL's GRPOTrainer).

    method:
      type: grpo
      rewards: [answer_match, {name: answer_similarity, weight: 0.5}]   # trainer.rewards entry points
      num_generations: 8          # completions sampled per prompt; each is scored against its group
      max_completion_length: 64
      beta: 0.0                   # > 0: a KL term against the reference (the model before training)
    datasets:
      - path: prompts.jsonl       # {"prompt": "...", "answer": "..."}: every other field reaches the rewards
        type: prompt

Each step samples `num_generations` completions of each prompt with the model being trained
(transformers' `generate`; vLLM with `use_vllm` on a CUDA machine that has it), scores them with the
reward functions, and pushes up the completions that score above their group's mean. A reward is a
`trainer.rewards` entry point: a plain function `fn(prompts, completions, **columns) -> list[float]`
(TRL's signature; the row's other columns, e.g. `answer`, arrive by name).
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator

from plugins.methods.preference import trl_class
from trainer.api import Method, Options, TrainConfig

GRPO_LOSSES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")
"""TRL 1.16 GRPOTrainer's loss types."""


class RewardWeight(Options):
    name: str = Field(description="A trainer.rewards entry point (`trainer plugins` lists them)")
    weight: float = Field(1.0, description="Its weight in the summed reward")


def _reward_block(value: Any) -> Any:
    """A bare reward name is the block {name: NAME} (weight 1)."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict | RewardWeight):
        return value
    raise ValueError("must be a reward name or a {name, weight} block")


REWARD_SCHEMA = {
    "anyOf": [
        {"type": "string", "description": "A trainer.rewards entry point (weight 1)"},
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "A trainer.rewards entry point"},
                "weight": {"type": "number", "default": 1.0, "description": "Its weight in the sum"},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    ]
}

RewardItem = Annotated[RewardWeight, BeforeValidator(_reward_block), WithJsonSchema(REWARD_SCHEMA)]


class GrpoOptions(Options):
    rewards: list[RewardItem] = Field(
        min_length=1,
        description="Reward functions (trainer.rewards entry points), each a name or {name, weight}; "
        "the reward of a completion is their weighted sum",
    )
    num_generations: int = Field(
        8, description="Completions sampled per prompt (G in the GRPO paper); at least 2"
    )
    max_completion_length: int = Field(256, gt=0, description="Most tokens sampled per completion")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the top tokens of this mass")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens (0: all)")
    beta: float = Field(
        0.0,
        ge=0,
        description="KL weight against the reference (the model before training); 0 holds no reference",
    )
    loss_type: str = Field("dapo", description=f"TRL's GRPO loss: {', '.join(GRPO_LOSSES)}")
    epsilon: float = Field(0.2, gt=0, description="Clipping range of the probability ratio")
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clipping range (default: epsilon; DAPO uses 0.28)"
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Divide the advantages by the rewards' standard deviation in each group, over the "
        "batch, or not at all (Dr. GRPO)",
    )
    num_iterations: int = Field(1, gt=0, description="Optimisation passes over each generated batch (mu)")
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at max_completion_length out of the loss (DAPO)"
    )
    use_vllm: bool = Field(False, description="Generate with vLLM (a CUDA GPU and the vllm package)")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="vLLM in the training process, or a `trl vllm-serve` server"
    )
    log_completions: bool = Field(False, description="Print and save a sample of completions with rewards")

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value not in GRPO_LOSSES:
            raise ValueError(f"unknown GRPO loss {value!r}; TRL's: {', '.join(GRPO_LOSSES)}")
        return value


class Grpo(Method[GrpoOptions]):
    """GRPO: completions sampled per prompt, scored by reward functions, ranked within their group.

    The reference for `beta > 0` is TRL's own (the trainer takes no `ref_model`): the model with its
    adapter switched off under LoRA/QLoRA, otherwise a frozen copy TRL loads from `base_model`.
    `reference()` is therefore None: the core loads nothing.
    """

    name = "grpo"
    data = ("prompt",)
    metrics = ("reward", "rewards/*/mean", "completions/mean_length")

    def trainer(self) -> tuple[type, type]:
        return trl_class("GRPOTrainer"), trl_class("GRPOConfig")

    def rewards(self) -> list[str]:
        return [reward.name for reward in self.options.rewards]

    def weights(self) -> list[float]:
        return [reward.weight for reward in self.options.rewards]

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        opts = self.options
        problems: list[str | tuple[str, str]] = []
        g = opts.num_generations
        if g < 2:
            problems.append(
                (
                    "num_generations",
                    "GRPO scores each completion against the others sampled for its prompt: it needs at "
                    "least 2 per prompt",
                )
            )
        processes = config.plugin("distributed").world_size() if config.plugin("distributed") else 1
        batch = generation_batch(config, processes)
        if g >= 2 and batch is not None and batch % g:
            other = f", or a num_generations that divides {batch}" if batch >= 2 else ""
            problems.append(
                (
                    "num_generations",
                    f"each generation batch must hold whole groups of {g} completions, but it holds {batch} "
                    f"(micro_batch_size {config.micro_batch_size} x {processes} process(es) x "
                    f"{_steps_per_generation(config)} step(s) per generation): set micro_batch_size x "
                    f"gradient_accumulation_steps to a multiple of {g}{other}",
                )
            )
        evaluates = config.eval_strategy not in (None, "no")
        eval_batch = (config.eval_batch_size or config.micro_batch_size) * processes
        eval_g = config.trainer_args.get("num_generations_eval") or g
        if evaluates and g >= 2 and isinstance(eval_g, int) and eval_g > 0 and eval_batch % eval_g:
            problems.append(
                (
                    "num_generations",
                    f"evaluation batches must hold whole groups of {eval_g} completions, but they hold "
                    f"{eval_batch} (eval_batch_size x {processes} process(es)): set eval_batch_size to a "
                    f"multiple of {eval_g}",
                )
            )
        if opts.vllm_mode != "colocate" and not opts.use_vllm:
            problems.append(("vllm_mode", "only used with use_vllm: true"))
        if opts.loss_type == "luspo" and config.trainer_args.get("importance_sampling_level") != "sequence":
            problems.append(
                (
                    "loss_type",
                    "luspo is a sequence-level loss: set trainer_args.importance_sampling_level: sequence",
                )
            )
        if opts.beta > 0 and not getattr(config.plugin("adapter"), "peft", False) and config.tokens:
            problems.append(
                (
                    "beta",
                    "with beta > 0 and full-weight training TRL loads the reference itself from base_model, "
                    "without the tokens this config adds: use a PEFT adapter (lora, qlora; the reference is "
                    "then the adapter switched off) or beta: 0",
                )
            )
        return problems

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        if self.options.use_vllm and importlib.util.find_spec("vllm") is None:
            return [
                (
                    "use_vllm",
                    "needs the 'vllm' package (a CUDA machine; pip install vllm): without it, leave "
                    "use_vllm out and transformers' generate samples the completions",
                )
            ]
        return []

    def trainer_args(self, config: TrainConfig) -> dict[str, Any]:
        opts = self.options
        return {
            "reward_weights": self.weights(),
            "num_generations": opts.num_generations,
            "max_completion_length": opts.max_completion_length,
            "temperature": opts.temperature,
            "top_p": opts.top_p,
            "top_k": opts.top_k,
            "beta": opts.beta,
            "loss_type": opts.loss_type,
            "epsilon": opts.epsilon,
            "scale_rewards": opts.scale_rewards,
            "num_iterations": opts.num_iterations,
            "mask_truncated_completions": opts.mask_truncated_completions,
            "epsilon_high": opts.epsilon_high,
            "use_vllm": opts.use_vllm,
            "vllm_mode": opts.vllm_mode,
            "log_completions": opts.log_completions,
        }


def _steps_per_generation(config: TrainConfig) -> int:
    steps = config.trainer_args.get("steps_per_generation")
    return steps if isinstance(steps, int) and steps > 0 else config.gradient_accumulation_steps


def generation_batch(config: TrainConfig, processes: int) -> int | None:
    """Completions per generation round, as TRL 1.16's GRPOConfig computes it: trainer_args'
    `generation_batch_size`, else micro_batch_size x processes x steps_per_generation (default:
    gradient_accumulation_steps). None when trainer_args gives a value TRL itself will judge."""
    given = config.trainer_args.get("generation_batch_size")
    if given is not None:
        return given if isinstance(given, int) and given > 0 else None
    return config.micro_batch_size * processes * _steps_per_generation(config)

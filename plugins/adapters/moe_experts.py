"""Mixture-of-experts weights for `lora` / `qlora`: LoRA on raw parameters, expert quantization and
Llama 4's linearized experts.

In transformers 5 the experts of an MoE block (Qwen3-MoE, Mixtral, GLM4-MoE, Llama 4, gpt-oss...)
hold their weights as fused 3D parameters (`experts.gate_up_proj`, `experts.down_proj`), not as
nn.Linear modules, so `target_modules` cannot reach them and bitsandbytes' 4/8-bit load leaves them
in 16 bits. Three answers, as in Axolotl:

- `target_parameters`: PEFT's LoRA on raw parameters (`LoraConfig(target_parameters=...)`), one
  low-rank update per expert.
- `quantize_moe_experts`: after the load, every expert parameter (3D or more, under a module whose
  name says `expert`) is quantized in place with bitsandbytes' parametrizations (4-bit nf4/fp4 for
  qlora, int8 row-wise for lora's load_in_8bit); it is dequantized when the forward reads it. The
  checkpoint is read in its own dtype first, so the loading peak is the unquantized model's; the
  training footprint is the quantized one.
- `llama4_linearized_experts`: Llama 4's fused experts become one nn.Linear per expert and
  projection (`experts.gate_projs.N`, `up_projs.N`, `down_projs.N`), with the same outputs, so
  `target_modules` and 4-bit quantization reach them.

PEFT 0.21 handles LoRA on parameters that carry such a parametrization only half-way; the core
fixes that before the trainer wraps the model (trainer/training/parametrized_lora.py), since plugins
use no framework internals. The expert parameters are quantized in definition order, which is the
order the core wraps them in.
"""

from __future__ import annotations

import re
from typing import Any

EXPERT_MODULE = re.compile(r"expert", re.IGNORECASE)


PER_EXPERT = re.compile(r"\.experts\.\d+\.")


def header_experts(tensors: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The expert weights of a checkpoint, from its header: fused (3D or more, 'expert' in the name)
    or one tensor per expert (`experts.N.`), which transformers 5 fuses into 3D parameters on load."""
    return {
        name: shape
        for name, shape in tensors.items()
        if (len(shape) >= 3 and EXPERT_MODULE.search(name)) or (len(shape) == 2 and PER_EXPERT.search(name))
    }


LINEARIZED_KEY = re.compile(r"\.experts\.(gate|up|down)_projs\.\d+\.")
"""A checkpoint saved with Axolotl's linearized Llama 4 experts has tensors named like this."""


def expert_parameters(model: Any) -> dict[str, list[str]]:
    """module name -> names of its own 3D (or more) parameters, for modules whose name says 'expert'
    (the fused expert stacks), in definition order."""
    found: dict[str, list[str]] = {}
    for module_name, module in model.named_modules():
        if not EXPERT_MODULE.search(module_name) or hasattr(module, "parametrizations"):
            continue
        names = [name for name, param in module.named_parameters(recurse=False) if param.ndim >= 3]
        if names:
            found[module_name] = names
    return found


def parameter_names(model: Any) -> list[str]:
    """Every parameter's name as `target_parameters` sees it (`module.param`, a quantized parameter
    under its own name rather than `parametrizations.param.original`)."""
    names = []
    for module_name, module in model.named_modules():
        if ".parametrizations." in f".{module_name}.":
            continue
        own = [
            *getattr(module, "parametrizations", {}),
            *(n for n, _ in module.named_parameters(recurse=False)),
        ]
        names += [f"{module_name}.{n}" if module_name else n for n in own]
    return names


def unmatched_parameters(targets: list[str], names: list[str]) -> list[str]:
    """The `target_parameters` entries that name no parameter (PEFT's rule: the full name, or a suffix
    after a dot)."""
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def _int8_parametrization(row_stats: Any) -> Any:
    import bitsandbytes.functional as F
    import torch

    class Bnb8bitParametrization(torch.nn.Module):
        """Dequantizes int8 row-wise quantized data (bitsandbytes LLM.int8 vectors) on access."""

        def __init__(self, stats: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("row_stats", stats)

        @torch.no_grad()
        def forward(self, quantized: torch.Tensor) -> torch.Tensor:
            shape = quantized.shape
            flat = quantized.reshape(-1, shape[-1])
            stats: torch.Tensor = self.row_stats  # type: ignore[assignment]
            return F.int8_vectorwise_dequant(flat, stats).reshape(shape)

    return Bnb8bitParametrization(row_stats)


def quantize_experts(model: Any, bits: int, quant_type: str = "nf4", double_quant: bool = True) -> int:
    """Quantize every expert parameter of `model` in place (bits 4 or 8); returns how many. The
    dequantized weight has the parameter's dtype (4-bit) or float16 (8-bit, as bitsandbytes)."""
    import torch
    import torch.nn.utils.parametrize as P

    count = 0
    for module_name, names in expert_parameters(model).items():
        module = model.get_submodule(module_name)
        for name in names:
            if bits == 4:
                from bitsandbytes.nn.parametrize import replace_parameter_4bit

                replace_parameter_4bit(module, name, compress_statistics=double_quant, quant_type=quant_type)  # type: ignore[arg-type]
            else:
                import bitsandbytes.functional as F

                param = getattr(module, name)
                data, row_stats, _ = F.int8_vectorwise_quant(param.data.reshape(-1, param.shape[-1]).half())
                setattr(module, name, torch.nn.Parameter(data.reshape(param.shape), requires_grad=False))
                P.register_parametrization(module, name, _int8_parametrization(row_stats), unsafe=True)
            count += 1
    return count


def expert_bytes(model: Any) -> int:
    """Bytes the expert weights take: quantized codes plus their quantization state, or the plain
    parameters."""
    import torch

    total = 0
    for module_name, module in model.named_modules():
        if not EXPERT_MODULE.search(module_name) or ".parametrizations" in module_name:
            continue
        for plist in getattr(module, "parametrizations", {}).values():
            total += plist.original.numel() * plist.original.element_size()
            for p in plist:
                state = getattr(p, "quant_state", None)
                if state is not None:
                    tensors = [v for v in state.as_dict(packed=True).values() if torch.is_tensor(v)]
                    total += sum(t.numel() * t.element_size() for t in tensors)
                total += sum(b.numel() * b.element_size() for b in p.buffers())
        total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False) if p.ndim >= 3)
    return total


# --- Llama 4 linearized experts -------------------------------------------------------------------


def linearize_llama4(model: Any) -> int:
    """Replace every Llama 4 fused expert stack (`Llama4TextExperts`) by one nn.Linear per expert and
    projection, holding the same weights; returns how many stacks. The forward is the same math."""
    count = 0
    for name, module in list(model.named_modules()):
        if type(module).__name__ != "Llama4TextExperts":
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _linearized(module))
        count += 1
    return count


def _linearized(fused: Any) -> Any:
    import torch
    from torch import nn

    class LinearizedLlama4Experts(nn.Module):
        """Llama 4's experts as nn.Linear modules (Axolotl's llama4_linearized_experts layout):
        gate_projs[i], up_projs[i], down_projs[i]."""

        def __init__(self, num_experts: int, hidden: int, inner: int, act_fn: Any) -> None:
            super().__init__()
            self.num_experts, self.hidden_size, self.expert_dim = num_experts, hidden, inner

            def stack(i: int, o: int) -> nn.ModuleList:
                return nn.ModuleList(nn.Linear(i, o, bias=False) for _ in range(num_experts))

            self.gate_projs, self.up_projs = stack(hidden, inner), stack(hidden, inner)
            self.down_projs = stack(inner, hidden)
            self.act_fn = act_fn

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            per_expert = hidden_states.view(self.num_experts, -1, self.hidden_size)
            outs = [
                self.down_projs[i](self.up_projs[i](x) * self.act_fn(self.gate_projs[i](x)))
                for i, x in enumerate(per_expert)
            ]
            return torch.stack(outs).view(-1, self.hidden_size)

    gate_up, down = fused.gate_up_proj.data, fused.down_proj.data  # (E, hidden, 2*inner), (E, inner, hidden)
    experts, hidden, inner = gate_up.shape[0], gate_up.shape[1], gate_up.shape[2] // 2
    new = LinearizedLlama4Experts(experts, hidden, inner, fused.act_fn).to(
        device=gate_up.device, dtype=gate_up.dtype
    )
    with torch.no_grad():
        for i in range(experts):
            weights: list[Any] = [new.gate_projs[i].weight, new.up_projs[i].weight, new.down_projs[i].weight]
            weights[0].copy_(gate_up[i, :, :inner].T)
            weights[1].copy_(gate_up[i, :, inner:].T)
            weights[2].copy_(down[i].T)
    return new


def quantize_linears_4bit(
    model: Any, under: str, quant_type: str, double_quant: bool, compute_dtype: Any, storage: Any
) -> int:
    """Replace the nn.Linear modules whose name contains `under` by bitsandbytes Linear4bit holding
    the same weights quantized (what a 4-bit load does to the other linears); returns how many."""
    import bitsandbytes as bnb
    import torch

    count = 0
    for name, module in list(model.named_modules()):
        if type(module) is not torch.nn.Linear or under not in name:
            continue
        q = bnb.nn.Linear4bit(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
            quant_storage=storage,
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            module.weight.data,
            requires_grad=False,
            compress_statistics=double_quant,
            quant_type=quant_type,
            quant_storage=storage,
        )
        if module.bias is not None:
            q.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        q = q.to(module.weight.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, q)
        count += 1
    return count

"""PEFT's LoRA on parameters that already carry a torch parametrization: MoE expert weights that an
adapter quantized in place with bitsandbytes (`quantize_moe_experts`; `bitsandbytes.nn.parametrize`
dequantizes them when read).

PEFT 0.21's `target_parameters` handles such parameters only half-way. `target_parametrized`, called
on the loaded model before the trainer wraps it, fixes three things (once per process; models
without parametrized parameters are untouched):

- matching and order: PEFT matches a parametrized parameter by its full name only, and wraps the
  parameters of one module in the sorted order of their names. The wrappers nest, and the nesting
  names the adapter's weights (`experts.lora_A` vs `experts.base_layer.lora_A`), so it must be the
  one PEFT builds on the unquantized model (definition order) for the saved adapter to load there.
  Here the targets are expanded to full names and a parametrized module's parameters are wrapped
  in the order they were parametrized (the adapter quantizes them in definition order).
- PEFT's single-adapter expert proxy (`_LoraFactorsProxy`) is not removed after a forward when the
  parameter has another parametrization (only `_LoraParameterProxy` is looked for), so the update
  would compound on every forward: it is removed.
- a value torch's parametrize cache took before the LoRA proxy was registered on the parameter
  (nested wrappers, bitsandbytes' cache hooks) would hide the update: it is dropped.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

_PATCHED = "trainer_parametrized_lora"


def parametrized_modules(model: Any) -> dict[str, Any]:
    """name -> module, for the modules with parametrized parameters (not torch's own containers)."""
    return {
        name: module
        for name, module in model.named_modules()
        if getattr(module, "parametrizations", None) and ".parametrizations." not in f".{name}."
    }


def target_parametrized(model: Any, peft_config: Any) -> None:
    """Before PEFT wraps `model`: each parametrized parameter that `peft_config.target_parameters`
    selects (PEFT's rule: the full name or its last dotted parts) is added under its full name, and
    PEFT is patched as the module docstring says."""
    targets = list(getattr(peft_config, "target_parameters", None) or [])
    modules = parametrized_modules(model)
    if not targets or not modules:
        return
    extra = [
        key
        for name, module in modules.items()
        for param in module.parametrizations
        if (key := f"{name}.{param}") not in targets and any(key.endswith("." + t) for t in targets)
    ]
    peft_config.target_parameters = [*targets, *extra]
    _patch_peft()


# PEFT 0.21.2: BaseTuner._inject_parameters, ParamWrapper._activate_lora / _remove_parametrizations,
# lora.layer._LoraFactorsProxy and torch 2.13's parametrize._cache, as read in those versions.
def _patch_peft() -> None:
    import torch.nn.utils.parametrize as P
    from peft.tuners.lora import layer as lora_layer
    from peft.tuners.tuners_utils import BaseTuner
    from peft.utils.other import _get_submodules

    if getattr(BaseTuner, _PATCHED, False):
        return
    inject = BaseTuner._inject_parameters
    remove = lora_layer.ParamWrapper._remove_parametrizations
    activate = lora_layer.ParamWrapper._activate_lora
    factors_proxy = lora_layer._LoraFactorsProxy

    # PEFT 0.21.2: the parametrized modules are left out of PEFT's own pass and wrapped here, in order.
    def _inject_parameters(
        self: Any, peft_config: Any, model: Any, adapter_name: str, low_cpu_mem_usage: bool
    ) -> Any:
        modules = parametrized_modules(model)
        targets = list(peft_config.target_parameters)
        ours = {f"{name}.{param}" for name, module in modules.items() for param in module.parametrizations}
        peft_config.target_parameters = [t for t in targets if t not in ours]
        try:
            found = list(inject(self, peft_config, model, adapter_name, low_cpu_mem_usage) or [])
        finally:
            peft_config.target_parameters = targets
        for name, module in modules.items():
            for param in list(module.parametrizations):
                key = f"{name}.{param}"
                if not any(key == t or key.endswith("." + t) for t in targets):
                    continue
                parent, target, target_name = _get_submodules(model, name)  # the outermost wrapper
                self._check_target_module_compatiblity(peft_config, model, target_name)
                self._create_and_replace(
                    peft_config,
                    adapter_name,
                    target,
                    target_name,
                    parent,
                    current_key=key,
                    parameter_name=param,
                )
                found.append(key)
        named = getattr(self, "targeted_parameter_names", None)
        if isinstance(named, list):
            named.extend(key for key in found if key not in named)
        return found

    # PEFT 0.21.2 only looks for _LoraParameterProxy when a parameter holds several parametrizations.
    def _remove_parametrizations(self: Any) -> None:
        chain = self.get_base_layer().parametrizations[self.parameter_name]
        if len(chain) > 1 and isinstance(chain[-1], factors_proxy):
            del chain[-1]
            return
        remove(self)

    # torch 2.13's parametrize cache: drop what was cached before the proxy was registered.
    @contextmanager
    def _activate_lora(self: Any, active_adapters: list[str]) -> Any:
        key = (id(self.get_base_layer()), self.parameter_name)
        with activate(self, active_adapters):
            P._cache.pop(key, None)
            try:
                yield
            finally:
                P._cache.pop(key, None)

    BaseTuner._inject_parameters = _inject_parameters  # type: ignore[method-assign]
    lora_layer.ParamWrapper._remove_parametrizations = _remove_parametrizations  # type: ignore[method-assign]
    lora_layer.ParamWrapper._activate_lora = _activate_lora  # type: ignore[method-assign]
    setattr(BaseTuner, _PATCHED, True)

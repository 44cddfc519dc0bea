"""Memory per device for a resolved config, estimated without torch (for `validate`).

Parameter shapes come from the checkpoint without loading it: a local model's safetensors
header(s) (8-byte little-endian length + JSON of names, dtypes and shapes; the shards named by
`model.safetensors.index.json`), else the same files or `config.json` in the Hugging Face cache,
and for a config alone a formula for Llama-like models (embeddings, q/k/v/o, gate/up/down, norms).

Bytes per parameter follow the seed notes (shared/seeds/002, "Using a Single GPU": "A typical
model with AdamW optimizer requires 18 bytes per parameter"; 8-bit AdamW and Adafactor save
memory) with the breakdown of its reference 1 (huggingface.co/docs/transformers/perf_train_gpu_one,
"anatomy of the model's memory"):

* weights: 4 bytes (fp32) or 2 (fp16/bf16 checkpoint), as `dtype="auto"` loads them; mixed
  precision (bf16/fp16 on fp32 weights) adds the 16-bit working copy, 2 bytes per trainable
  parameter (autocast caches casts of trainable leaves only). 4-bit NF4 base linears (qlora):
  0.5 byte + one fp32 absmax per 64 weights (0.0625), or with double quantisation one 8-bit absmax
  per 64 plus one fp32 per 64*256 (0.0159). 8-bit base linears: 1 byte + an fp32 scale per row.
* gradients: one per trainable parameter in its own dtype (4 bytes for fp32 master weights).
* optimizer states: AdamW 8 bytes (two fp32 moments); 8-bit Adam (bitsandbytes, torchao) 2 bytes
  + an fp32 absmax per 256 values, tensors under 4096 values (and, in bitsandbytes optimizers,
  embeddings: transformers overrides them) keep 32-bit states; SGD 0 bytes, 4 with momentum
  (`optim_args: momentum=...`); Adafactor (transformers', beta1=None) is factored: exactly
  4*(rows+cols) bytes per matrix (the row and column second moments) and 4 bytes per vector
  value, computed from the shapes, so well under the "~4 bytes per parameter" upper bound;
  GaLore keeps its states on rank-r projections of each targeted matrix.
  So mixed-precision AdamW = 4 + 2 + 4 + 8 = 18 bytes per trainable parameter (the seed's number),
  fp32 AdamW = 16, 8-bit AdamW mixed = 10 + ~2.03.
* LoRA: only adapter parameters train: r*(in+out) per targeted linear (`all-linear` = every
  linear except the output layer, as PEFT), in fp32 (PEFT upcasts adapters); DoRA adds `out`.
* activations: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
  Models", eq. 1): per layer s*b*h*34 + 5*a*s^2*b bytes in 16-bit, with the MLP's 16*s*b*h (for
  an intermediate of 4h) replaced by 4*s*b*I for the model's intermediate size I, so
  s*b*(18h + 4I) + 5*a*s^2*b; the 5*a*s^2*b attention-score term only for `eager` attention (sdpa
  and flash kernels do not keep the scores); doubled for fp32 activations. Gradient checkpointing
  keeps each layer's input (2*s*b*h bytes in 16-bit) plus one layer's full activations while it is
  recomputed. Plus the logits (s*b*V in the activation dtype, their fp32 upcast and log-softmax).
  s = sequence_len (the longest a row may be), b = micro_batch_size.
* sharding: what the distributed plugin's `sharding()` says (`trainer.api.Sharding`): ZeRO stage 1
  divides optimizer states by the processes, 2 also gradients, 3 also weights; DDP divides nothing;
  offloaded optimizer state or weights are not on the device.

Not counted: CUDA context and allocator slack, temporary buffers, the eval pass.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
ST_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
NAME_BYTES = {"float64": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit states for smaller tensors
BLOCK = 256  # values per fp32 absmax in 8-bit optimizer states

Shape = tuple[int, ...]


class Unavailable(Exception):
    """The estimate cannot be made; the message says why."""


@dataclass
class ModelShapes:
    """Every parameter tensor's shape, the bytes per value the weights load in, and config.json."""

    tensors: dict[str, Shape]
    dtype_bytes: int
    config: dict[str, Any]
    source: str

    @property
    def num_params(self) -> int:
        return sum(_numel(s) for s in self.tensors.values())

    def linears(self) -> dict[str, tuple[int, int]]:
        """module name -> (in, out) of every linear layer but embeddings and the output layer."""
        return linear_layers(self.tensors)


def linear_layers(tensors: dict[str, Shape]) -> dict[str, tuple[int, int]]:
    """module name -> (in, out) of every linear layer but embeddings and the output layer."""
    out = {}
    for name, shape in tensors.items():
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        last = module.rsplit(".", 1)[-1]
        if re.search(r"embed|wte|wpe|lm_head", module) or last in ("output", "embed_out"):
            continue
        out[module] = (shape[1], shape[0])
    return out


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---- shapes without torch ------------------------------------------------------------------------


MAX_HEADER = 100 * 1024 * 1024
MAX_DIMENSION = 2**40
"""Largest tensor dimension or config.json size believed: anything bigger is a broken file."""


def read_safetensors_header(path: str) -> dict[str, dict[str, Any]]:
    """name -> {"dtype", "shape"} from a .safetensors file's header; no tensor data is read.
    Raises Unavailable for a file that is not one (too short, a header that is not JSON of tensors)."""
    with open(path, "rb") as f:
        start = f.read(8)
        if len(start) < 8:
            raise Unavailable(f"{path}: not a safetensors file ({len(start)} bytes)")
        (length,) = struct.unpack("<Q", start)
        if length > MAX_HEADER:
            raise Unavailable(f"{path}: implausible safetensors header length {length}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as err:  # UnicodeDecodeError included
        raise Unavailable(f"{path}: the safetensors header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise Unavailable(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    for name, info in header.items():
        if not _is_tensor_info(info):
            raise Unavailable(
                f"{path}: tensor {name!r} in the safetensors header has no valid dtype and shape"
            )
    return header


def _is_tensor_info(info: Any) -> bool:
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        return False
    shape = info.get("shape")
    return isinstance(shape, list) and all(type(d) is int and 0 <= d <= MAX_DIMENSION for d in shape)


def _from_headers(files: list[str], config: dict[str, Any], source: str) -> ModelShapes:
    tensors: dict[str, Shape] = {}
    counts: dict[int, int] = {}
    for path in files:
        for name, info in read_safetensors_header(path).items():
            shape = tuple(int(d) for d in info["shape"])
            tensors[name] = shape
            if info["dtype"].startswith(("F", "BF")):
                size = ST_BYTES.get(info["dtype"], 4)
                counts[size] = counts.get(size, 0) + _numel(shape)
    if config.get("tie_word_embeddings") and any(n.endswith("embed_tokens.weight") for n in tensors):
        tensors.pop("lm_head.weight", None)  # tied: one parameter, as model.parameters() counts it
    dtype = _config_dtype(config) or (max(counts, key=lambda k: counts[k]) if counts else 4)
    return ModelShapes(tensors, dtype, config, source)


def _config_dtype(config: dict[str, Any]) -> int | None:
    name = config.get("dtype") or config.get("torch_dtype")
    return NAME_BYTES.get(str(name).replace("torch.", "")) if name else None


LLAMA_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads")
MAX_LAYERS = 10_000


def _size(config: dict[str, Any], key: str) -> int:
    """A positive whole-number size from config.json (raises Unavailable)."""
    value = config.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 < value <= MAX_DIMENSION:
        raise Unavailable(f"config.json: {key} is {value!r}, not a positive whole number")
    return value


def llama_like_tensors(config: dict[str, Any]) -> dict[str, Shape]:
    """Parameter shapes of a Llama-like decoder from its config.json (raises Unavailable)."""
    missing = [k for k in LLAMA_KEYS if config.get(k) is None]
    if missing:
        raise Unavailable(f"config.json lacks {', '.join(map(repr, missing))} for the Llama-like formula")
    h, layers, vocab, inter, heads = (_size(config, k) for k in LLAMA_KEYS)
    if layers > MAX_LAYERS:
        raise Unavailable(f"config.json: num_hidden_layers is {layers}, implausibly many")
    kv = _size(config, "num_key_value_heads") if config.get("num_key_value_heads") else heads
    head_dim = _size(config, "head_dim") if config.get("head_dim") else h // heads
    bias = bool(config.get("attention_bias", False))
    tensors: dict[str, Shape] = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj, out, inp in (("q", heads * head_dim, h), ("k", kv * head_dim, h), ("v", kv * head_dim, h)):
            tensors[f"{p}self_attn.{proj}_proj.weight"] = (out, inp)
            if bias:
                tensors[f"{p}self_attn.{proj}_proj.bias"] = (out,)
        tensors[f"{p}self_attn.o_proj.weight"] = (h, heads * head_dim)
        tensors[f"{p}mlp.gate_proj.weight"] = (inter, h)
        tensors[f"{p}mlp.up_proj.weight"] = (inter, h)
        tensors[f"{p}mlp.down_proj.weight"] = (h, inter)
        tensors[f"{p}input_layernorm.weight"] = (h,)
        tensors[f"{p}post_attention_layernorm.weight"] = (h,)
    if not config.get("tie_word_embeddings", False):
        tensors["lm_head.weight"] = (vocab, h)
    return tensors


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as err:  # UnicodeDecodeError included
        raise Unavailable(f"{path} is not valid JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def _shapes_in(find: Any, where: str) -> ModelShapes:
    """Shapes from files found by `find(filename) -> path | None` (a folder or the hub cache)."""
    config_path = find("config.json")
    config = _read_json(config_path) if config_path else {}
    index = find("model.safetensors.index.json")
    if index:
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise Unavailable(f"{index}: 'weight_map' is not a mapping of tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        paths = [find(s) for s in shards]
        if shards and all(paths):
            return _from_headers(paths, config, f"safetensors headers ({len(shards)} shards) in {where}")
        gone = [s for s, found in zip(shards, paths, strict=True) if not found]
        if gone and not find("model.safetensors") and not config_path:
            raise Unavailable(f"the shards {', '.join(gone)} named by {index} are missing")
    single = find("model.safetensors")
    if single:
        return _from_headers([single], config, f"safetensors header in {where}")
    if not config_path:
        raise Unavailable(f"no config.json or safetensors file in {where}")
    return ModelShapes(
        llama_like_tensors(config), _config_dtype(config) or 4, config, f"config.json formula ({where})"
    )


def find_shapes(base_model: str) -> ModelShapes:
    """Shapes of `base_model` (a folder or a hub id in the local cache); raises Unavailable."""
    folder = os.path.expanduser(base_model)
    if os.path.isdir(folder):

        def local(name: str) -> str | None:
            path = os.path.join(folder, name)
            return path if os.path.isfile(path) else None

        return _shapes_in(local, folder)
    try:
        from huggingface_hub import try_to_load_from_cache  # no torch import
    except ImportError:
        raise Unavailable(f"'{base_model}' is not a folder and huggingface_hub is missing") from None

    def cached(name: str) -> str | None:
        try:
            found = try_to_load_from_cache(base_model, name)
        except Exception:  # an id the hub client rejects is simply not cached
            return None
        return found if isinstance(found, str) else None

    if not cached("config.json") and not cached("model.safetensors"):
        raise Unavailable(f"'{base_model}' is not a local folder and not in the hub cache")
    return _shapes_in(cached, "the hub cache")


# ---- the estimate --------------------------------------------------------------------------------


@dataclass
class Tensor:
    shape: Shape
    bytes: float  # per value
    galore: bool = False  # a GaLore/APOLLO-projected matrix
    embedding: bool = False  # transformers gives nn.Embedding 32-bit states in bitsandbytes optimizers


@dataclass
class Estimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float | None
    trainable: int
    total_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + (self.activations or 0)

    def render(self) -> str:
        act = gib(self.activations) if self.activations is not None else "n/a"
        share = 100 * self.trainable / self.total_params if self.total_params else 0
        return (
            f"weights {gib(self.weights)}, gradients {gib(self.gradients)}, optimizer "
            f"{gib(self.optimizer)}, activations {act}, total {gib(self.total)}; trainable "
            f"{count(self.trainable)} of {count(self.total_params)} parameters ({share:.2f}%)"
        )


def gib(n: float) -> str:
    if n >= 0.1 * GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def count(n: int) -> str:
    for size, unit in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _opt(options: Any, name: str, default: Any) -> Any:
    return getattr(options, name, default) if options is not None else default


def peft_selects(module: str, target: str) -> bool:
    """PEFT's rule for a name in a target_modules list: the module's whole name, or its last parts."""
    return module == target or module.endswith("." + target)


def _targets(
    spec: Any, linears: dict[str, tuple[int, int]], regex: bool = False
) -> dict[str, tuple[int, int]]:
    """The linears a PEFT-style target_modules selects ('all-linear', a regex string, or names)."""
    if spec in (None, "all-linear", "all_linear"):
        return dict(linears)
    if isinstance(spec, str):
        return {m: s for m, s in linears.items() if re.fullmatch(spec, m)}
    names = [str(t) for t in spec]

    def hit(module: str, target: str) -> bool:
        if peft_selects(module, target):
            return True
        try:  # transformers' optim_target_modules (GaLore) also take regexes
            return regex and (target in module or re.fullmatch(target, module) is not None)
        except re.error:
            return False

    return {m: s for m, s in linears.items() if any(hit(m, t) for t in names)}


def _momentum(config: Any) -> bool:
    args = str((getattr(config, "trainer_args", None) or {}).get("optim_args") or "")
    match = re.search(r"momentum\s*=\s*([0-9.eE+-]+)", args)
    return bool(match and float(match.group(1)) != 0)


def state_bytes(optimizer: str, t: Tensor, momentum: bool = False, rank: int = 128) -> float:
    """Bytes of one trainable tensor's optimizer state (see the module docstring)."""
    n, b = _numel(t.shape), t.bytes
    name = optimizer.replace("paged_", "").replace("_layerwise", "")
    if name.startswith(("galore_", "apollo_")) and t.galore and len(t.shape) == 2:
        small, big = sorted(t.shape)
        r = min(rank, small)
        projector = small * r * 4
        inner = name.split("_", 1)[1]
        return projector + state_bytes(inner, Tensor((r, big), 4), momentum, rank)
    name = {"galore_adamw": "adamw", "galore_adamw_8bit": "adamw_8bit", "galore_adafactor": "adafactor",
            "apollo_adamw": "adamw"}.get(name, name)  # fmt: skip
    eight_bit = {"adamw_8bit": 2, "adamw_bnb_8bit": 2, "adamw_torch_8bit": 2, "lion_8bit": 1,
                 "rmsprop_bnb_8bit": 1, "ademamix_8bit": 3, "adamw_torch_4bit": 2}  # fmt: skip
    if name in eight_bit:
        states = eight_bit[name]
        if n < MIN_8BIT_SIZE or (t.embedding and "torch" not in name):
            return states * 4 * n
        per_value = 0.5 if name.endswith("4bit") else 1.0
        return states * (per_value * n + 4 * -(-n // BLOCK))
    if name in ("adafactor", "adalomo"):
        if len(t.shape) >= 2:
            rows, cols = _numel(t.shape[:-1]), _numel(t.shape[:-2] + t.shape[-1:])
            return b * (rows + cols)
        return b * n
    if name in ("sgd",):
        return b * n if momentum else 0
    if name in ("lomo",):
        return 0
    fp32 = name in ("adamw_anyprecision", "lion_32bit", "rmsprop_bnb", "rmsprop_bnb_32bit", "adamw_32bit",
                    "ademamix_32bit")  # fmt: skip
    size = 4 if fp32 else b
    if name in ("adagrad", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_32bit", "lion_32bit", "schedule_free_sgd"):
        return size * n * (2 if name == "rmsprop" and momentum else 1)
    if name in ("ademamix", "ademamix_32bit", "grokadamw"):
        return 3 * size * n
    return 2 * size * n  # AdamW and the Adam family: two moments


def estimate(resolved: Any, shapes: ModelShapes | None = None) -> Estimate:
    """Memory per device for a resolved config; raises Unavailable."""
    c = resolved.config
    shapes = shapes or find_shapes(c.base_model)
    adapter = resolved.adapter.entry.name
    opts = getattr(resolved.adapter.plugin, "options", None)
    notes: list[str] = [f"shapes from {shapes.source}"]
    wb = shapes.dtype_bytes
    mixed = (c.bf16 or c.fp16) and wb == 4
    linears = shapes.linears()
    is_lora = "lora" in adapter or (hasattr(opts, "r") and hasattr(opts, "target_modules"))
    quant4 = adapter == "qlora" or bool(_opt(opts, "load_in_4bit", False))
    quant8 = not quant4 and bool(_opt(opts, "load_in_8bit", False))

    # frozen/stored weights
    weights = 0.0
    trainable: list[Tensor] = []
    quant_linear = {f"{m}.weight" for m in linears} if (quant4 or quant8) else set()
    per_value = 1.0
    if quant4:
        wb = NAME_BYTES.get(str(_opt(opts, "compute_dtype", "bfloat16")).replace("torch.", ""), 2)
        double = bool(_opt(opts, "double_quant", True))
        per_value = 0.5 + (1 / 64 + 4 / (64 * 256) if double else 4 / 64)
        notes.append(f"4-bit base: {per_value:.4f} bytes per linear weight")
    for name, shape in shapes.tensors.items():
        n = _numel(shape)
        if name in quant_linear:
            weights += n * per_value if quant4 else n + 4 * shape[0]
        else:
            weights += n * wb

    if is_lora:
        r = int(_opt(opts, "r", 16))
        targeted = _targets(_opt(opts, "target_modules", "all-linear"), linears)
        for inp, out in targeted.values():
            trainable += [Tensor((r, inp), 4), Tensor((out, r), 4)]
            if _opt(opts, "use_dora", False):
                trainable.append(Tensor((out,), 4))
        bias = _opt(opts, "bias", "none")
        for name, shape in shapes.tensors.items():
            module = name.rsplit(".", 1)[0]
            if name.endswith(".bias") and (bias == "all" or (bias == "lora_only" and module in targeted)):
                trainable.append(Tensor(shape, wb))
        saved = [str(m) for m in _opt(opts, "modules_to_save", None) or []]
        for name, shape in shapes.tensors.items():
            module = name.rsplit(".", 1)[0]
            if any(module == m or module.endswith("." + m) for m in saved):
                trainable.append(Tensor(shape, wb))  # a trainable copy beside the frozen original
        weights += sum(_numel(t.shape) * t.bytes for t in trainable)
        if not targeted:
            notes.append("no linear layer matches target_modules")
    else:
        patterns = [re.compile(p) for p in _opt(opts, "unfrozen_parameters", None) or []]
        galore_targets = set()
        if c.optimizer.startswith(("galore_", "apollo_")):
            chosen = _targets(_opt(opts, "target_modules", None), linears, regex=True)
            galore_targets = {f"{m}.weight" for m in chosen}
        for name, shape in shapes.tensors.items():
            if patterns and not any(p.search(name) for p in patterns):
                continue
            embedding = bool(re.search(r"embed|wte|wpe", name))
            trainable.append(Tensor(shape, wb, galore=name in galore_targets, embedding=embedding))
        if adapter not in ("full", "galore"):
            notes.append(f"adapter '{adapter}' counted as full training")

    n_train = sum(_numel(t.shape) for t in trainable)
    if mixed:
        weights += 2 * sum(_numel(t.shape) for t in trainable if t.bytes == 4)  # 16-bit working copy
    gradients = sum(_numel(t.shape) * t.bytes for t in trainable)
    if c.optimizer in ("lomo", "adalomo"):
        gradients = 0.0  # fused into the backward pass
    elif c.optimizer.endswith("_layerwise"):
        gradients = max((_numel(t.shape) * t.bytes for t in trainable), default=0.0)
    momentum, rank = _momentum(c), int(_opt(opts, "rank", 128))
    optimizer = sum(state_bytes(c.optimizer, t, momentum, rank) for t in trainable)

    sharding = resolved.distributed.plugin.sharding()
    over = max(1, sharding.over)
    if sharding.optimizer:
        optimizer /= over
    if sharding.gradients:
        gradients /= over
    if sharding.weights:
        weights /= over
    if sharding.stage:
        notes.append(f"ZeRO stage {sharding.stage} over {over} processes")
    if sharding.optimizer_offloaded:
        optimizer = 0.0
        notes.append("optimizer state in CPU RAM")
    if sharding.weights_offloaded:
        weights = 0.0
        notes.append("weights in CPU RAM, gathered a layer at a time (not counted)")

    act_bytes = 2 if (c.bf16 or c.fp16 or wb == 2) else 4
    attention = resolved.attention.entry.name
    activations = activation_bytes(
        shapes.config, c.sequence_len, c.micro_batch_size, act_bytes, c.gradient_checkpointing,
        scores=attention == "eager",
    )  # fmt: skip
    if activations is None:
        notes.append("activations need hidden_size, num_hidden_layers, num_attention_heads in config.json")
    total_params = shapes.num_params + (n_train if is_lora else 0)
    return Estimate(weights, gradients, optimizer, activations, n_train, total_params, notes)


def activation_bytes(
    config: dict[str, Any], seq: int, batch: int, act_bytes: int, checkpointing: bool, scores: bool
) -> float | None:
    """Korthikanti et al. per-layer activations (see the module docstring), all layers + logits."""

    def first(*keys: str) -> int | None:
        key = next((k for k in keys if config.get(k)), None)
        return _size(config, key) if key else None

    try:
        h = first("hidden_size", "n_embd", "d_model")
        layers = first("num_hidden_layers", "n_layer")
        heads = first("num_attention_heads", "n_head")
        if h is None or layers is None or heads is None:
            return None
        inter = first("intermediate_size", "n_inner") or 4 * h
        vocab = first("vocab_size") or 0
    except Unavailable:
        return None
    scale = act_bytes / 2  # the formula counts 16-bit values
    layer = seq * batch * (18 * h + 4 * inter) * scale
    if scores:
        layer += 5 * heads * seq * seq * batch * scale
    # checkpointing keeps every layer's input and one layer's activations during its recomputation
    total = layers * seq * batch * h * act_bytes + layer if checkpointing else layers * layer
    return total + seq * batch * vocab * (act_bytes + 8)

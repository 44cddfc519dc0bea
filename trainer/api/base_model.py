"""The base model as a torch-free reader sees it: parameter names and shapes from the safetensors
header(s) (8-byte little-endian length + JSON of names, dtypes and shapes; the shards named by
`model.safetensors.index.json`), else the same files or `config.json` in the Hugging Face cache,
and for a config alone a formula for Llama-like models (embeddings, q/k/v/o, gate/up/down, norms).

Plugins see it through `describe_base_model` (in `check()`, to refuse an option that names no module);
the memory estimate reads the same shapes. Nothing is downloaded and no tensor data is read.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

ST_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
NAME_BYTES = {"float64": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}

Shape = tuple[int, ...]


class Unavailable(Exception):
    """The model's shapes cannot be read; the message says why."""


@dataclass
class ModelShapes:
    """Every parameter tensor's shape, the bytes per value the weights load in, and config.json."""

    tensors: dict[str, Shape]
    dtype_bytes: int
    config: dict[str, Any]
    source: str

    @property
    def num_params(self) -> int:
        return sum(numel(s) for s in self.tensors.values())

    def linears(self) -> dict[str, tuple[int, int]]:
        """module name -> (in, out) of every linear layer but embeddings and the output layer."""
        return linear_layers(self.tensors)

    def describe(self) -> BaseModelInfo:
        """These shapes as the public `BaseModelInfo` a plugin sees."""
        return BaseModelInfo(dict(self.tensors), dict(self.config), self.source, self.dtype_bytes)


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


def numel(shape: Shape) -> int:
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
                counts[size] = counts.get(size, 0) + numel(shape)
    if config.get("tie_word_embeddings") and any(n.endswith("embed_tokens.weight") for n in tensors):
        tensors.pop("lm_head.weight", None)  # tied: one parameter, as model.parameters() counts it
    dtype = _config_dtype(config) or (max(counts, key=lambda k: counts[k]) if counts else 4)
    return ModelShapes(tensors, dtype, config, source)


def _config_dtype(config: dict[str, Any]) -> int | None:
    name = config.get("dtype") or config.get("torch_dtype")
    return NAME_BYTES.get(str(name).replace("torch.", "")) if name else None


LLAMA_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads")
MAX_LAYERS = 10_000


def positive_size(config: dict[str, Any], key: str) -> int:
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
    h, layers, vocab, inter, heads = (positive_size(config, k) for k in LLAMA_KEYS)
    if layers > MAX_LAYERS:
        raise Unavailable(f"config.json: num_hidden_layers is {layers}, implausibly many")
    kv = positive_size(config, "num_key_value_heads") if config.get("num_key_value_heads") else heads
    head_dim = positive_size(config, "head_dim") if config.get("head_dim") else h // heads
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


def _signature(folder: str) -> tuple[tuple[str, int, int], ...]:
    """The folder's JSON and safetensors files with their sizes and modification times: the cache
    key, so a model rewritten in place is read again."""
    with os.scandir(folder) as entries:
        return tuple(
            sorted(
                (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                for e in entries
                if e.name.endswith((".json", ".safetensors")) and e.is_file()
            )
        )


@functools.lru_cache(maxsize=8)
def _local_shapes(folder: str, signature: tuple[tuple[str, int, int], ...]) -> ModelShapes:
    """Shapes of a local folder, read once per signature (validate reads them for the memory
    estimate and for plugins' checks)."""

    def local(name: str) -> str | None:
        path = os.path.join(folder, name)
        return path if os.path.isfile(path) else None

    return _shapes_in(local, folder)


def find_shapes(base_model: str) -> ModelShapes:
    """Shapes of `base_model` (a folder or a hub id in the local cache); raises Unavailable."""
    folder = os.path.expanduser(base_model)
    if os.path.isdir(folder):
        shapes = _local_shapes(folder, _signature(folder))
        return ModelShapes(dict(shapes.tensors), shapes.dtype_bytes, dict(shapes.config), shapes.source)
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


def peft_selects(module: str, target: str) -> bool:
    """PEFT's rule for a name in a target_modules list: the module's whole name, or its last parts."""
    return module == target or module.endswith("." + target)


@dataclass(frozen=True)
class BaseModelInfo:
    """The base model as a plugin's `check()` may see it without torch or a download: parameter
    names and shapes from the safetensors headers, and config.json (a local folder or the hub
    cache). From `describe_base_model(config.base_model)`."""

    tensors: dict[str, tuple[int, ...]]
    config: dict[str, Any]
    source: str
    dtype_bytes: int = 4
    """Bytes per value the floating-point weights load in (`dtype=\"auto\"`)."""

    @property
    def num_params(self) -> int:
        return sum(numel(shape) for shape in self.tensors.values())

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def modules(self) -> set[str]:
        """Names of the modules that hold parameters (`model.layers.0.self_attn.q_proj`, ...)."""
        return {name.rsplit(".", 1)[0] for name in self.tensors if "." in name}

    @staticmethod
    def selects_module(module: str, target: str) -> bool:
        """Whether a name in a target_modules list selects this module, by PEFT's rule (the whole
        name, or its last dotted parts)."""
        return peft_selects(module, target)

    def selects(self, target: str) -> bool:
        """Whether a name in a target_modules list selects a module of this model, as PEFT matches
        names (the module's whole name, or its last dotted parts)."""
        return any(peft_selects(module, target) for module in self.modules())

    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """module name -> (in, out) of every linear layer but the embeddings and the output layer."""
        return linear_layers(self.tensors)


def describe_base_model(base_model: str) -> BaseModelInfo | None:
    """`base_model` described from its files, or None when they are not on this machine (a hub id
    not in the cache: nothing is downloaded at validate time)."""
    try:
        shapes = find_shapes(base_model)
    except Unavailable:
        return None
    return shapes.describe()

"""Whether a value fits the type Axolotl's schema gives its key (keys.yaml's `type`, as pydantic
printed it), read the way pydantic's lax mode reads YAML values: a number written as a string is a
number, `1`/`"true"` is a bool, an int is a float.

A value that does not fit is one Axolotl itself rejects: the converter refuses it with the type, and
no rule sees it. Types this module cannot read (a class of Axolotl's, `Any`) accept anything.
"""

from __future__ import annotations

import re
from typing import Any

STRING_LIKE = {"str", "ChatTemplate", "RLType", "CustomSupportedOptimizers", "RingAttnFunc",
               "InferenceServerType", "PIL.Image.Resampling"}  # fmt: skip
"""Axolotl's enums (and str subclasses): written as strings."""
MAPPING_SUFFIXES = ("Config", "Dataset", "PrompterType", "Spec", "LrGroup", "dict", "Dict")
BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", "t", "f", "y", "n"}


def mismatch(type_text: str, value: Any) -> str | None:
    """None when `value` fits `type_text` (or the type cannot be read); else the type, readably."""
    if value is None or not type_text or type_text.startswith("("):
        return None
    alternatives = _alternatives(_unwrap(type_text.split(" (")[0].strip()))
    if any(_fits(alternative, value) for alternative in alternatives):
        return None
    readable = (_readable(alternative) for alternative in alternatives if alternative != "None")
    return " or ".join(dict.fromkeys(readable))


def _unwrap(text: str) -> str:
    """`Optional[X]` -> `X | None`, `Union[a, b]` -> `a | b`, `Annotated[X, ...]` -> `X`."""
    text = text.strip()
    for wrapper in ("Optional", "Union", "Annotated"):
        if text.startswith(f"{wrapper}[") and text.endswith("]"):
            inner = _split(text[len(wrapper) + 1 : -1], ",")
            if wrapper == "Annotated":
                return _unwrap(inner[0])
            joined = " | ".join(_unwrap(part) for part in inner)
            return f"{joined} | None" if wrapper == "Optional" else joined
    return text


def _alternatives(text: str) -> list[str]:
    return [_unwrap(part) for part in _split(text, "|")]


def _split(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == separator and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _fits(alternative: str, value: Any) -> bool:
    parts = _alternatives(alternative)
    if len(parts) > 1:  # a nested union, unwrapped
        return any(_fits(part, value) for part in parts)
    name = alternative.split("[", 1)[0].strip()
    if name == "None":
        return False
    if name == "bool":
        return isinstance(value, bool) or value in (0, 1) or str(value).strip().lower() in BOOL_WORDS
    if name in ("int", "float"):
        if isinstance(value, bool):
            return True  # pydantic's lax mode reads a bool as 0 or 1
        if isinstance(value, int | float):
            return name == "float" or float(value).is_integer()
        return isinstance(value, str) and _number(value, integer=name == "int")
    if name == "Literal":
        choices = [c.strip().strip("'\"").lower() for c in _split(alternative[len("Literal[") : -1], ",")]
        return str(value).strip().lower() in choices
    if name in STRING_LIKE:
        return isinstance(value, str)
    if name in ("list", "List", "tuple", "Tuple"):
        return isinstance(value, list)
    if name.endswith(MAPPING_SUFFIXES):
        return isinstance(value, dict)
    return True  # Any, or a class this module does not know: not checked


def _number(text: str, integer: bool) -> bool:
    pattern = r"[+-]?\d+" if integer else r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
    return re.fullmatch(pattern, text.strip()) is not None


def _readable(alternative: str) -> str:
    name = alternative.split("[", 1)[0].strip()
    if name == "Literal":
        return "one of " + alternative[len("Literal[") : -1]
    if name in STRING_LIKE:
        return "a string"
    if name in ("list", "List", "tuple", "Tuple"):
        return "a list"
    if name.endswith(MAPPING_SUFFIXES):
        return "a mapping"
    return {"bool": "true/false", "int": "a whole number", "float": "a number"}.get(name, name)

"""A small valid instance of a JSON Schema, for the simulator's structured outputs.

Real engines constrain decoding to the schema (vLLM's guided decoding); the
simulator writes the instance directly. It covers what function parameters
and response formats use in practice (objects, arrays, enums, consts,
numbers with bounds, string lengths and formats, $ref, anyOf/oneOf/allOf) and
is deterministic: strings are made from the given words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}
_MAX_DEPTH = 12


class SchemaInstance:
    """Builds instances of one schema (with its $defs) from a word list."""

    def __init__(self, root: Mapping[str, Any], words: Sequence[str]) -> None:
        self._root = root
        self._words = tuple(words) or ("value",)
        self._next = 0

    def build(self) -> Any:
        """An instance of the root schema."""
        return self._instance(self._root, 0)

    def _word(self) -> str:
        word = self._words[self._next % len(self._words)]
        self._next += 1
        return word

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            return {}
        node: Any = self._root
        for key in ref.lstrip("#").strip("/").split("/"):
            if not key:
                continue
            key = key.replace("~1", "/").replace("~0", "~")
            node = node.get(key, {}) if isinstance(node, Mapping) else {}
        return node if isinstance(node, Mapping) else {}

    def _instance(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
            return None if depth > _MAX_DEPTH else {}
        if "$ref" in schema:
            return self._instance(self._resolve(str(schema["$ref"])), depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if options:
                # Prefer a non-null option: a filled-in value shows more.
                chosen = next(
                    (
                        o
                        for o in options
                        if not (isinstance(o, Mapping) and o.get("type") == "null")
                    ),
                    options[0],
                )
                return self._instance(chosen, depth + 1)
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                part = self._resolve(part["$ref"]) if "$ref" in part else part
                for key, value in part.items():
                    if key in ("properties",) and key in merged:
                        merged[key] = {**merged[key], **value}
                    elif key == "required" and key in merged:
                        merged[key] = [*merged[key], *value]
                    else:
                        merged[key] = value
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self._instance({**merged, **rest}, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return int(self._number(schema, integer=True))
        if kind == "number":
            return self._number(schema, integer=False)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema)

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = [k for k in schema.get("required") or () if isinstance(k, str)]
        names = required + [k for k in properties if k not in required]
        limit = schema.get("maxProperties")
        if isinstance(limit, int):
            names = names[: max(limit, len(required))]
        return {name: self._instance(properties.get(name, {}), depth + 1) for name in names}

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        count = max(low, len(prefix), 1)
        if isinstance(high, int):
            count = min(count, high)
        out = [self._instance(prefix[i], depth + 1) for i in range(min(count, len(prefix)))]
        while len(out) < count:
            out.append(self._instance(items if isinstance(items, Mapping) else {}, depth + 1))
        if schema.get("uniqueItems") and len(out) > 1 and all(isinstance(v, str) for v in out):
            out = [f"{v}{i}" if i else v for i, v in enumerate(out)]
        return out

    @staticmethod
    def _number(schema: Mapping[str, Any], integer: bool) -> float:
        low = schema.get("minimum")
        high = schema.get("maximum")
        ex_low = schema.get("exclusiveMinimum")
        ex_high = schema.get("exclusiveMaximum")
        step = schema.get("multipleOf")
        value: float = 1
        if isinstance(low, (int, float)):
            value = max(value, low)
        if isinstance(ex_low, (int, float)) and value <= ex_low:
            value = math.floor(ex_low) + 1 if integer else ex_low + 0.5
        if isinstance(high, (int, float)):
            value = min(value, high)
        if isinstance(ex_high, (int, float)) and value >= ex_high:
            value = math.ceil(ex_high) - 1 if integer else ex_high - 0.5
        if isinstance(step, (int, float)) and step > 0:
            value = math.ceil(value / step) * step
        return math.ceil(value) if integer else float(value)

    def _string(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt]
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        text = self._word()
        while len(text) < low:
            text += " " + self._word()
        if isinstance(high, int):
            text = text[:high]
        return text

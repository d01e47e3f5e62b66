"""``google.protobuf.Struct`` as plain JSON values, as the gateway (public API) and
the sidecar (backend contract) both read them: tool parameters, JSON Schemas and
engine-specific fields travel as Structs."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format


def struct_to_json(struct: Any) -> dict[str, Any]:
    """A Struct as JSON values, integral numbers back to int: a Struct keeps every
    number as a double, but JSON Schemas (``"minItems": 1``) and vLLM's integer
    fields want ``1``, not ``1.0``."""
    return _ints(json_format.MessageToDict(struct))  # type: ignore[no-any-return]


def _ints(value: Any) -> Any:
    # Only doubles that are exactly integers (and within 2**53, where every
    # integer is exact) become int; everything else is left as it is.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value

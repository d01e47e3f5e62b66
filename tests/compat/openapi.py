"""Validation against the official OpenAI OpenAPI specification.

The spec lives beside the repository (``../shared/schemas/openai-openapi``,
see its SOURCE.md). It is OpenAPI 3.1, whose schemas are JSON Schema 2020-12
except that some still use OpenAPI 3.0's ``nullable: true``; those are
rewritten into a ``null`` alternative before validating, or a correct
``null`` would be reported as an error.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from referencing.jsonschema import DRAFT202012

SPEC_PATH = (
    Path(__file__).resolve().parents[2].parent / "shared/schemas/openai-openapi/openapi.json"
)
_URI = "urn:openai:openapi"


def _denullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_denullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _denullable(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str) and "$ref" not in node and "allOf" not in node:
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _registry() -> referencing.Registry[Any]:
    spec = _denullable(json.loads(SPEC_PATH.read_text()))
    return referencing.Registry().with_resource(_URI, DRAFT202012.create_resource(spec))


@cache
def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``#/components/schemas/<schema_name>``."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"{_URI}#/components/schemas/{schema_name}"}, registry=_registry()
    )


def assert_valid(schema_name: str, instance: Any) -> None:
    """Fail with every violation (path and message) when ``instance`` does not conform."""
    errors = sorted(validator(schema_name).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        raise AssertionError(
            f"{schema_name} violated:\n" + "\n".join(lines) + f"\n{json.dumps(instance)[:2000]}"
        )


def assert_valid_against(label: str, schema: dict[str, Any], instance: Any) -> None:
    """Like assert_valid, for an adjusted copy of a component (its refs still resolve)."""
    checked = jsonschema.Draft202012Validator(schema, registry=_registry())
    errors = sorted(checked.iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        raise AssertionError(
            f"{label} violated:\n" + "\n".join(lines) + f"\n{json.dumps(instance)[:2000]}"
        )


def completion_chunk_schema() -> dict[str, Any]:
    """CreateCompletionResponse as a stream chunk. The spec gives streamed and whole
    completions one shape, but OpenAI (and vLLM) send ``finish_reason: null`` until a
    choice ends and ``usage: null`` before the last chunk, which its enum and $ref omit."""
    spec = _denullable(json.loads(SPEC_PATH.read_text()))
    schema: dict[str, Any] = spec["components"]["schemas"]["CreateCompletionResponse"]
    reason = schema["properties"]["choices"]["items"]["properties"]["finish_reason"]
    reason["type"] = ["string", "null"]
    reason["enum"] = [*reason["enum"], None]
    schema["properties"]["usage"] = {
        "anyOf": [{"$ref": f"{_URI}#/components/schemas/CompletionUsage"}, {"type": "null"}]
    }
    return _rebased(schema)


def _rebased(node: Any) -> Any:
    """Local ``#/...`` refs of a component copied out of the spec, pointed back into it."""
    if isinstance(node, list):
        return [_rebased(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rebased(v) for k, v in node.items()}
    if isinstance(out.get("$ref"), str) and out["$ref"].startswith("#/"):
        out["$ref"] = _URI + out["$ref"]
    return out

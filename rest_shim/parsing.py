"""What the shim's body parsers (chat, completions, embeddings) share: the JSON
object itself, pydantic's type errors as OpenAI's 400s, and the translation of
integers and of ``seed`` and ``stop`` to the gateway's proto fields.

Only shape and types are checked by the parsers; every rule about values is
the gateway's, so gRPC and REST clients get the same answers. This module
runs in the body-decoding worker processes too (``rest_shim.decoding``): it
imports no web framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from rest_shim.errors import ApiError, invalid_request

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """A body model that takes JSON types as they are (no coercion) and no unknown keys."""

    model_config = ConfigDict(strict=True, extra="forbid")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body; 400 as OpenAI words it when it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. The API expects a JSON payload."
        ) from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.")
    return data


def top_level_param(loc: tuple[int | str, ...]) -> str | None:
    """The top-level field a validation error is about (flat bodies)."""
    return str(loc[0]) if loc else None


def type_error(
    error: ValidationError,
    param_of: Callable[[tuple[int | str, ...]], str | None] = top_level_param,
) -> ApiError:
    """pydantic's first complaint as OpenAI's 400: a missing parameter or a wrong type."""
    first = error.errors()[0]
    param = param_of(first["loc"])
    if first["type"] == "missing":
        return invalid_request(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return invalid_request(
        f"Invalid type for '{param}': {first['msg'].lower()}.", param=param, code="invalid_type"
    )


def validate(model: type[M], data: dict[str, Any]) -> M:
    """``model`` from a flat body's decoded JSON; a type error is OpenAI's 400."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise type_error(error) from None


def clamp_int32(value: int) -> int:
    """``value`` for an int32 proto field; out-of-range values keep their sign
    (-1 or the maximum) so the gateway reports them properly."""
    return max(-1, min(value, INT32[1]))


class _SeedAndStop(Protocol):
    @property
    def seed(self) -> int | None: ...
    @property
    def stop(self) -> str | list[str] | None: ...


def add_seed_and_stop(params: Any, body: _SeedAndStop) -> None:
    """``seed`` (it must fit in int64) and ``stop`` (one string or a list) onto
    ``params``, a chat or completion request's parameters."""
    if body.seed is not None:
        if not INT64[0] <= body.seed <= INT64[1]:
            raise invalid_request("'seed' must fit in a signed 64-bit integer.", param="seed")
        params.seed = body.seed
    if isinstance(body.stop, str):
        params.stop.append(body.stop)
    elif body.stop:
        params.stop.extend(body.stop)

"""Validation of chat requests: every violation is collected, not just the first."""

from __future__ import annotations

import math

from gateway.domain.chat import ChatRequest, Generation
from gateway.errors import InvalidRequest, Violation
from gateway.routing.limits import OutputLimits

MAX_STOP_SEQUENCES = 4


def check_request_shape(request: ChatRequest) -> None:
    """Validate what does not depend on the model; raise InvalidRequest listing every problem."""
    problems: list[Violation] = []
    if not request.model:
        problems.append(Violation("model", "you must provide a model parameter"))
    if not request.messages:
        problems.append(Violation("messages", "at least one message is required"))
    for i, message in enumerate(request.messages):
        if message.role is None:
            problems.append(
                Violation(
                    f"messages[{i}].role",
                    "role must be one of 'system', 'user', 'assistant', 'tool', 'developer'",
                )
            )
    if request.n is not None and request.n != 1:
        problems.append(Violation("n", f"only n=1 is supported, got {request.n}"))
    _check_range(problems, "temperature", request.temperature, 0.0, 2.0)
    _check_range(problems, "top_p", request.top_p, 0.0, 1.0)
    if request.top_p is not None and request.top_p == 0.0:
        problems.append(Violation("top_p", "top_p must be greater than 0"))
    _check_range(problems, "presence_penalty", request.presence_penalty, -2.0, 2.0)
    _check_range(problems, "frequency_penalty", request.frequency_penalty, -2.0, 2.0)
    if len(request.stop) > MAX_STOP_SEQUENCES:
        problems.append(
            Violation("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        )
    for name, value in (
        ("max_tokens", request.max_tokens),
        ("max_completion_tokens", request.max_completion_tokens),
    ):
        if value is not None and value < 1:
            problems.append(Violation(name, f"{name} must be at least 1, got {value}"))
    if problems:
        raise InvalidRequest(problems)


def resolve_max_tokens(request: ChatRequest, limits: OutputLimits) -> int:
    """The effective completion limit; max_completion_tokens wins over max_tokens."""
    field, asked = "max_completion_tokens", request.max_completion_tokens
    if asked is None:
        field, asked = "max_tokens", request.max_tokens
    if asked is None:
        return limits.default_max_tokens
    if asked > limits.max_output_tokens:
        raise InvalidRequest(
            [
                Violation(
                    field,
                    f"{field} is too large: {asked}. This model supports at most "
                    f"{limits.max_output_tokens} completion tokens.",
                )
            ]
        )
    return asked


def bind(request: ChatRequest, request_id: str, engine_model: str, max_tokens: int) -> Generation:
    """Turn a validated request into the generation a backend is asked for."""
    return Generation(
        request_id=request_id,
        model=engine_model,
        messages=request.messages,
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=tuple(request.stop),
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
    )


def _check_range(
    problems: list[Violation], name: str, value: float | None, low: float, high: float
) -> None:
    if value is None:
        return
    if math.isnan(value) or not low <= value <= high:
        problems.append(
            Violation(name, f"{name} must be between {low:g} and {high:g}, got {value}")
        )

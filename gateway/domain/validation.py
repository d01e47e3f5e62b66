"""Validation of chat, completion and embedding requests: every violation is
collected, not just the first."""

from __future__ import annotations

import json
import math
import re

from gateway.domain.chat import (
    ChatRequest,
    Features,
    Generation,
    ResponseFormatType,
    Role,
    ToolChoiceMode,
)
from gateway.domain.embedding import EmbeddingJob, EmbeddingRequest
from gateway.errors import InvalidRequest, Violation
from gateway.routing.limits import OutputLimits
from gateway.routing.registry import ModelKind, ModelRoute

MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 128
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128
# Engine extras travel to the engine as JSON; a cap keeps them from being a
# second, unmetered prompt.
MAX_ENGINE_EXTRAS_BYTES = 16 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Fields of the typed API: setting them through engine extras would bypass
# their validation (and the limits that depend on them).
RESERVED_EXTRAS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "n", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
        "tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs",
        "top_logprobs", "logit_bias", "reasoning_effort", "user", "request_id",
    }
)  # fmt: skip
# OpenAI's limits for one embeddings call.
MAX_EMBEDDING_INPUTS = 2048
MAX_DIMENSIONS = 65536


def check_request_shape(request: ChatRequest) -> None:
    """Validate what does not depend on the model; raise InvalidRequest listing every problem."""
    problems: list[Violation] = []
    if not request.model:
        problems.append(Violation("model", "you must provide a model parameter"))
    if request.prompt is not None:
        if not request.prompt:
            problems.append(Violation("prompt", "the prompt must not be empty"))
        if request.messages:
            problems.append(Violation("messages", "a request has either messages or a prompt"))
    elif not request.messages:
        problems.append(Violation("messages", "at least one message is required"))
    for i, message in enumerate(request.messages):
        if message.role is None:
            problems.append(
                Violation(
                    f"messages[{i}].role",
                    "role must be one of 'system', 'user', 'assistant', 'tool', 'developer'",
                )
            )
    if request.n is not None and not 1 <= request.n <= MAX_CHOICES:
        problems.append(Violation("n", f"n must be between 1 and {MAX_CHOICES}, got {request.n}"))
    for i, message in enumerate(request.messages):
        if message.role is Role.TOOL and not message.tool_call_id:
            problems.append(
                Violation(
                    f"messages[{i}].tool_call_id",
                    "messages with role 'tool' must answer a tool call: tool_call_id is missing",
                )
            )
    _check_features(problems, request.features)
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


def resolve_max_tokens(request: ChatRequest, limits: OutputLimits) -> int | None:
    """The effective completion limit; max_completion_tokens wins over max_tokens."""
    field, asked = "max_completion_tokens", request.max_completion_tokens
    if asked is None:
        field, asked = "max_tokens", request.max_tokens
    if asked is None:
        # None: as vLLM, up to the model's limit (the context minus the prompt),
        # unless the operator set a default for the model.
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


def bind(
    request: ChatRequest, request_id: str, engine_model: str, max_tokens: int | None
) -> Generation:
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
        features=request.features,
        prompt=request.prompt,
    )


def check_embedding_shape(request: EmbeddingRequest) -> None:
    """Validate an embedding request; raise InvalidRequest listing every problem."""
    problems: list[Violation] = []
    if not request.model:
        problems.append(Violation("model", "you must provide a model parameter"))
    if not request.inputs:
        problems.append(Violation("input", "at least one input is required"))
    if len(request.inputs) > MAX_EMBEDDING_INPUTS:
        problems.append(
            Violation("input", f"at most {MAX_EMBEDDING_INPUTS} inputs are allowed per request")
        )
    for i, item in enumerate(request.inputs):
        if len(item) == 0:
            problems.append(Violation(f"input[{i}]", "an input must not be empty"))
        elif not isinstance(item, str) and min(item) < 0:
            problems.append(Violation(f"input[{i}]", "token ids must not be negative"))
    if request.dimensions is not None and not 1 <= request.dimensions <= MAX_DIMENSIONS:
        problems.append(
            Violation(
                "dimensions",
                f"dimensions must be between 1 and {MAX_DIMENSIONS}, got {request.dimensions}",
            )
        )
    if problems:
        raise InvalidRequest(problems)


def check_kind(route: ModelRoute, wanted: ModelKind) -> None:
    """Refuse a model of the wrong kind: chat and completions need a generating model,
    embeddings an embedding model."""
    if route.kind is wanted:
        return
    if wanted is ModelKind.EMBEDDING:
        message = (
            f"The model '{route.name}' generates text and does not serve embeddings; "
            "use an embedding model."
        )
    else:
        message = f"The model '{route.name}' is an embedding model; it serves only /v1/embeddings."
    raise InvalidRequest([Violation("model", message)], reason="model_not_supported")


def bind_embedding(request: EmbeddingRequest, request_id: str, engine_model: str) -> EmbeddingJob:
    """Turn a validated embedding request into the job a backend is asked for."""
    return EmbeddingJob(
        request_id=request_id,
        model=engine_model,
        inputs=tuple(request.inputs),
        dimensions=request.dimensions,
    )


def _check_features(problems: list[Violation], features: Features) -> None:
    """Tools, tool choice, response format, log probabilities, bias and extras."""
    if len(features.tools) > MAX_TOOLS:
        problems.append(Violation("tools", f"at most {MAX_TOOLS} tools are allowed"))
    names = set()
    for i, tool in enumerate(features.tools):
        if not _NAME.match(tool.name):
            problems.append(
                Violation(
                    f"tools[{i}].function.name",
                    "a function name must be 1 to 64 of a-z, A-Z, 0-9, '_' and '-', "
                    f"got {tool.name!r}",
                )
            )
        names.add(tool.name)
    choice = features.tool_choice
    if choice is not None and choice.mode is not ToolChoiceMode.NONE and not features.tools:
        problems.append(
            Violation("tool_choice", "tool_choice is only allowed when tools are specified")
        )
    elif choice is not None and choice.function is not None and choice.function not in names:
        problems.append(
            Violation(
                "tool_choice",
                f"tool_choice names the function {choice.function!r}, which is not in tools",
            )
        )
    fmt = features.response_format
    if fmt is not None and fmt.type is ResponseFormatType.JSON_SCHEMA:
        if not _NAME.match(fmt.name):
            problems.append(
                Violation(
                    "response_format.json_schema.name",
                    "the schema name must be 1 to 64 of a-z, A-Z, 0-9, '_' and '-'",
                )
            )
        if fmt.schema is None:
            problems.append(
                Violation("response_format.json_schema.schema", "a JSON schema is required")
            )
    if features.top_logprobs is not None:
        if not 0 <= features.top_logprobs <= MAX_TOP_LOGPROBS:
            problems.append(
                Violation(
                    "top_logprobs",
                    f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, "
                    f"got {features.top_logprobs}",
                )
            )
        elif not features.logprobs and features.top_logprobs > 0:
            problems.append(Violation("top_logprobs", "top_logprobs requires logprobs to be true"))
    for token, bias in features.logit_bias.items():
        if math.isnan(bias) or not -100 <= bias <= 100:
            problems.append(
                Violation("logit_bias", f"bias of token {token} must be in [-100, 100]: {bias}")
            )
            break
    extras = features.engine_extras
    if extras:
        clash = sorted(RESERVED_EXTRAS.intersection(extras))
        if clash:
            problems.append(
                Violation(
                    clash[0],
                    f"'{clash[0]}' cannot be passed as an engine extra: it is a typed field",
                )
            )
        size = len(json.dumps(extras, separators=(",", ":")))
        if size > MAX_ENGINE_EXTRAS_BYTES:
            problems.append(
                Violation(
                    "engine_extras",
                    f"engine-specific fields take {size} bytes as JSON; "
                    f"the limit is {MAX_ENGINE_EXTRAS_BYTES}",
                )
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

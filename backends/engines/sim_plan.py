"""What the simulator answers when a request asks for more than plain text.

One plan per choice, a list of tokens, each a reasoning piece, a text piece
or a tool-call fragment; the engine emits them on its latency schedule.
Everything is a pure function of the request, so tests can predict it:

- reasoning (``reasoning_effort`` other than none): a few reasoning tokens first;
- tools: ``tool_choice`` naming a function calls it; ``required`` calls the
  first tool; ``auto`` (the default with tools) calls the first tool unless
  the conversation ends with a tool result, then it answers in text (so an
  agent loop ends); the arguments are a valid instance of the parameters;
- ``response_format``: json_schema answers a valid instance of the schema,
  json_object a small object;
- log probabilities: each token gets a deterministic logprob and alternatives.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.engine import EngineRequest, FinishReason, TokenLogprob
from backends.engines.sim_json import SchemaInstance

_REASONING_TOKENS = {"minimal": 2, "low": 4, "medium": 8, "high": 16, "xhigh": 32}
_FRAGMENT_CHARS = 8  # a tool call's arguments or a JSON answer, streamed this many chars a token


@dataclass(frozen=True, slots=True)
class PlannedToken:
    """One token of a choice's answer."""

    kind: str  # "reasoning", "text" or "tool"
    text: str
    tool_index: int = 0
    tool_id: str = ""  # set on a tool call's first fragment
    tool_name: str = ""


@dataclass(slots=True)
class ChoicePlan:
    """The tokens of one choice and the reason it ends when all are sent."""

    tokens: list[PlannedToken] = field(default_factory=list)
    finish: FinishReason = FinishReason.STOP


def needs_plan(request: EngineRequest) -> bool:
    """Whether the request asks for anything beyond one plain-text choice."""
    return bool(
        request.n > 1
        or request.logprobs
        or (request.tools and request.tool_choice != "none")
        or (request.response_format and request.response_format.get("type") != "text")
        or (request.reasoning_effort and request.reasoning_effort != "none")
    )


def _fragments(text: str) -> list[str]:
    return [text[i : i + _FRAGMENT_CHARS] for i in range(0, len(text), _FRAGMENT_CHARS)] or [""]


def _call_id(seed: int, choice: int, index: int) -> str:
    digest = hashlib.sha256(f"{seed}:{choice}:{index}".encode()).hexdigest()
    return "call_" + digest[:24]


def _tool_to_call(request: EngineRequest) -> Mapping[str, Any] | None:
    """The tool this turn calls, or None for a text answer."""
    tools, choice = request.tools, request.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        for tool in tools:
            if tool.get("function", {}).get("name") == name:
                return tool
        return None
    if choice == "required":
        return tools[0]
    # auto: call a tool unless the model was just given a tool's result.
    last = request.messages[-1] if request.messages else None
    if last is not None and last.role == "tool":
        return None
    return tools[0]


def continues_prompt(request: EngineRequest) -> bool:
    """A raw prompt is continued: the first word generated is a new word (a leading
    space), as a model's continuation of unfinished text would be."""
    return request.prompt is not None and not request.prompt[-1:].isspace()


def plan_choice(
    request: EngineRequest,
    words: Sequence[str],
    seed: int,
    choice: int,
    natural_tokens: int,
    stops: Sequence[str],
) -> ChoicePlan:
    """The answer of choice ``choice``: reasoning, then a tool call, JSON or text."""
    plan = ChoicePlan()
    offset = seed + choice * 13
    effort = request.reasoning_effort
    for i in range(_REASONING_TOKENS.get(effort or "", 0)):
        word = words[(offset + i * 3) % len(words)]
        plan.tokens.append(PlannedToken("reasoning", ("Considering " if i == 0 else " ") + word))
    tool = _tool_to_call(request)
    if tool is not None:
        function = tool.get("function", {})
        name = str(function.get("name", ""))
        arguments = SchemaInstance(function.get("parameters") or {}, _rotate(words, offset)).build()
        text = orjson.dumps(arguments).decode()
        for j, piece in enumerate(_fragments(text)):
            plan.tokens.append(
                PlannedToken(
                    "tool",
                    piece,
                    tool_index=0,
                    tool_id=_call_id(seed, choice, 0) if j == 0 else "",
                    tool_name=name if j == 0 else "",
                )
            )
        # OpenAI ends a turn forced to one named function with "stop".
        plan.finish = (
            FinishReason.STOP
            if isinstance(request.tool_choice, Mapping)
            else FinishReason.TOOL_CALLS
        )
        return plan
    fmt = request.response_format or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        text = orjson.dumps(SchemaInstance(schema, _rotate(words, offset)).build()).decode()
        plan.tokens.extend(PlannedToken("text", piece) for piece in _fragments(text))
        return plan
    if fmt.get("type") == "json_object":
        answer = " ".join(words[(offset + i * 7) % len(words)] for i in range(3))
        text = orjson.dumps({"answer": answer}).decode()
        plan.tokens.extend(PlannedToken("text", piece) for piece in _fragments(text))
        return plan
    tail = ""
    continues = continues_prompt(request)
    for i in range(natural_tokens):
        word = words[(offset + i * 7) % len(words)]
        text = word if i == 0 and not continues else " " + word
        if stops:
            tail = (tail + text)[-64:]
            hit = _stop_in(tail, text, stops)
            if hit is not None:
                if hit:
                    plan.tokens.append(PlannedToken("text", hit))
                return plan
        plan.tokens.append(PlannedToken("text", text))
    return plan


def _rotate(words: Sequence[str], offset: int) -> list[str]:
    start = offset % len(words)
    return [*words[start:], *words[:start]]


def _stop_in(tail: str, text: str, stops: Sequence[str]) -> str | None:
    for stop in stops:
        at = tail.find(stop)
        if at >= 0:
            return text[: max(len(text) - (len(tail) - at), 0)]
    return None


def logprob_of(text: str, position: int, top: int, words: Sequence[str]) -> TokenLogprob:
    """A deterministic log probability for a token, with ``top`` alternatives
    (the token itself first, then less likely words)."""
    base = -(zlib.crc32(f"{position}:{text}".encode()) % 2000) / 1000.0
    alternatives: list[tuple[str, float, bytes]] = []
    if top:
        alternatives.append((text, base, text.encode()))
        for k in range(1, top):
            alt = " " + words[(position + k) % len(words)] + ("" if k < len(words) else str(k))
            value = round(base - 0.5 * k, 4)
            alternatives.append((alt, value, alt.encode()))
    return TokenLogprob(text, base, text.encode(), tuple(alternatives))

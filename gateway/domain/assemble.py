"""Whole answers from stream events: what a non-streamed completion returns.

Tool calls arrive as fragments (the first with id and name, then argument
text), several choices interleave; this folds them back into one message per
choice, as OpenAI's non-streamed response has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.domain.chat import ChoiceDelta, Finished, FinishReason, TokenLogprob, ToolCall


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AssembledChoice:
    """One choice of a whole completion."""

    index: int
    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    logprobs: list[TokenLogprob]
    finish_reason: FinishReason


@dataclass(slots=True)
class _Parts:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)


class ChoiceAssembler:
    """Collects the events of one stream into whole choices."""

    def __init__(self) -> None:
        self._choices: dict[int, _Parts] = {0: _Parts()}

    def text(self, text: str) -> None:
        """Plain text of the first choice."""
        self._choices[0].content.append(text)

    def add(self, delta: ChoiceDelta) -> None:
        """A rich event of any choice."""
        parts = self._choices.get(delta.index)
        if parts is None:
            parts = self._choices[delta.index] = _Parts()
        if delta.content:
            parts.content.append(delta.content)
        if delta.reasoning:
            parts.reasoning.append(delta.reasoning)
        for call in delta.tool_calls:
            into = parts.tool_calls.get(call.index)
            if into is None:
                into = parts.tool_calls[call.index] = _ToolCallParts()
            into.id = into.id or call.id
            into.name = into.name or call.name
            if call.arguments:
                into.arguments.append(call.arguments)
        parts.logprobs.extend(delta.logprobs)

    def finish(self, finished: Finished) -> list[AssembledChoice]:
        """The choices in index order, each with its finish reason."""
        reasons = list(finished.choice_reasons) or [finished.reason]
        count = max(len(reasons), max(self._choices) + 1)
        out = []
        for index in range(count):
            parts = self._choices.get(index) or _Parts()
            out.append(
                AssembledChoice(
                    index=index,
                    content="".join(parts.content),
                    reasoning="".join(parts.reasoning),
                    tool_calls=[
                        ToolCall(c.id, c.name, "".join(c.arguments))
                        for _, c in sorted(parts.tool_calls.items())
                    ],
                    logprobs=parts.logprobs,
                    finish_reason=reasons[index] if index < len(reasons) else finished.reason,
                )
            )
        return out

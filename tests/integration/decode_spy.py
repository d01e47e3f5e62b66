"""A body decoder that notes the size of each body it decodes in the process that
imported it: the shim's decode function swapped for this one shows which bodies
were decoded on the shim's event loop (a worker process records into its own copy)."""

from __future__ import annotations

from llmgw.v1 import chat_pb2 as pb
from rest_shim.decoding import decode_chat
from rest_shim.openai_request import ChatCompletionBody
from rest_shim.request_limits import RequestLimits

decoded_here: list[int] = []


def spy_decode_chat(
    raw: bytes, limits: RequestLimits
) -> tuple[ChatCompletionBody, pb.ChatCompletionParams]:
    """``decode_chat``, recording ``len(raw)`` in this process's ``decoded_here``."""
    decoded_here.append(len(raw))
    return decode_chat(raw, limits)

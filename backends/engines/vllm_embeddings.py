"""Embeddings through vLLM's OpenAI-compatible ``POST /v1/embeddings``.

Pure functions, no I/O: the request bodies for a batch of inputs and the
parser of vLLM's answer. OpenAI's ``input`` is either texts or token-id
lists, never both, so a batch that mixes them becomes two bodies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from backends.engine import EmbedRequest, EngineFailed


def embedding_bodies(request: EmbedRequest, model: str) -> list[tuple[list[int], bytes]]:
    """(input positions, JSON body) per call: one for texts, one for token ids."""
    texts = [i for i, item in enumerate(request.inputs) if isinstance(item, str)]
    tokens = [i for i, item in enumerate(request.inputs) if not isinstance(item, str)]
    bodies = []
    for positions in (texts, tokens):
        if not positions:
            continue
        body: dict[str, Any] = {
            "model": model,
            "input": [
                item if isinstance(item, str) else list(item)
                for item in (request.inputs[i] for i in positions)
            ],
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        bodies.append((positions, orjson.dumps(body)))
    return bodies


def parse_embeddings(body: bytes, count: int) -> tuple[list[list[float]], int]:
    """The vectors in input order and the prompt tokens of one answer of ``count`` inputs."""
    try:
        parsed = orjson.loads(body)
        data: Sequence[dict[str, Any]] = sorted(parsed["data"], key=lambda d: d["index"])
        vectors = [list(map(float, d["embedding"])) for d in data]
        tokens = int(parsed.get("usage", {}).get("prompt_tokens", 0))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise EngineFailed(f"vLLM's embeddings answer is malformed: {error!r}") from None
    if len(vectors) != count:
        raise EngineFailed(f"vLLM returned {len(vectors)} vectors for {count} inputs")
    return vectors, tokens

"""A model of an engine's prefix (KV) cache, for the simulator.

Engines such as vLLM keep the KV cache of prompt blocks after a request
ends and reuse it when a later prompt starts with the same tokens: only
the tokens after the longest cached prefix need prefill. Blocks are
identified by a hash chained over every block before them (so a block is
reused only after the same whole prefix), only full blocks are cached, and
the least recently used blocks are evicted first. Hits and queries are
counted in tokens, as vLLM's ``prefix_cache_hits`` / ``_queries`` are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

# The simulator's tokenizer is ~4 characters a token (see estimate_prompt_tokens).
CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class PrefixCacheStats:
    """Counters since start, in tokens (blocks for the capacity)."""

    queries: int = 0
    hits: int = 0
    blocks: int = 0
    capacity_blocks: int = 0


def prompt_text(messages: Sequence[tuple[str, str]]) -> str:
    """The prompt as one string, framed per message the way a chat template is."""
    return "".join(f"<|{role}|>{content}" for role, content in messages)


class PrefixCache:
    """An LRU of chained block hashes with a fixed capacity in blocks."""

    def __init__(self, capacity_blocks: int, block_tokens: int = 16) -> None:
        self._capacity = capacity_blocks
        self._block_chars = block_tokens * CHARS_PER_TOKEN
        self._block_tokens = block_tokens
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.stats = PrefixCacheStats(capacity_blocks=capacity_blocks)

    def lookup_and_store(self, text: str, prompt_tokens: int) -> int:
        """How many of the prompt's ``prompt_tokens`` tokens were cached; the
        prompt's blocks are then cached (most recently used)."""
        self.stats.queries += prompt_tokens
        hit_blocks = self._insert(text, count_hits=True)
        cached = min(hit_blocks * self._block_tokens, prompt_tokens)
        self.stats.hits += cached
        return cached

    def store(self, text: str) -> None:
        """Cache the blocks of ``text`` (a prompt followed by what was generated: an
        engine keeps the KV of generated tokens too, so a conversation's next turn,
        which repeats the answer, finds it)."""
        self._insert(text, count_hits=False)

    def _insert(self, text: str, count_hits: bool) -> int:
        if self._capacity <= 0:
            return 0
        size = self._block_chars
        blocks = self._blocks
        chain = 0
        hit_blocks = 0
        matching = count_hits
        for start in range(0, len(text) - size + 1, size):
            chain = hash((chain, text[start : start + size]))
            if chain in blocks:
                blocks.move_to_end(chain)
                if matching:
                    hit_blocks += 1
                continue
            matching = False  # after the first miss nothing later can be reused
            blocks[chain] = None
            if len(blocks) > self._capacity:
                blocks.popitem(last=False)
        self.stats.blocks = len(blocks)
        return hit_blocks

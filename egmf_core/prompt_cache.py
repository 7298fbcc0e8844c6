"""KV caches of prompt beginnings, kept for the prompts that start with the same tokens.

A causal LM's keys and values for a run of tokens depend only on the tokens before it (and the weights and adapter
it runs through), so the KV cache of a prompt's first n ids serves every later prompt that starts with the same n
ids. Two kinds of beginnings are worth keeping (`PromptIds.reusable`): the template's system prompt, the same for
every utterance, and, in the "context_first" layout, the question and the conversation so far, the same for every
utterance of a stream until its next turn.

Entries are keyed by (adapter, token ids) and evicted least recently used first. An entry costs
2 x layers x kv_heads x head_dim x 4 bytes per token: 46 KB per token for SmolLM2-135M in float32, ~5 MB for a
three-turn context. Everything is dropped when the weights change (a training step, a LoRA load).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Sequence

from transformers import DynamicCache


class PromptCache:
    def __init__(self, max_entries: int = 32):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], DynamicCache] = OrderedDict()
        self._weights: tuple | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def check_weights(self, key: tuple) -> None:
        """Drop every entry if the weights changed since the last call (`key`: the parameters' version counters)."""
        if key != self._weights:
            self._entries.clear()
            self._weights = key

    def clear(self) -> None:
        self._entries.clear()

    def longest(self, adapter: str, ids: Sequence[int]) -> tuple[int, DynamicCache | None]:
        """The longest kept beginning of `ids` under `adapter`: its length and a copy of its cache, which the
        caller's pass may extend (the kept one never changes); (0, None) when none is kept."""
        ids = tuple(ids)
        best: tuple[str, tuple[int, ...]] | None = None
        for key in self._entries:
            kept_adapter, kept = key
            if (kept_adapter == adapter and len(kept) <= len(ids) and (best is None or len(kept) > len(best[1]))
                    and ids[: len(kept)] == kept):
                best = key
        if best is None:
            return 0, None
        self._entries.move_to_end(best)
        return len(best[1]), copy.deepcopy(self._entries[best])

    def put(self, adapter: str, ids: Sequence[int], cache: DynamicCache) -> None:
        """Keep `cache` (exactly `len(ids)` tokens; the cache object itself, which the caller must not change after)
        as the beginning `ids` under `adapter`."""
        if cache.get_seq_length() != len(ids):
            raise ValueError(f"a cache of {cache.get_seq_length()} tokens cannot be kept for {len(ids)} ids")
        key = (adapter, tuple(ids))
        self._entries[key] = cache
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

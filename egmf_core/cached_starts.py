"""Which kept KV caches of prompt beginnings (`PromptCache`) an inference pass starts from.

One row (a live utterance): the longest kept beginning of its reusable start (`PromptIds.reusable`); the rest of it
goes into the prompt pass with the utterance, which then keeps its shared and its reusable start (`PromptIds.shared`:
the template's part, for the stream's next context; no pass of its own on the hot path). Several rows (the service's
batch of streams): each row's longest kept beginning, stacked into one left-padded cache, when every row has one;
else their common reusable start, computed by a pass of its own when it is not kept yet (once per template and label
set in an evaluation).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.nn import functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .prompt import PromptIds
from .prompt_cache import PromptCache

# Extends a cache (the KV of ids[:n], or None when n == 0) by one LLM pass over ids[n:]: (cache, ids, n, adapter).
Extend = Callable[[DynamicCache | None, Sequence[int], int, str], DynamicCache]


def cached_start(
    kv: PromptCache, adapter: str, prompts: Sequence[PromptIds], extend: Extend
) -> tuple[DynamicCache | None, list[int], list[tuple[str, list[int]]]]:
    """A KV cache of the beginnings of the rows' reusable starts (all rows use `adapter`), how many ids of each row
    it holds, and the beginnings the prompt pass should keep for later prompts: (adapter, ids) each."""
    if len(prompts) == 1:
        p = prompts[0]
        n, cache = kv.longest(adapter, p.before[: p.reusable])
        return cache, [n], [(adapter, p.before[:k]) for k in sorted({p.shared, p.reusable}) if k > n]
    found = [kv.longest(adapter, p.before[: p.reusable]) for p in prompts]
    if all(cache is not None for _, cache in found) and stackable(found[0][1]):
        return stack_caches([cache for _, cache in found]), [n for n, _ in found], []
    start = common_prefix([p.before[: p.reusable] for p in prompts])
    n, cache = kv.longest(adapter, start)
    if n < len(start):
        cache = extend(cache, start, n, adapter)
        kv.put(adapter, start, cache)
        n, cache = kv.longest(adapter, start)
    if cache is None:
        return None, [0] * len(prompts), []
    cache.batch_repeat_interleave(len(prompts))
    return cache, [n] * len(prompts), []


def common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    return list(first[:n])


def stackable(cache: DynamicCache) -> bool:
    """Whether every layer is a plain (full attention) dynamic layer, whose keys and values `stack_caches` can pad."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def stack_caches(caches: Sequence[DynamicCache]) -> DynamicCache:
    """One batch cache from single-row caches of different lengths, each row left-padded with zeros to the longest
    (the attention mask hides the padding: `EGMFModel.prepare` with per-row cached counts)."""
    longest = max(c.get_seq_length() for c in caches)
    out = caches[0]
    for li, layer in enumerate(out.layers):
        for name in ("keys", "values"):
            rows = [getattr(c.layers[li], name) for c in caches]
            setattr(layer, name, torch.cat([F.pad(r, (0, 0, longest - r.shape[-2], 0)) for r in rows]))
    return out

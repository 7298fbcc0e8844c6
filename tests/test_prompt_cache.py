"""Prompt layouts and the KV cache of prompt beginnings, with the real embedded LLM (SmolLM2-135M + a non-trivial
LoRA) on real MELD dialogues: a cached beginning must give the same answers as encoding the whole prompt, and the
"context_first" layout must leave only the utterance itself to each live prompt pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egmf_core.config import ConfigError, EGMFConfig
from egmf_core.data import load_dataset
from egmf_core.research.examples import build_examples
from egmf_core.adapters import DEFAULT_ADAPTER
from egmf_core.model import EGMFModel
from egmf_core.predictor import EGMFPredictor
from egmf_core.prompt_cache import PromptCache

pytestmark = pytest.mark.slow


def _model(layout: str) -> EGMFModel:
    torch.manual_seed(0)
    model = EGMFModel.build(EGMFConfig.from_dict({"prompt": {"layout": layout}}))
    with torch.no_grad():  # a non-trivial adapter: cached and uncached passes must agree through it too
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def context_first() -> EGMFModel:
    return _model("context_first")


@pytest.fixture(scope="module")
def pseudo_first() -> EGMFModel:
    return _model("pseudo_first")


@pytest.fixture(scope="module")
def dialogue(context_first):
    """Consecutive utterances of one real MELD dialogue, each with its past-only context (the last three turns)."""
    records = list(load_dataset("meld", "train"))[:6]
    examples = [e.input for e in build_examples(records, context_first.prompts)]
    assert [len(x.context) for x in examples] == [0, 1, 2, 3, 3, 3]  # one dialogue, in order
    return examples


def _probs(pred) -> np.ndarray:
    return np.array(list(pred.emotion_probs.values()))


def test_layout_is_validated():
    with pytest.raises(ConfigError, match=r"prompt.layout must be one of \['pseudo_first', 'context_first'\], got 'x'"):
        EGMFConfig.from_dict({"prompt": {"layout": "x"}})


def test_context_first_puts_question_and_context_before_the_pseudo_tokens(context_first, dialogue):
    prompts = context_first.prompts
    x = dialogue[3]
    p = prompts.build(x.context, x.current)
    start = prompts.reusable_ids(x.context)
    assert p.before[: p.reusable] == start and len(start) == p.reusable == len(p.before)
    # the same start for any utterance after this context: what a stream's cache holds between its turns
    other = prompts.build(x.context, dialogue[0].current)
    assert other.before == p.before
    before, after = context_first.tokenizer.decode(p.before), context_first.tokenizer.decode(p.after)
    assert before.index("What is the emotion") < before.index("Conversation so far") < before.index("Nonverbal cues")
    assert before.rstrip().endswith("Nonverbal cues of the current utterance:")
    for turn in x.context:
        assert f"{turn.speaker}:" in before and turn.text.split()[0] in before and turn.text not in after
    assert x.current.text.split()[0] in after and "What is the emotion" not in after
    prep = context_first.prepare([x])
    k = context_first.cfg.fusion.pseudo_tokens
    assert torch.equal(prep.embeds[0, len(p.before): len(p.before) + k], prep.fusion.pseudo_tokens[0])


@pytest.mark.parametrize("layout", ["pseudo_first", "context_first"])
def test_cached_beginnings_give_the_answers_of_the_whole_prompt(layout, context_first, pseudo_first, dialogue):
    model = context_first if layout == "context_first" else pseudo_first
    x = dialogue[4]
    model._kv.clear()
    cold = model.score([x])[0]  # nothing kept: the whole prompt in one pass, which keeps its reusable start
    p = model.prompts.build(x.context, x.current)
    start = p.before[: p.reusable]
    assert model._kv.longest(DEFAULT_ADAPTER, start)[0] == len(start)
    cache, cached, keep = model._cached_start([x], [p])
    assert cached == [len(start)] and keep == [] and cache.get_seq_length() == len(start)
    # the template's shared part was kept too: a stream's next context starts from it, not from scratch
    assert model._kv.longest(DEFAULT_ADAPTER, p.before[: p.shared] + [0])[0] == p.shared > 0
    warm = model.score([x])[0]
    # several rows: each row's longest kept beginning (the shared template part, or this row's whole start), stacked
    rows = dialogue[2:5]
    ps = [model.prompts.build(r.context, r.current) for r in rows]
    cache, cached, keep = model._cached_start(rows, ps)
    assert cached == [ps[0].shared, ps[1].shared, len(start)] and cache.get_seq_length() == len(start)
    preds = model.score(rows)
    assert [q.prompt_tokens["cached"] for q in preds] == cached
    batch = preds[2]
    for other in (warm, batch):
        assert other.emotion == cold.emotion and other.sentiment_score == cold.sentiment_score
        assert np.allclose(_probs(other), _probs(cold), atol=1e-4)


def test_context_first_live_pass_covers_only_the_utterance(context_first, dialogue):
    model = context_first
    x = dialogue[5]
    model._kv.clear()
    assert model.prime(x.context) is True and model.prime(x.context) is False  # computed once, then kept
    p = model.prompts.build(x.context, x.current)
    cache, cached, keep = model._cached_start([x], [p])
    prep = model.prepare([x], prefix_cached=cached, prompts=[p])
    k = model.cfg.fusion.pseudo_tokens
    assert prep.embeds.shape[1] == len(p.before) - p.reusable + k + len(p.after)
    assert prep.embeds.shape[1] < 0.5 * (len(p.before) + k + len(p.after))  # the context is not encoded again
    primed = model.score([x])[0]
    model._kv.clear()
    assert np.allclose(_probs(primed), _probs(model.score([x])[0]), atol=1e-4)


def test_prompt_cache_keeps_the_longest_recent_beginnings(context_first, dialogue):
    model = context_first
    contexts = [x.context for x in dialogue[1:5]]
    starts = [model.prompts.reusable_ids(c) for c in contexts]
    model._kv = PromptCache(max_entries=2)
    for c in contexts:
        model.prime(c)
    assert len(model._kv) == 2
    assert model._kv.longest(DEFAULT_ADAPTER, starts[0])[0] < len(starts[0])  # evicted: the least recently used
    n, cache = model._kv.longest(DEFAULT_ADAPTER, starts[-1] + [11, 12])
    assert n == len(starts[-1]) == cache.get_seq_length()  # a kept beginning serves any longer prompt
    assert model._kv.longest("other-adapter", starts[-1]) == (0, None)
    with pytest.raises(ValueError, match="a cache of .* tokens cannot be kept for 3 ids"):
        model._kv.put(DEFAULT_ADAPTER, [1, 2, 3], cache)
    model._kv.check_weights(("changed",))
    assert len(model._kv) == 0
    model._kv = PromptCache()


def test_predictor_primes_the_new_context_after_each_turn(context_first, pseudo_first, dialogue):
    predictor = EGMFPredictor(context_first, "test")
    conversation = predictor.new_conversation()
    for x in dialogue[:2]:
        predictor.predict(conversation, x.current.text, x.current.speaker)
    # commit queued the new context's KV cache in the background: asked again, there is nothing left to compute
    assert predictor.prime_later(conversation).result() is False
    start = context_first.prompts.reusable_ids(conversation.window.snapshot())
    assert context_first._kv.longest(DEFAULT_ADAPTER, start)[0] == len(start)
    assert EGMFPredictor(pseudo_first, "test").prime_later(conversation) is None  # its start is a constant
    # the service's stateless variant: a context held by the caller, of which the last max_context_turns count
    turns = [x.current for x in dialogue]
    assert predictor.prime_context_later(turns).result() is True
    start = context_first.prompts.reusable_ids(turns[-context_first.cfg.prompt.max_context_turns:])
    assert context_first._kv.longest(DEFAULT_ADAPTER, start)[0] == len(start)

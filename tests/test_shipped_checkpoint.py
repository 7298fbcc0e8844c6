"""The shipped default checkpoint: loads, agrees across inference paths, beats the majority class on real data."""

from __future__ import annotations

import numpy as np
import pytest

from egmf_core.checkpoint import DEFAULT_CHECKPOINT, read_metadata
from egmf_core.data import load_dataset
from egmf_core.research.eval_examples import dataset_examples
from egmf_core.research.evaluate import predict_examples, report
from egmf_core.research.feature_lookup import whisper_audio_lookup
from egmf_core.research.examples import build_examples
from egmf_core.research.metrics import classification_report
from egmf_core.predictor import EGMFPredictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor() -> EGMFPredictor:
    return EGMFPredictor.load("default", device="cpu")


def test_default_checkpoint_is_small_and_self_describing():
    assert DEFAULT_CHECKPOINT.stat().st_size <= 20 * 1024 * 1024
    cfg, extra = read_metadata("default")
    assert cfg.backbone.name == "smollm2-135m-instruct"
    assert cfg.lora.r == 8 and cfg.lora.alpha == 16
    assert "dev" in extra  # the dev scores it was selected on


def test_constrained_scoring_equals_greedy_generation(predictor):
    """Fast path (one pass + label probabilities) and the paper's greedy generation give the same answers."""
    model = predictor.model
    meld = dataset_examples(model, "meld", "test", limit=24)
    clips = list(load_dataset("ravdess", "test"))[::30]  # 8 clips over all 4 test actors
    ravdess = build_examples(clips, model.prompts, audio=whisper_audio_lookup(), label_set="ravdess")
    for examples in (meld, ravdess):
        inputs = [e.input for e in examples]
        scored = model.score(inputs)
        generated = model.generate(inputs)
        for s, g in zip(scored, generated):
            assert g.emotion != "unknown", f"greedy generation produced no valid label: {g.raw_text!r}"
            assert s.emotion == g.emotion, (g.raw_text, s.emotion_probs)
            if examples is meld:
                assert s.sentiment_score == g.sentiment_score, g.raw_text


def test_beats_the_majority_class_on_meld_test_sample(predictor):
    model = predictor.model
    examples = dataset_examples(model, "meld", "test", limit=200)
    preds = predict_examples(model, examples)
    result = report(model, examples, preds)
    gold = [e.input.emotion for e in examples]
    majority = max(set(gold), key=gold.count)
    baseline = classification_report(gold, [majority] * len(gold), model.cfg.task.emotions)
    assert result["emotion"]["weighted_f1"] > baseline["weighted_f1"] + 5
    assert result["sentiment"]["weighted_f1"] > 40
    assert 0 < result["gate"]["entropy_mean"] <= result["gate"]["entropy_max"]
    assert -1 <= result["expert_cosine"] <= 1


def test_context_is_bounded_and_incremental(predictor):
    """The 50th utterance of a conversation builds a prompt no longer than the window allows."""
    model = predictor.model
    conv = predictor.new_conversation()
    lengths = []
    for i in range(50):
        turn = model.prompts.make_turn(f"S{i % 2}", f"this is sentence number {i} of a long call")
        p = model.prompts.build(conv.window.snapshot(), turn)
        lengths.append(len(p.before) + len(p.after))
        conv.window.append(turn)
    assert len(conv.window.turns) == model.cfg.prompt.max_context_turns
    assert max(lengths[10:]) - min(lengths[10:]) <= 4  # flat once the window is full
    p = predictor.predict(conv, text="I can't believe you did that!", speaker="S1")
    assert p.emotion in model.cfg.task.emotions and np.isfinite(p.sentiment_score)


def test_serving_merges_lora_with_the_same_answers(predictor):
    """The predictor folds LoRA into the LLM's weights and (on CPU) keeps the decoder's linear weights transposed,
    for speed: same answers and probabilities as the checkpoint loaded for training (adapters apart), and the merged
    model refuses to train."""
    from egmf_core.checkpoint import load_checkpoint
    from egmf_core.serving import TransposedLinear

    merged = predictor.model
    unmerged = load_checkpoint("default", overrides={"backbone": {"device": "cpu"}}).eval()
    assert merged._merged and not unmerged._merged
    n_layers = merged.llm.get_base_model().config.num_hidden_layers
    assert sum(isinstance(m, TransposedLinear) for m in merged.modules()) == 7 * n_layers  # q k v o, gate up down
    assert not any(isinstance(m, TransposedLinear) for m in unmerged.modules())
    inputs = [e.input for e in dataset_examples(merged, "meld", "test", limit=6)]
    for a, b in zip(merged.score(inputs), unmerged.score(inputs)):
        assert a.emotion == b.emotion and a.sentiment_score == b.sentiment_score
        assert np.allclose(list(a.emotion_probs.values()), list(b.emotion_probs.values()), atol=1e-4)
    with pytest.raises(RuntimeError, match="merged into the LLM for serving"):
        merged.loss(inputs[:1])

"""streaming.analysis: one prediction -> result conversion for the CLI and the service (no model loaded)."""

from __future__ import annotations

import pickle

import numpy as np

from egmf_core.model_io import Prediction
from streaming.analysis import analysis_result, prediction_fields
from streaming.events import EMOTION_LABELS


def _prediction() -> Prediction:
    probs = {lab: np.float32(1 / 7) for lab in EMOTION_LABELS}
    return Prediction("neutral", probs, np.float32(0.25), "positive", [np.float32(0.5), 0.25, 0.25],
                      {"audio": True, "video": False, "text": True},
                      timings_ms={"fusion": np.float64(1.234), "llm_prefill": 20.0},
                      prompt_tokens={"cached": 10, "encoded": 30})


def test_service_and_cli_results_carry_the_same_fields():
    """The model deployment sends prediction_fields (pickled by Ray); the CLI converts the prediction in process:
    the same result, with the model's stage timings after the analyzer's own and the prompt token counts."""
    fields = prediction_fields(_prediction())
    wire = pickle.loads(pickle.dumps({**fields, "turn": None}))
    local = analysis_result("hi", "en", fields, {"asr_encoder": 5.0, "predict": 30.0}, "pending")
    remote = analysis_result("hi", "en", wire, {"asr_encoder": 5.0, "predict": 30.0}, "pending")
    assert local == remote
    assert list(local.timings_ms) == ["asr_encoder", "predict", "fusion", "llm_prefill"]
    assert local.timings_ms["fusion"] == 1.23 and local.prompt_tokens == {"cached": 10, "encoded": 30}
    assert type(local.sentiment_score) is float and all(type(a) is float for a in local.alpha)
    assert local.pending == "pending"


def test_an_answer_without_timings_or_token_counts_still_makes_a_result():
    """A model deployment of the previous version sends neither timings_ms nor prompt_tokens."""
    old = {k: v for k, v in prediction_fields(_prediction()).items() if k not in ("timings_ms", "prompt_tokens")}
    res = analysis_result("hi", "en", old, {"asr_encoder": 5.0}, None)
    assert res.timings_ms == {"asr_encoder": 5.0} and res.prompt_tokens == {}
    assert res.emotion == "neutral" and res.sentiment_label == "positive"

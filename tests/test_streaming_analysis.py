"""streaming.analysis: the per-utterance step and the prediction -> result conversion shared by the CLI and the
service, over stand-ins (no model loaded)."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from egmf_core.features.live_cut import utterance_audio
from egmf_core.features.segmenter import SpeechSegment
from egmf_core.model_io import Prediction
from streaming.analysis import Recognition, analysis_result, analyze_utterance, prediction_fields
from streaming.events import EMOTION_LABELS
from streaming.face import FaceModel
from streaming.pipeline import AnalysisCancelled


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


class StandIns:
    """NOT a model: a recognizer and a scorer that record the order of the step's calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def transcribe(self, audio, language):
        self.calls.append(f"transcribe {len(audio)} {language}")

        def recognition():
            self.calls.append("recognition")
            return Recognition("hello", "en", np.zeros((50, 384), np.float32),
                               {"asr_encoder": 10.0, "asr_decode": 5.0})

        return recognition

    def score(self, conversation, text, speaker, audio, visual, visual_valid, language):
        self.calls.append(f"score {text} {speaker} {audio.shape} {visual} {language}")
        return prediction_fields(_prediction()), (text, len(conversation))


def _segment() -> SpeechSegment:
    return SpeechSegment(1.0, 2.0, np.full(32000, 0.01, np.float32), speaker="A", audio_start_s=0.5)


def test_the_step_recognizes_then_scores_with_the_conversation():
    calls = StandIns()
    res = analyze_utterance(_segment(), None, ["earlier turn"], recognizer=calls, scorer=calls,
                            face=FaceModel(enabled=False), frame_s=0.0, window_s=10.0, language="en")
    cut = utterance_audio(_segment(), 0.0, 10.0)  # the recognizer hears the utterance cut as the model was trained
    assert calls.calls == [f"transcribe {len(cut)} en", "recognition", "score hello A (50, 384) None en"]
    assert (res.text, res.language, res.pending) == ("hello", "en", ("hello", 1))
    assert list(res.timings_ms) == ["asr_encoder", "asr_decode", "predict", "fusion", "llm_prefill"]


def test_a_cancelled_step_never_asks_the_recognizer():
    calls, cancel = StandIns(), threading.Event()
    cancel.set()
    with pytest.raises(AnalysisCancelled):
        analyze_utterance(_segment(), None, [], recognizer=calls, scorer=calls, face=FaceModel(enabled=False),
                          frame_s=0.0, window_s=10.0, language=None, cancel=cancel)
    assert calls.calls == []


def test_one_conversation_rule_for_the_cli_and_the_service():
    """egmf_core.conversation.Conversation (the CLI's predictor and the ingress keep the same type): a turn joins
    only if the context is still at the version it was predicted with; an empty transcript (or the model
    deployment's None for one) adds nothing but still counts as committed."""
    from egmf_core.conversation import ContextWindow, Conversation
    from egmf_core.prompt import Turn

    conv = Conversation(ContextWindow(2))
    turn = Turn("A", "hello", (1,), (2,))
    assert conv.context() == ((), 0)
    assert conv.add(Turn("A", "  ", (1,), ()), 0) and conv.add(None, 0) and conv.context() == ((), 0)
    assert conv.add(turn, 0) and conv.context() == ((turn,), 1)
    assert not conv.add(turn, 0) and conv.context() == ((turn,), 1)  # predicted before the first turn joined
    assert conv.add(turn, 1) and conv.add(turn, 2) and conv.context() == ((turn, turn), 3)  # the last 2 kept

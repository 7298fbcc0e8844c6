"""The per-utterance analysis step, written once for the CLI and the service, and its result.

:func:`analyze_utterance` is the step of :meth:`streaming.pipeline.SpeculativeAnalyzer.analyze_uncommitted`: cut the
utterance's audio as the model was trained (``utterance_audio``), recognize it, compute the face features of its
frames (:class:`streaming.face.FaceModel`) while a remote recognizer works, score it with its conversation, and make
the result. It runs over two small interfaces: a :class:`Recognizer` and a :class:`Scorer`, bound to the local models
in the CLI (:class:`streaming.analyzer.EGMFUtteranceAnalyzer`) and to the model deployments, with their timeouts and
public error codes, in the service (``deploy.remote_analyzer.RemoteAnalyzer``).

:func:`prediction_fields` turns the model's prediction (:class:`egmf_core.model_io.Prediction`) into plain fields:
what a scorer returns, and what the service's model deployment sends the ingress. :func:`analysis_result` makes the
analysis result from them, so a CLI event and a service event come from the same fields, and both results carry the
stage timings and the prompt token counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from egmf_core.features.live_cut import utterance_audio
from egmf_core.features.segmenter import SpeechSegment

from .face import FaceModel
from .pipeline import AnalysisResult, check_cancelled

__all__ = ["Recognition", "Recognizer", "Scorer", "analyze_utterance", "prediction_fields", "analysis_result"]


@dataclass
class Recognition:
    """A recognizer's answer for one utterance: the transcript (stripped), its language, the (T, 384) encoder states
    the model's audio branch takes, and the recognizer's stage timings (``asr_encoder``, ``asr_decode``)."""

    text: str
    language: str
    encoder_states: np.ndarray | None
    timings_ms: dict[str, float]


class Recognizer(Protocol):
    def transcribe(self, audio: np.ndarray, language: str | None) -> Callable[[], Recognition]:
        """Start recognizing ``audio`` (16 kHz float32; ``language`` None = the recognizer's default); the returned
        call gives the :class:`Recognition` (a remote recognizer works while the step computes the face features)."""


class Scorer(Protocol):
    def score(self, conversation: Any, text: str, speaker: str, audio: np.ndarray | None,
              visual: np.ndarray | None, visual_valid: np.ndarray | None,
              language: str | None) -> tuple[Mapping[str, Any], Any]:
        """The prediction (:func:`prediction_fields`) of the utterance said after ``conversation``'s turns, and what
        the analyzer's ``commit`` needs to add the utterance's turn to ``conversation`` later."""


def analyze_utterance(segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None, conversation: Any, *,
                      recognizer: Recognizer, scorer: Scorer, face: FaceModel, frame_s: float, window_s: float,
                      language: str | None, cancel: threading.Event | None = None) -> AnalysisResult:
    """Analyze one utterance without adding it to ``conversation``. ``frame_s``/``window_s``: the room tone on each
    side of the speech and the recognizer's window (``utterance_audio``); ``language``: the recognizer's (None = its
    default). ``cancel`` is checked before the recognizer is asked and before the model is. The result's
    ``timings_ms``: ``asr_encoder``, ``asr_decode``, ``face`` (with video), ``predict`` (the whole scorer call), then
    the model's own stages where it reports them."""
    check_cancelled(cancel)
    audio = utterance_audio(segment, frame_s, window_s)
    recognition = recognizer.transcribe(audio, language)
    face_timings: dict[str, float] = {}
    visual, visual_valid = face.features(video, face_timings)  # while a remote recognizer works
    asr = recognition()
    timings = {**asr.timings_ms, **face_timings}
    check_cancelled(cancel)
    t0 = time.perf_counter()
    prediction, pending = scorer.score(conversation, asr.text, segment.speaker, asr.encoder_states, visual,
                                       visual_valid, asr.language)
    timings["predict"] = (time.perf_counter() - t0) * 1000.0
    return analysis_result(asr.text, asr.language, prediction, timings, pending)


def prediction_fields(p: Any) -> dict[str, Any]:
    """The fields of a prediction that an analysis result needs, as plain Python values."""
    return {"emotion": p.emotion, "emotion_probs": dict(p.emotion_probs),
            "sentiment_score": float(p.sentiment_score), "sentiment_label": p.sentiment_label,
            "alpha": [float(a) for a in p.alpha], "modalities": dict(p.modalities),
            "timings_ms": {k: float(v) for k, v in (p.timings_ms or {}).items()},
            "prompt_tokens": dict(p.prompt_tokens or {})}


def analysis_result(text: str, language: str, prediction: Mapping[str, Any], timings_ms: Mapping[str, float],
                    pending: Any) -> AnalysisResult:
    """The result of one utterance: its transcript and language, the ``prediction``'s fields
    (:func:`prediction_fields`; ``timings_ms`` and ``prompt_tokens`` may be missing), the analyzer's own stage
    timings followed by the model's, and what ``commit`` needs."""
    timings = {**timings_ms, **(prediction.get("timings_ms") or {})}
    # the fields as they are: the pipeline checks them when it makes the event (streaming.pipeline.StreamAnalyzer)
    return AnalysisResult(
        text=text,
        language=language,
        emotion=prediction["emotion"],
        emotion_probs=prediction["emotion_probs"],
        sentiment_score=prediction["sentiment_score"],
        sentiment_label=prediction["sentiment_label"],
        alpha=prediction["alpha"],
        modalities=prediction["modalities"],
        timings_ms={k: round(float(v), 2) for k, v in timings.items()},
        prompt_tokens=dict(prediction.get("prompt_tokens") or {}),
        pending=pending,
    )

"""An analyzed utterance becomes an :class:`~streaming.events.UtteranceEvent`: the segment's span and speaker, the
analyzer's result checked against the event schema, the latency and the model version.

Apart from :class:`~streaming.pipeline.stream.StreamAnalyzer` because it is the one place where the model's loosely
typed answer meets the strict schema (a malformed answer fails here, for its utterance alone).
"""

from __future__ import annotations

import numpy as np

from egmf_core.features.segmenter import SpeechSegment

from ..events import (
    EMOTION_LABELS,
    MODALITIES,
    EmotionResult,
    EventValidationError,
    Modalities,
    SentimentResult,
    UtteranceEvent,
)
from .contract import AnalysisResult

__all__ = ["make_utterance_event", "stream_time"]


def stream_time(t: float) -> float:
    """Stream times to the microsecond: frame arithmetic leaves float noise (2.0100000000000002) in the JSON."""
    return round(float(t), 6)


def make_utterance_event(stream_id: str, utterance_id: int, seg: SpeechSegment, res: AnalysisResult,
                         latency_ms: float, model_version: str) -> UtteranceEvent:
    """The event of one analyzed utterance; raises :class:`~streaming.events.EventValidationError` (or another
    ``TypeError``/``ValueError``) when the analyzer's result does not fit the schema."""
    probs = res.emotion_probs
    if not isinstance(probs, dict):
        raise EventValidationError("emotion.probs", "analyzer must return a dict of probabilities")
    missing = [lab for lab in EMOTION_LABELS if lab not in probs]
    if missing:
        raise EventValidationError(f"emotion.probs.{missing[0]}", "analyzer gave no probability for this label")
    mods = res.modalities or {}
    return UtteranceEvent(
        stream_id=stream_id,
        utterance_id=utterance_id,
        speaker=seg.speaker,
        channel=seg.channel,
        start=stream_time(seg.start_s),
        end=stream_time(seg.end_s),
        text=str(res.text),
        language=str(res.language),
        # the schema checks the values (numbers in [0, 1]) and makes them floats
        emotion=EmotionResult(label=res.emotion, confidence=probs.get(res.emotion, 0.0), probs=dict(probs)),
        # Clip tiny float excursions (tanh in float32 can give 1.0000001).
        sentiment=SentimentResult(score=float(np.clip(res.sentiment_score, -1.0, 1.0)),
                                  label=res.sentiment_label),
        gate_alpha=tuple(float(a) for a in res.alpha),
        modalities=Modalities(**{m: bool(mods.get(m, False)) for m in MODALITIES}),
        latency_ms=round(latency_ms, 1),
        model_version=str(model_version),
    )

"""From a prediction to an :class:`streaming.pipeline.AnalysisResult`, the same in the CLI and in the service.

:func:`prediction_fields` turns the model's prediction (:class:`egmf_core.model_io.Prediction`) into plain fields:
what the service's model deployment sends the ingress. :func:`analysis_result` makes the analysis result from them,
so a CLI event and a service event come from the same fields, and both results carry the stage timings and the prompt
token counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .pipeline import AnalysisResult

__all__ = ["prediction_fields", "analysis_result"]


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

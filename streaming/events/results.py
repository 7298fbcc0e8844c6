"""The per-utterance results an utterance event carries: emotion, sentiment and the modalities that had data.

The label sets live here too (:data:`EMOTION_LABELS`, :data:`SENTIMENT_LABELS`, :data:`MODALITIES`): the model
reports its probabilities and gate weights in these orders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streaming.events.fields import EventValidationError, as_bool, as_float, as_str, field_path, require

__all__ = [
    "EMOTION_LABELS",
    "SENTIMENT_LABELS",
    "MODALITIES",
    "EmotionResult",
    "SentimentResult",
    "Modalities",
    "sentiment_label_for",
]

#: The 7 MELD emotion labels, in the order the model reports them.
EMOTION_LABELS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
#: The 3 sentiment classes.
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
#: The modalities whose presence is reported per utterance (and the order of ``gate_alpha``).
MODALITIES: tuple[str, ...] = ("audio", "video", "text")

# Tolerance on sum(probs) == 1: probabilities are rounded by JSON producers in other languages and by float32 softmax.
_PROB_SUM_TOL = 1e-2


def sentiment_label_for(score: float, neutral_band: float = 0.2) -> str:
    """Map a sentiment score in [-1, 1] to a label; used when a model gives only a score."""
    if score <= -neutral_band:
        return "negative"
    if score >= neutral_band:
        return "positive"
    return "neutral"


@dataclass(frozen=True)
class EmotionResult:
    """Emotion of one utterance: the predicted label, its probability, and the probability of every label."""

    label: str
    confidence: float
    probs: dict[str, float]

    def __post_init__(self) -> None:
        self.validate()
        # Normalise to floats in the canonical label order (JSON ints, numpy floats -> float).
        object.__setattr__(self, "probs", {lab: float(self.probs[lab]) for lab in EMOTION_LABELS})
        object.__setattr__(self, "confidence", float(self.confidence))

    def validate(self, path: str = "emotion") -> None:
        as_str(self.label, field_path(path, "label"))
        if self.label not in EMOTION_LABELS:
            raise EventValidationError(field_path(path, "label"),
                                       f"expected one of {list(EMOTION_LABELS)}, got {self.label!r}")
        as_float(self.confidence, field_path(path, "confidence"), 0.0, 1.0)
        if not isinstance(self.probs, Mapping):
            raise EventValidationError(field_path(path, "probs"), "expected an object {label: probability}")
        extra = sorted(set(self.probs) - set(EMOTION_LABELS))
        if extra:
            raise EventValidationError(field_path(path, f"probs.{extra[0]}"),
                                       f"unknown emotion label (expected {list(EMOTION_LABELS)})")
        for lab in EMOTION_LABELS:
            if lab not in self.probs:
                raise EventValidationError(field_path(path, f"probs.{lab}"),
                                           "missing: every emotion label needs a probability")
            as_float(self.probs[lab], field_path(path, f"probs.{lab}"), 0.0, 1.0)
        total = sum(float(self.probs[lab]) for lab in EMOTION_LABELS)
        if abs(total - 1.0) > _PROB_SUM_TOL:
            raise EventValidationError(field_path(path, "probs"), f"probabilities must sum to 1, got {total:.4f}")

    @classmethod
    def from_probs(cls, probs: Mapping[str, float], label: str | None = None) -> EmotionResult:
        """Build from a probability table; the label defaults to the most probable one."""
        p = {lab: float(probs.get(lab, 0.0)) for lab in EMOTION_LABELS}
        lab = label if label is not None else max(EMOTION_LABELS, key=p.__getitem__)
        return cls(label=lab, confidence=p.get(lab, 0.0), probs=p)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": float(self.confidence),
                "probs": {lab: float(self.probs[lab]) for lab in EMOTION_LABELS}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "emotion") -> EmotionResult:
        label = as_str(require(d, "label", path), field_path(path, "label"))
        conf = as_float(require(d, "confidence", path), field_path(path, "confidence"))
        probs = require(d, "probs", path)
        if not isinstance(probs, Mapping):
            raise EventValidationError(field_path(path, "probs"), "expected an object {label: probability}")
        return cls(label=label, confidence=conf, probs=dict(probs))


@dataclass(frozen=True)
class SentimentResult:
    """Sentiment of one utterance: a score in [-1, 1] and its label."""

    score: float
    label: str

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, path: str = "sentiment") -> None:
        as_float(self.score, field_path(path, "score"), -1.0, 1.0)
        as_str(self.label, field_path(path, "label"))
        if self.label not in SENTIMENT_LABELS:
            raise EventValidationError(field_path(path, "label"),
                                       f"expected one of {list(SENTIMENT_LABELS)}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"score": float(self.score), "label": self.label}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "sentiment") -> SentimentResult:
        score = as_float(require(d, "score", path), field_path(path, "score"), -1.0, 1.0)
        label = as_str(require(d, "label", path), field_path(path, "label"))
        if label not in SENTIMENT_LABELS:
            raise EventValidationError(field_path(path, "label"),
                                       f"expected one of {list(SENTIMENT_LABELS)}, got {label!r}")
        return cls(score=score, label=label)


@dataclass(frozen=True)
class Modalities:
    """Which modalities actually carried data for this utterance (missing ones were masked, not zero-filled)."""

    audio: bool
    video: bool
    text: bool

    def __post_init__(self) -> None:
        for m in MODALITIES:
            object.__setattr__(self, m, as_bool(getattr(self, m), f"modalities.{m}"))

    def to_dict(self) -> dict[str, bool]:
        return {m: bool(getattr(self, m)) for m in MODALITIES}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "modalities") -> Modalities:
        return cls(**{m: as_bool(require(d, m, path), field_path(path, m)) for m in MODALITIES})

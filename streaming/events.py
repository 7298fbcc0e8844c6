"""The one event schema of the streaming layer.

Every producer (the CLI, the WebSocket service) and every consumer (clients, tests, benchmarks) goes through these
dataclasses, so the JSON that leaves the process has exactly one definition. ``to_dict()`` gives plain JSON types,
``from_dict()`` validates a received dict field by field and raises :class:`EventValidationError` naming the field
that is wrong (clients can then report *which* field broke instead of a ``KeyError`` deep in their code).

Event types (the ``type`` field):

* ``"utterance"``: one analyzed utterance (:class:`UtteranceEvent`).
* ``"speech_started"``: the voice activity detector confirmed the start of an utterance
  (:class:`SpeechStartedEvent`); the matching ``utterance`` event follows once the utterance ends.
* ``"error"``: something went wrong for this stream (:class:`ErrorEvent`); the stream may continue.

Times (``start``, ``end``) are seconds in *stream time*: 0.0 is the first sample of the stream, independent of the
wall clock, so that events of a file replay are identical whether it was paced in real time or not.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, ClassVar, Union

__all__ = [
    "EMOTION_LABELS",
    "SENTIMENT_LABELS",
    "MODALITIES",
    "EventValidationError",
    "EmotionResult",
    "SentimentResult",
    "Modalities",
    "UtteranceEvent",
    "SpeechStartedEvent",
    "ErrorEvent",
    "Event",
    "parse_event",
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


class EventValidationError(ValueError):
    """A received or constructed event does not match the schema.

    ``field`` is the dotted path of the offending field (``"emotion.probs.joy"``), so a client or the service can
    answer with an :class:`ErrorEvent` that names it.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ----------------------------------------------------------------------------------------------------------- helpers


def _require(d: Mapping[str, Any], key: str, path: str) -> Any:
    if not isinstance(d, Mapping):
        raise EventValidationError(path or "event", f"expected an object, got {type(d).__name__}")
    if key not in d:
        raise EventValidationError(_join(path, key), "missing required field")
    return d[key]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _str(v: Any, path: str, *, allow_empty: bool = True) -> str:
    if not isinstance(v, str):
        raise EventValidationError(path, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v:
        raise EventValidationError(path, "must not be empty")
    return v


def _float(v: Any, path: str, lo: float | None = None, hi: float | None = None) -> float:
    # bool is an int subclass: reject it explicitly, "true" is never a valid time or probability.
    # numbers.Real also admits numpy scalars (a model's float32 output), which become plain floats below.
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise EventValidationError(path, f"expected a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise EventValidationError(path, f"expected a finite number, got {f}")
    if lo is not None and f < lo:
        raise EventValidationError(path, f"must be >= {lo}, got {f}")
    if hi is not None and f > hi:
        raise EventValidationError(path, f"must be <= {hi}, got {f}")
    return f


def _int(v: Any, path: str, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise EventValidationError(path, f"expected an integer, got {type(v).__name__}")
    if lo is not None and v < lo:
        raise EventValidationError(path, f"must be >= {lo}, got {v}")
    return int(v)


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool) and type(v).__name__ != "bool_":  # numpy.bool_ is not a bool subclass
        raise EventValidationError(path, f"expected true or false, got {type(v).__name__}")
    return bool(v)


def _check_type(d: Mapping[str, Any], expected: str) -> None:
    t = _require(d, "type", "")
    if t != expected:
        raise EventValidationError("type", f"expected {expected!r}, got {t!r}")


def sentiment_label_for(score: float, neutral_band: float = 0.2) -> str:
    """Map a sentiment score in [-1, 1] to a label; used when a model gives only a score."""
    if score <= -neutral_band:
        return "negative"
    if score >= neutral_band:
        return "positive"
    return "neutral"


# ------------------------------------------------------------------------------------------------------ sub-objects


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
        _str(self.label, _join(path, "label"))
        if self.label not in EMOTION_LABELS:
            raise EventValidationError(_join(path, "label"),
                                       f"expected one of {list(EMOTION_LABELS)}, got {self.label!r}")
        _float(self.confidence, _join(path, "confidence"), 0.0, 1.0)
        if not isinstance(self.probs, Mapping):
            raise EventValidationError(_join(path, "probs"), "expected an object {label: probability}")
        extra = sorted(set(self.probs) - set(EMOTION_LABELS))
        if extra:
            raise EventValidationError(_join(path, f"probs.{extra[0]}"),
                                       f"unknown emotion label (expected {list(EMOTION_LABELS)})")
        for lab in EMOTION_LABELS:
            if lab not in self.probs:
                raise EventValidationError(_join(path, f"probs.{lab}"),
                                           "missing: every emotion label needs a probability")
            _float(self.probs[lab], _join(path, f"probs.{lab}"), 0.0, 1.0)
        total = sum(float(self.probs[lab]) for lab in EMOTION_LABELS)
        if abs(total - 1.0) > _PROB_SUM_TOL:
            raise EventValidationError(_join(path, "probs"), f"probabilities must sum to 1, got {total:.4f}")

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
        label = _str(_require(d, "label", path), _join(path, "label"))
        conf = _float(_require(d, "confidence", path), _join(path, "confidence"))
        probs = _require(d, "probs", path)
        if not isinstance(probs, Mapping):
            raise EventValidationError(_join(path, "probs"), "expected an object {label: probability}")
        return cls(label=label, confidence=conf, probs=dict(probs))


@dataclass(frozen=True)
class SentimentResult:
    """Sentiment of one utterance: a score in [-1, 1] and its label."""

    score: float
    label: str

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, path: str = "sentiment") -> None:
        _float(self.score, _join(path, "score"), -1.0, 1.0)
        _str(self.label, _join(path, "label"))
        if self.label not in SENTIMENT_LABELS:
            raise EventValidationError(_join(path, "label"),
                                       f"expected one of {list(SENTIMENT_LABELS)}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"score": float(self.score), "label": self.label}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "sentiment") -> SentimentResult:
        score = _float(_require(d, "score", path), _join(path, "score"), -1.0, 1.0)
        label = _str(_require(d, "label", path), _join(path, "label"))
        if label not in SENTIMENT_LABELS:
            raise EventValidationError(_join(path, "label"), f"expected one of {list(SENTIMENT_LABELS)}, got {label!r}")
        return cls(score=score, label=label)


@dataclass(frozen=True)
class Modalities:
    """Which modalities actually carried data for this utterance (missing ones were masked, not zero-filled)."""

    audio: bool
    video: bool
    text: bool

    def __post_init__(self) -> None:
        for m in MODALITIES:
            object.__setattr__(self, m, _bool(getattr(self, m), f"modalities.{m}"))

    def to_dict(self) -> dict[str, bool]:
        return {m: bool(getattr(self, m)) for m in MODALITIES}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "modalities") -> Modalities:
        return cls(**{m: _bool(_require(d, m, path), _join(path, m)) for m in MODALITIES})


# ----------------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class UtteranceEvent:
    """One analyzed utterance.

    ``utterance_id`` counts the utterance events of a stream from 0 without gaps (all channels together), so a client
    can detect a lost event. ``latency_ms`` is the wall time from the moment the last speech sample of the utterance
    reached the pipeline to the moment this event was made: for live input that is the user-visible delay (end-of-
    speech detection hangover + recognition + model), for a file read as fast as possible it is the processing time.
    """

    TYPE: ClassVar[str] = "utterance"

    stream_id: str
    utterance_id: int
    speaker: str
    channel: int
    start: float
    end: float
    text: str
    language: str
    emotion: EmotionResult
    sentiment: SentimentResult
    gate_alpha: tuple[float, float, float]
    modalities: Modalities
    latency_ms: float
    model_version: str
    type: str = dc_field(default="utterance", init=False)

    def __post_init__(self) -> None:
        # Normalise gate_alpha to a tuple (hashable, immutable) before validating.
        if isinstance(self.gate_alpha, (list, tuple)) or hasattr(self.gate_alpha, "tolist"):  # list/ndarray/tensor
            alpha = self.gate_alpha.tolist() if hasattr(self.gate_alpha, "tolist") else self.gate_alpha
            object.__setattr__(self, "gate_alpha", tuple(alpha) if isinstance(alpha, (list, tuple)) else alpha)
        self.validate()
        # Plain Python floats (numpy scalars from the model would not survive json.dumps, and equality after a JSON
        # round trip should hold).
        for name in ("start", "end", "latency_ms"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "utterance_id", int(self.utterance_id))
        object.__setattr__(self, "channel", int(self.channel))
        object.__setattr__(self, "gate_alpha", tuple(float(a) for a in self.gate_alpha))

    def validate(self) -> None:
        _str(self.stream_id, "stream_id", allow_empty=False)
        _int(self.utterance_id, "utterance_id", 0)
        _str(self.speaker, "speaker")
        _int(self.channel, "channel", 0)
        start = _float(self.start, "start", 0.0)
        end = _float(self.end, "end", 0.0)
        if end < start:
            raise EventValidationError("end", f"must be >= start ({start}), got {end}")
        _str(self.text, "text")
        _str(self.language, "language")
        if not isinstance(self.emotion, EmotionResult):
            raise EventValidationError("emotion", "expected an EmotionResult")
        if not isinstance(self.sentiment, SentimentResult):
            raise EventValidationError("sentiment", "expected a SentimentResult")
        if not isinstance(self.gate_alpha, tuple) or len(self.gate_alpha) != len(MODALITIES):
            raise EventValidationError("gate_alpha",
                                       f"expected a list of {len(MODALITIES)} numbers ({'/'.join(MODALITIES)})")
        for i, a in enumerate(self.gate_alpha):
            _float(a, f"gate_alpha.{i}", 0.0, 1.0)
        if not isinstance(self.modalities, Modalities):
            raise EventValidationError("modalities", "expected a Modalities")
        _float(self.latency_ms, "latency_ms", 0.0)
        _str(self.model_version, "model_version")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "stream_id": self.stream_id,
            "utterance_id": int(self.utterance_id),
            "speaker": self.speaker,
            "channel": int(self.channel),
            "start": float(self.start),
            "end": float(self.end),
            "text": self.text,
            "language": self.language,
            "emotion": self.emotion.to_dict(),
            "sentiment": self.sentiment.to_dict(),
            "gate_alpha": [float(a) for a in self.gate_alpha],
            "modalities": self.modalities.to_dict(),
            "latency_ms": float(self.latency_ms),
            "model_version": self.model_version,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UtteranceEvent:
        _check_type(d, cls.TYPE)
        alpha = _require(d, "gate_alpha", "")
        if not isinstance(alpha, (list, tuple)):
            raise EventValidationError("gate_alpha", f"expected a list of {len(MODALITIES)} numbers")
        return cls(
            stream_id=_str(_require(d, "stream_id", ""), "stream_id", allow_empty=False),
            utterance_id=_int(_require(d, "utterance_id", ""), "utterance_id", 0),
            speaker=_str(_require(d, "speaker", ""), "speaker"),
            channel=_int(_require(d, "channel", ""), "channel", 0),
            start=_float(_require(d, "start", ""), "start", 0.0),
            end=_float(_require(d, "end", ""), "end", 0.0),
            text=_str(_require(d, "text", ""), "text"),
            language=_str(_require(d, "language", ""), "language"),
            emotion=EmotionResult.from_dict(_require(d, "emotion", "")),
            sentiment=SentimentResult.from_dict(_require(d, "sentiment", "")),
            gate_alpha=tuple(_float(a, f"gate_alpha.{i}", 0.0, 1.0) for i, a in enumerate(alpha)),
            modalities=Modalities.from_dict(_require(d, "modalities", "")),
            latency_ms=_float(_require(d, "latency_ms", ""), "latency_ms", 0.0),
            model_version=_str(_require(d, "model_version", ""), "model_version"),
        )


@dataclass(frozen=True)
class SpeechStartedEvent:
    """Speech was confirmed on a channel at ``start`` (stream seconds); its utterance event comes when it ends.

    Sent so that a live client can show "speaking..." before the utterance is analyzed. It is sent only after the
    utterance has lasted the segmenter's minimum speech length, so clicks and coughs that are discarded later do not
    produce a start without an utterance (a start may still be followed by no utterance if analysis fails; an error
    event is sent then).
    """

    TYPE: ClassVar[str] = "speech_started"

    stream_id: str
    speaker: str
    channel: int
    start: float
    type: str = dc_field(default="speech_started", init=False)

    def __post_init__(self) -> None:
        _str(self.stream_id, "stream_id", allow_empty=False)
        _str(self.speaker, "speaker")
        object.__setattr__(self, "channel", _int(self.channel, "channel", 0))
        object.__setattr__(self, "start", _float(self.start, "start", 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "stream_id": self.stream_id, "speaker": self.speaker,
                "channel": int(self.channel), "start": float(self.start)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpeechStartedEvent:
        _check_type(d, cls.TYPE)
        return cls(
            stream_id=_str(_require(d, "stream_id", ""), "stream_id", allow_empty=False),
            speaker=_str(_require(d, "speaker", ""), "speaker"),
            channel=_int(_require(d, "channel", ""), "channel", 0),
            start=_float(_require(d, "start", ""), "start", 0.0),
        )


@dataclass(frozen=True)
class ErrorEvent:
    """An error for one stream. ``code`` is a stable machine-readable token (``"source_error"``,
    ``"analysis_failed"``, ``"invalid_input"``, ...), ``message`` one human-readable line, ``field`` the input field
    at fault when there is one (for example the field of a client message that failed validation). ``start`` and
    ``end``: the span (seconds of stream time) of the utterance an utterance-level error (``analysis_failed``,
    ``analysis_timeout``, ``invalid_analysis``) cost, as fields rather than only in the message, so that a resumed
    connection can put them on the stream's clock like its utterance events."""

    TYPE: ClassVar[str] = "error"

    stream_id: str
    code: str
    message: str
    field: str | None = None
    start: float | None = None
    end: float | None = None
    type: str = dc_field(default="error", init=False)

    def __post_init__(self) -> None:
        _str(self.stream_id, "stream_id")
        _str(self.code, "code", allow_empty=False)
        _str(self.message, "message")
        if self.field is not None:
            _str(self.field, "field")
        if (self.start is None) != (self.end is None):
            raise EventValidationError("start" if self.start is None else "end", "expected start and end together")
        if self.start is not None:
            object.__setattr__(self, "start", _float(self.start, "start", 0.0))
            object.__setattr__(self, "end", _float(self.end, "end", self.start))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "stream_id": self.stream_id, "code": self.code, "message": self.message}
        if self.field is not None:
            d["field"] = self.field
        if self.start is not None:
            d["start"], d["end"] = self.start, self.end
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorEvent:
        _check_type(d, cls.TYPE)
        f = d.get("field") if isinstance(d, Mapping) else None
        return cls(
            stream_id=_str(_require(d, "stream_id", ""), "stream_id"),
            code=_str(_require(d, "code", ""), "code", allow_empty=False),
            message=_str(_require(d, "message", ""), "message"),
            field=None if f is None else _str(f, "field"),
            start=d.get("start") if isinstance(d, Mapping) else None,
            end=d.get("end") if isinstance(d, Mapping) else None,
        )


Event = Union[UtteranceEvent, SpeechStartedEvent, ErrorEvent]

_BY_TYPE: dict[str, type] = {c.TYPE: c for c in (UtteranceEvent, SpeechStartedEvent, ErrorEvent)}


def parse_event(data: Mapping[str, Any] | str | bytes) -> Event:
    """Parse and validate one event (a dict, or a JSON text as received on a socket or a JSON-lines file).

    Raises :class:`EventValidationError` (with ``field``) for anything that is not a valid event.
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise EventValidationError("event", f"not valid JSON: {e.msg} at position {e.pos}") from None
    if not isinstance(data, Mapping):
        raise EventValidationError("event", f"expected a JSON object, got {type(data).__name__}")
    t = _require(data, "type", "")
    cls = _BY_TYPE.get(t) if isinstance(t, str) else None
    if cls is None:
        raise EventValidationError("type", f"unknown event type {t!r} (expected one of {sorted(_BY_TYPE)})")
    return cls.from_dict(data)

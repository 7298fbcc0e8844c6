"""The three events of the schema (utterance, speech_started, error) and :func:`parse_event`, which tells them apart.

Each event validates itself when constructed, ``to_dict()``/``to_json()`` give what leaves the process and
``from_dict()`` checks a received dict field by field (see :mod:`streaming.events`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, ClassVar, Union

from streaming.events.fields import (
    EventValidationError,
    as_float,
    as_int,
    as_str,
    check_type,
    require,
)
from streaming.events.results import MODALITIES, EmotionResult, Modalities, SentimentResult

__all__ = ["UtteranceEvent", "SpeechStartedEvent", "ErrorEvent", "Event", "parse_event"]


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
        as_str(self.stream_id, "stream_id", allow_empty=False)
        as_int(self.utterance_id, "utterance_id", 0)
        as_str(self.speaker, "speaker")
        as_int(self.channel, "channel", 0)
        start = as_float(self.start, "start", 0.0)
        end = as_float(self.end, "end", 0.0)
        if end < start:
            raise EventValidationError("end", f"must be >= start ({start}), got {end}")
        as_str(self.text, "text")
        as_str(self.language, "language")
        if not isinstance(self.emotion, EmotionResult):
            raise EventValidationError("emotion", "expected an EmotionResult")
        if not isinstance(self.sentiment, SentimentResult):
            raise EventValidationError("sentiment", "expected a SentimentResult")
        if not isinstance(self.gate_alpha, tuple) or len(self.gate_alpha) != len(MODALITIES):
            raise EventValidationError("gate_alpha",
                                       f"expected a list of {len(MODALITIES)} numbers ({'/'.join(MODALITIES)})")
        for i, a in enumerate(self.gate_alpha):
            as_float(a, f"gate_alpha.{i}", 0.0, 1.0)
        if not isinstance(self.modalities, Modalities):
            raise EventValidationError("modalities", "expected a Modalities")
        as_float(self.latency_ms, "latency_ms", 0.0)
        as_str(self.model_version, "model_version")

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
        check_type(d, cls.TYPE)
        alpha = require(d, "gate_alpha", "")
        if not isinstance(alpha, (list, tuple)):
            raise EventValidationError("gate_alpha", f"expected a list of {len(MODALITIES)} numbers")
        return cls(
            stream_id=as_str(require(d, "stream_id", ""), "stream_id", allow_empty=False),
            utterance_id=as_int(require(d, "utterance_id", ""), "utterance_id", 0),
            speaker=as_str(require(d, "speaker", ""), "speaker"),
            channel=as_int(require(d, "channel", ""), "channel", 0),
            start=as_float(require(d, "start", ""), "start", 0.0),
            end=as_float(require(d, "end", ""), "end", 0.0),
            text=as_str(require(d, "text", ""), "text"),
            language=as_str(require(d, "language", ""), "language"),
            emotion=EmotionResult.from_dict(require(d, "emotion", "")),
            sentiment=SentimentResult.from_dict(require(d, "sentiment", "")),
            gate_alpha=tuple(as_float(a, f"gate_alpha.{i}", 0.0, 1.0) for i, a in enumerate(alpha)),
            modalities=Modalities.from_dict(require(d, "modalities", "")),
            latency_ms=as_float(require(d, "latency_ms", ""), "latency_ms", 0.0),
            model_version=as_str(require(d, "model_version", ""), "model_version"),
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
        as_str(self.stream_id, "stream_id", allow_empty=False)
        as_str(self.speaker, "speaker")
        object.__setattr__(self, "channel", as_int(self.channel, "channel", 0))
        object.__setattr__(self, "start", as_float(self.start, "start", 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "stream_id": self.stream_id, "speaker": self.speaker,
                "channel": int(self.channel), "start": float(self.start)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpeechStartedEvent:
        check_type(d, cls.TYPE)
        return cls(
            stream_id=as_str(require(d, "stream_id", ""), "stream_id", allow_empty=False),
            speaker=as_str(require(d, "speaker", ""), "speaker"),
            channel=as_int(require(d, "channel", ""), "channel", 0),
            start=as_float(require(d, "start", ""), "start", 0.0),
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
        as_str(self.stream_id, "stream_id")
        as_str(self.code, "code", allow_empty=False)
        as_str(self.message, "message")
        if self.field is not None:
            as_str(self.field, "field")
        if (self.start is None) != (self.end is None):
            raise EventValidationError("start" if self.start is None else "end", "expected start and end together")
        if self.start is not None:
            object.__setattr__(self, "start", as_float(self.start, "start", 0.0))
            object.__setattr__(self, "end", as_float(self.end, "end", self.start))

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
        check_type(d, cls.TYPE)
        f = d.get("field") if isinstance(d, Mapping) else None
        return cls(
            stream_id=as_str(require(d, "stream_id", ""), "stream_id"),
            code=as_str(require(d, "code", ""), "code", allow_empty=False),
            message=as_str(require(d, "message", ""), "message"),
            field=None if f is None else as_str(f, "field"),
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
    t = require(data, "type", "")
    cls = _BY_TYPE.get(t) if isinstance(t, str) else None
    if cls is None:
        raise EventValidationError("type", f"unknown event type {t!r} (expected one of {sorted(_BY_TYPE)})")
    return cls.from_dict(data)

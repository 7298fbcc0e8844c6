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

One concern per module: :mod:`~streaming.events.fields` (:class:`EventValidationError` and the field checks every
``from_dict()`` uses), :mod:`~streaming.events.results` (the labels and the per-utterance results: emotion,
sentiment, modalities), :mod:`~streaming.events.messages` (the three events and :func:`parse_event`). Importers use
this package (``from streaming.events import UtteranceEvent``).
"""

from streaming.events.fields import EventValidationError
from streaming.events.messages import ErrorEvent, Event, SpeechStartedEvent, UtteranceEvent, parse_event
from streaming.events.results import (
    EMOTION_LABELS,
    MODALITIES,
    SENTIMENT_LABELS,
    EmotionResult,
    Modalities,
    SentimentResult,
    sentiment_label_for,
)

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

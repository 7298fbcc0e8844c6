"""The event schema: round trips (dict and JSON), type dispatch and field-level validation errors."""

from __future__ import annotations

import copy
import json

import pytest

from streaming.events import (
    EMOTION_LABELS,
    EmotionResult,
    ErrorEvent,
    EventValidationError,
    Modalities,
    SentimentResult,
    SpeechStartedEvent,
    UtteranceEvent,
    parse_event,
    sentiment_label_for,
)


def make_utterance(**over) -> UtteranceEvent:
    probs = {"anger": 0.05, "disgust": 0.02, "fear": 0.03, "joy": 0.62, "neutral": 0.2, "sadness": 0.03,
             "surprise": 0.05}
    kw = dict(stream_id="call-7", utterance_id=3, speaker="Speaker 1", channel=0, start=3.21, end=5.94,
              text="That's wonderful news, thank you!", language="en", emotion=EmotionResult.from_probs(probs),
              sentiment=SentimentResult(0.6, "positive"), gate_alpha=[0.3, 0.1, 0.6],
              modalities=Modalities(audio=True, video=False, text=True), latency_ms=412.5, model_version="egmf-0.1")
    kw.update(over)
    return UtteranceEvent(**kw)


def test_utterance_round_trip_dict_and_json():
    ev = make_utterance()
    d = ev.to_dict()
    assert d["type"] == "utterance"
    assert set(d) == {"type", "stream_id", "utterance_id", "speaker", "channel", "start", "end", "text", "language",
                      "emotion", "sentiment", "gate_alpha", "modalities", "latency_ms", "model_version"}
    assert list(d["emotion"]["probs"]) == list(EMOTION_LABELS)
    assert d["emotion"]["label"] == "joy" and d["emotion"]["confidence"] == pytest.approx(0.62)
    assert d["gate_alpha"] == [0.3, 0.1, 0.6]
    assert UtteranceEvent.from_dict(d) == ev
    assert parse_event(ev.to_json()) == ev
    assert parse_event(json.loads(ev.to_json())) == ev
    assert "\n" not in ev.to_json()  # one event per line in JSON-lines output


def test_other_event_types_round_trip():
    s = SpeechStartedEvent("call-7", "Speaker 2", 1, 12.03)
    e = ErrorEvent("call-7", "source_error", "stream stalled", field="url")
    e2 = ErrorEvent("call-7", "analysis_failed", "boom")
    for ev in (s, e, e2):
        assert parse_event(ev.to_json()) == ev
    assert "field" not in e2.to_dict()
    assert s.to_dict() == {"type": "speech_started", "stream_id": "call-7", "speaker": "Speaker 2", "channel": 1,
                           "start": 12.03}


def test_numpy_and_int_values_are_normalised():
    import numpy as np

    ev = make_utterance(start=np.float32(1.5), end=2, latency_ms=np.float64(3.0), gate_alpha=np.array([0.2, 0.3, 0.5]))
    d = ev.to_dict()
    assert type(d["start"]) is float and type(d["end"]) is float
    json.dumps(d)  # plain JSON types only
    assert parse_event(d) == ev


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("stream_id"), "stream_id"),
        (lambda d: d.update(utterance_id=-1), "utterance_id"),
        (lambda d: d.update(utterance_id=1.5), "utterance_id"),
        (lambda d: d.update(channel=True), "channel"),
        (lambda d: d.update(start="0.5"), "start"),
        (lambda d: d.update(end=1.0), "end"),  # before start
        (lambda d: d.update(start=float("nan")), "start"),
        (lambda d: d["emotion"].update(label="happy"), "emotion.label"),
        (lambda d: d["emotion"]["probs"].pop("fear"), "emotion.probs.fear"),
        (lambda d: d["emotion"]["probs"].update(contempt=0.0), "emotion.probs.contempt"),
        (lambda d: d["emotion"]["probs"].update(joy=0.9), "emotion.probs"),  # no longer sums to 1
        (lambda d: d["emotion"].update(confidence=1.2), "emotion.confidence"),
        (lambda d: d["sentiment"].update(score=1.5), "sentiment.score"),
        (lambda d: d["sentiment"].update(label="good"), "sentiment.label"),
        (lambda d: d.update(gate_alpha=[0.5, 0.5]), "gate_alpha"),
        (lambda d: d.update(gate_alpha="abc"), "gate_alpha"),
        (lambda d: d["modalities"].pop("video"), "modalities.video"),
        (lambda d: d["modalities"].update(audio="yes"), "modalities.audio"),
        (lambda d: d.update(latency_ms=-1), "latency_ms"),
        (lambda d: d.update(type="utterances"), "type"),
    ],
)
def test_validation_names_the_field(mutate, field):
    d = copy.deepcopy(make_utterance().to_dict())
    mutate(d)
    with pytest.raises(EventValidationError) as ei:
        parse_event(d)
    assert ei.value.field == field, str(ei.value)
    assert field in str(ei.value)


def test_parse_event_rejects_garbage():
    with pytest.raises(EventValidationError) as ei:
        parse_event("{not json")
    assert ei.value.field == "event"
    with pytest.raises(EventValidationError) as ei:
        parse_event([1, 2])
    assert ei.value.field == "event"
    with pytest.raises(EventValidationError) as ei:
        parse_event({"stream_id": "x"})
    assert ei.value.field == "type"
    with pytest.raises(EventValidationError, match="unknown event type"):
        parse_event({"type": "hello"})
    with pytest.raises(EventValidationError) as ei:
        parse_event({"type": "error", "stream_id": "x", "code": "", "message": "m"})
    assert ei.value.field == "code"


def test_constructor_validates_too():
    with pytest.raises(EventValidationError):
        make_utterance(emotion=EmotionResult.from_probs({"joy": 0.5}))  # sums to 0.5
    with pytest.raises(EventValidationError):
        SentimentResult(0.2, "meh")


def test_sentiment_label_for():
    assert sentiment_label_for(-0.7) == "negative"
    assert sentiment_label_for(0.05) == "neutral"
    assert sentiment_label_for(0.5) == "positive"


def test_an_utterance_error_carries_its_span_and_a_resumed_connection_rebases_it():
    """``invalid_analysis`` on a resumed connection used to name its span on that connection's clock (in the
    message only); the span is now two fields that ``deploy.resume.rebase`` puts on the stream's clock."""
    from deploy.resume import rebase
    from streaming.events import EventValidationError

    e = ErrorEvent("call-7", "invalid_analysis", "utterance (Speaker): analyzer result: ...", "emotion.confidence",
                   start=1.25, end=3.5)
    assert parse_event(e.to_json()) == e and e.to_dict()["start"] == 1.25 and e.to_dict()["end"] == 3.5
    moved = rebase(e, 4, 60.0)
    assert (moved.start, moved.end, moved.code, moved.field) == (61.25, 63.5, e.code, e.field)
    plain = ErrorEvent("call-7", "idle_timeout", "no message for 30 s")
    assert rebase(plain, 4, 60.0) == plain and "start" not in plain.to_dict()
    with pytest.raises(EventValidationError, match="end"):
        ErrorEvent("call-7", "invalid_analysis", "x", start=2.0, end=1.0)
    with pytest.raises(EventValidationError, match="end"):
        ErrorEvent("call-7", "invalid_analysis", "x", start=2.0)

"""StreamAnalyzer end to end with the segmentation-only stand-in analyzer (see test_streaming_support): real inputs
through the real sources and segmenter, checking events, ordering, speakers, video alignment and latency. The
model itself is not exercised here (test_streaming_analyzer does that)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_streaming_support import (
    SR,
    TALKING_HEADS,
    SegmentationOnlyAnalyzer,
    espeak_conversation,
    join_with_silence,
    needs_espeak,
    needs_ravdess,
    needs_talking_heads,
    ravdess_clips,
    write_wav,
)

from streaming.events import (
    EMOTION_LABELS,
    ErrorEvent,
    SpeechStartedEvent,
    UtteranceEvent,
    parse_event,
)
from streaming.pipeline import (
    AnalysisResult,
    StreamAnalyzer,
    StreamConfig,
    UtteranceAnalyzer,
)
from streaming.sources import AVFileSource, PushSource, SourceError

TOL_S = 0.150


def utterances(events):
    return [e for e in events if isinstance(e, UtteranceEvent)]


def test_stand_in_satisfies_the_protocol():
    assert isinstance(SegmentationOnlyAnalyzer(), UtteranceAnalyzer)


@needs_ravdess
def test_ravdess_stream_one_event_per_clip(tmp_path):
    clips = ravdess_clips(6)
    x, refs = join_with_silence(clips)
    path = write_wav(tmp_path / "joined.wav", x)
    an = SegmentationOnlyAnalyzer()
    sa = StreamAnalyzer(an, StreamConfig(stream_id="ravdess-test"))
    events = list(sa.run(AVFileSource(path)))
    utts = utterances(events)
    assert len(utts) == len(refs)
    assert [u.utterance_id for u in utts] == list(range(len(refs)))
    for u, (b, e) in zip(utts, refs):
        assert abs(u.start - b) <= TOL_S and abs(u.end - e) <= TOL_S
        assert u.stream_id == "ravdess-test" and u.speaker == "Speaker" and u.channel == 0
        assert u.model_version == "test-segmentation-only"
        assert u.modalities.to_dict() == {"audio": True, "video": False, "text": False}
        assert set(u.emotion.probs) == set(EMOTION_LABELS)
        assert 0.0 <= u.latency_ms < 1000.0
    # every event survives the JSON round trip; each utterance is announced by a speech_started event first
    assert all(parse_event(e.to_json()) == e for e in events)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStartedEvent", "UtteranceEvent"] * len(refs)
    for s, u in zip(events[::2], events[1::2]):
        assert s.start == u.start
    # one conversation for the whole stream, passed to every call; no video for a wav file
    convs = {id(c) for _, _, c in an.calls}
    assert len(convs) == 1 and all(v is None for _, v, _ in an.calls)


@needs_espeak
def test_stereo_call_speakers_and_order(tmp_path):
    path, turns = espeak_conversation(tmp_path)
    an = SegmentationOnlyAnalyzer()
    cfg = StreamConfig(stereo_speakers=True, speakers=["Agent", "Customer"], emit_speech_started=False)
    events = list(StreamAnalyzer(an, cfg).run(AVFileSource(path, stereo=True)))
    utts = utterances(events)
    assert len(utts) == len(events) == len(turns)
    assert [u.speaker for u in utts] == [["Agent", "Customer"][t.channel] for t in turns]
    assert [u.channel for u in utts] == [t.channel for t in turns]
    assert [u.start for u in utts] == sorted(u.start for u in utts)
    assert [u.utterance_id for u in utts] == list(range(len(turns)))
    for u, t in zip(utts, turns):
        assert abs(u.start - t.ref[0]) <= TOL_S and abs(u.end - t.ref[1]) <= TOL_S
    # the conversation is shared by both speakers, in conversation order
    assert an.calls[-1][2] == [u.speaker for u in utts]
    # the analyzer got each speaker's own channel only (the other speaker's voice is not in it)
    for (seg, _, _), t in zip(an.calls, turns):
        assert seg.channel == t.channel and seg.audio.ndim == 1


@needs_espeak
def test_stereo_without_diarization_is_mixed_to_mono(tmp_path):
    path, turns = espeak_conversation(tmp_path)
    events = list(StreamAnalyzer(SegmentationOnlyAnalyzer(), StreamConfig(emit_speech_started=False))
                  .run(AVFileSource(path, stereo=True)))
    # the overlapping turns merge into one utterance on the mixed signal
    assert len(utterances(events)) == len(turns) - 1
    assert {u.channel for u in utterances(events)} == {0}


@needs_talking_heads
def test_talking_head_video_frames_reach_the_analyzer():
    an = SegmentationOnlyAnalyzer()
    cfg = StreamConfig(video_margin_s=0.25)
    events = list(StreamAnalyzer(an, cfg).run(AVFileSource(TALKING_HEADS / "1.mp4", video_fps=10)))
    utts = utterances(events)
    assert len(utts) >= 1
    assert all(u.modalities.video for u in utts)
    for (seg, frames, _), u in zip(an.calls, utts):
        assert frames, "an utterance of a video got no frames"
        ts = np.array([t for t, _ in frames])
        assert ts.min() >= seg.start_s - 0.25 - 1e-9 and ts.max() <= seg.end_s + 0.25 + 1e-9
        # the frames cover the utterance (about 10 per second of speech)
        assert len(frames) >= 10 * (seg.end_s - seg.start_s) * 0.8
        assert all(img.dtype == np.uint8 and img.ndim == 3 for _, img in frames)


@needs_ravdess
def test_analysis_failure_becomes_an_error_event_and_ids_stay_consecutive():
    an = SegmentationOnlyAnalyzer(fail_on={1})
    src = PushSource()
    x, refs = join_with_silence(ravdess_clips(3))
    for i in range(0, len(x), 4000):
        src.push_audio(x[i:i + 4000])
    src.end()
    events = list(StreamAnalyzer(an, StreamConfig(emit_speech_started=False)).run(src))
    assert len(an.calls) == len(refs) == 3
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["UtteranceEvent", "ErrorEvent", "UtteranceEvent"]
    assert events[1].code == "analysis_failed" and "deliberate failure" in events[1].message
    assert [e.utterance_id for e in utterances(events)] == [0, 1]


class MalformedAnalyzer(SegmentationOnlyAnalyzer):
    """Its second result is malformed: ``change`` replaces some of its fields."""

    def __init__(self, change: dict):
        super().__init__()
        self.change = change

    def analyze(self, segment, video, conversation):
        r = super().analyze(segment, video, conversation)
        return AnalysisResult(**{**r.__dict__, **self.change}) if len(self.calls) == 2 else r


_ONE_HOT = {lab: float(lab == "neutral") for lab in EMOTION_LABELS}


@needs_ravdess
@pytest.mark.parametrize("change, field", [
    ({"emotion_probs": {"neutral": 1.0}}, "emotion.probs.anger"),  # labels missing
    ({"emotion_probs": {**_ONE_HOT, "anger": float("nan")}}, "emotion.probs.anger"),
    ({"emotion_probs": {lab: "not a number" for lab in EMOTION_LABELS}}, "emotion.confidence"),
    ({"emotion": "bored"}, "emotion.label"),
    ({"sentiment_score": None}, None),
])
def test_a_malformed_result_is_reported_with_its_span_and_the_stream_goes_on(change, field):
    """One malformed analysis result (a model answer gone wrong) costs its utterance an ``invalid_analysis`` error
    naming the utterance's span and the field at fault; it takes no utterance id and the later utterances are
    delivered (before: a value that was not a number ended the whole stream)."""
    x, refs = join_with_silence(ravdess_clips(3))
    src = PushSource()
    for i in range(0, len(x), 4000):
        src.push_audio(x[i:i + 4000])
    src.end()
    events = list(StreamAnalyzer(MalformedAnalyzer(change), StreamConfig(emit_speech_started=False)).run(src))
    assert [type(e).__name__ for e in events] == ["UtteranceEvent", "ErrorEvent", "UtteranceEvent"], events
    err = events[1]
    assert err.code == "invalid_analysis" and err.field == field, err
    assert err.start < refs[1][1] and err.end > refs[1][0], (err, refs)
    assert [e.utterance_id for e in utterances(events)] == [0, 1]


def test_stereo_speakers_needs_two_channels():
    sa = StreamAnalyzer(SegmentationOnlyAnalyzer(), StreamConfig(stereo_speakers=True))
    with pytest.raises(SourceError, match="2-channel") as ei:
        list(sa.run(PushSource()))
    assert ei.value.field == "stereo"


@needs_ravdess
def test_latency_is_measured_from_the_end_of_speech_in_real_time():
    """Audio pushed at real-time pace: the event comes ~hangover (390 ms) after the last speech sample arrived,
    and latency_ms says so (the stand-in analyzer itself takes no time)."""
    clip = ravdess_clips(1)[0]
    b, e = clip.bounds
    x = np.concatenate([np.zeros(SR // 2, np.float32), clip.audio[int(b * SR):int(e * SR)],
                        np.zeros(int(0.8 * SR), np.float32)])
    src = PushSource()

    def feed():
        t0 = time.monotonic()
        for i in range(0, len(x), 480):  # 30 ms chunks on the wall clock
            src.push_audio(x[i:i + 480])
            time.sleep(max(0.0, t0 + (i + 480) / SR - time.monotonic()))
        src.end()

    th = threading.Thread(target=feed)
    th.start()
    events = list(StreamAnalyzer(SegmentationOnlyAnalyzer(), StreamConfig(emit_speech_started=False)).run(src))
    th.join()
    (u,) = utterances(events)
    print(f"\nreal-time latency (segmentation only): {u.latency_ms:.0f} ms")
    assert 250.0 <= u.latency_ms <= 700.0


def test_speech_started_events_are_schema_events():
    ev = SpeechStartedEvent("s", "Speaker", 0, 1.23)
    assert parse_event(ev.to_dict()) == ev


class _BreaksAfter(PushSource):
    """A pushed stream whose input fails mid-way (as a dropped network stream would)."""

    def __iter__(self):
        for i, item in enumerate(super().__iter__()):
            if i == self.fail_at:
                raise SourceError("connection reset by peer", field="url")
            yield item


@needs_ravdess
def test_source_failure_mid_stream_keeps_what_was_heard():
    x, refs = join_with_silence(ravdess_clips(2))
    src = _BreaksAfter()
    cut = int((refs[1][0] + 1.0) * SR)  # fail one second into the second clip
    src.fail_at = cut // 1600
    for i in range(0, len(x), 1600):
        src.push_audio(x[i:i + 1600])
    src.end()
    events = list(StreamAnalyzer(SegmentationOnlyAnalyzer(), StreamConfig(emit_speech_started=False)).run(src))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["UtteranceEvent", "ErrorEvent", "UtteranceEvent"]
    assert events[1].code == "source_error" and events[1].field == "url"
    assert abs(events[2].start - refs[1][0]) <= TOL_S and events[2].end <= cut / SR + 1e-6


@needs_talking_heads
def test_merged_source_interleaves_video_with_pushed_audio():
    """Audio from one source, frames from another (how --webcam combines the microphone and the camera)."""
    from streaming.sources import AudioChunk, MergedSource, VideoFrame

    audio = PushSource()
    video = AVFileSource(TALKING_HEADS / "1.mp4", audio=False, video_fps=10)
    merged = MergedSource(audio, video)

    def feed():
        for _ in range(40):
            audio.push_audio(np.zeros(1600, np.float32))
            time.sleep(0.01)
        audio.end()

    th = threading.Thread(target=feed)
    th.start()
    items = list(merged)
    th.join()
    assert merged.has_video
    assert sum(isinstance(i, AudioChunk) for i in items) == 40
    assert sum(isinstance(i, VideoFrame) for i in items) > 10

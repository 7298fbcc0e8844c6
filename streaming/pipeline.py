"""Source -> segmenter -> per-utterance analysis -> events.

:class:`StreamAnalyzer` is model-agnostic: the per-utterance work sits behind the small :class:`UtteranceAnalyzer`
protocol (the EGMF implementation is :class:`streaming.analyzer.EGMFUtteranceAnalyzer`), so that segmentation,
ordering, video alignment, latency accounting and the event schema are the same whatever model is plugged in.

Design choices:

* **Synchronous.** Analysis runs in the caller's thread, between chunks. Events come out in a deterministic order,
  there is no worker to tear down on Ctrl-C, and the sources already buffer input while an utterance is analyzed
  (the microphone callback queue, the push queue; a paced file catches up). Analysis of one utterance takes ~0.9 s
  on the 2-core CPU (``benchmarks/results/streaming_latency.md``), so the stream keeps up as long as an utterance plus
  the pause after it last longer than that; a backlog is worked off in the next pauses.
* **One conversation per stream**, shared by all channels/speakers, because the model's context is the dialogue,
  not one speaker's monologue.
* **Video alignment.** Frames are buffered with their stream timestamps; an utterance gets the frames within
  ``[start - video_margin_s, end + video_margin_s]``. Containers interleave audio ahead of video, so a finished
  utterance waits until the video clock has passed its end (at most ``max_video_wait_s`` of audio).
* **Latency** is measured from the wall-clock arrival of the audio at ``end_s`` to the creation of the event; for a
  file read as fast as possible it is pure processing time, for live input it is what the user waits.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .events import (
    EMOTION_LABELS,
    MODALITIES,
    EmotionResult,
    ErrorEvent,
    Event,
    EventValidationError,
    Modalities,
    SentimentResult,
    SpeechStartedEvent,
    UtteranceEvent,
)
from .segmenter import ChannelSegmenter, SegmenterConfig, SpeechSegment, SpeechStart
from .sources import AudioChunk, Source, SourceError, SourceItem, VideoFrame

__all__ = ["AnalysisResult", "UtteranceAnalyzer", "StreamConfig", "StreamAnalyzer"]

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    """What an :class:`UtteranceAnalyzer` returns for one utterance (the model-side half of an event).

    ``emotion_probs`` must cover the 7 labels of :data:`streaming.events.EMOTION_LABELS`; ``alpha`` holds the 3
    gate weights in :data:`streaming.events.MODALITIES` order; ``modalities`` says which inputs carried data.
    ``timings_ms`` (optional): wall time per stage of this analysis (e.g. ``asr_encoder``, ``fusion``,
    ``llm_prefill``), for logs and benchmarks; it is not part of the event.
    """

    text: str
    language: str
    emotion: str
    emotion_probs: dict[str, float]
    sentiment_score: float
    sentiment_label: str
    alpha: list[float]
    modalities: dict[str, bool]
    timings_ms: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class UtteranceAnalyzer(Protocol):
    """The pluggable per-utterance step.

    ``new_conversation()`` makes the per-stream context object passed back to every ``analyze`` call of that
    stream (the analyzer owns its contents; the pipeline only keeps it). ``analyze`` gets the segment (16 kHz
    float32 audio with pre/post-roll, speaker, channel, span), the video frames inside the span (``None`` when the
    stream has no video; an empty list when it has video but no frame fell inside the span), and the conversation.
    ``version`` identifies the model/checkpoint in every event.
    """

    @property
    def version(self) -> str: ...

    def new_conversation(self) -> Any: ...

    def analyze(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                conversation: Any) -> AnalysisResult: ...


@dataclass
class StreamConfig:
    """Per-stream settings. ``stream_id`` defaults to a random 12-hex id. ``stereo_speakers``: treat the two
    channels of a stereo input as two speakers (channel diarization); otherwise a multi-channel input is averaged to
    mono. ``speakers``: names per channel (default "Speaker" for mono, "Speaker 1"/"Speaker 2" for stereo)."""

    stream_id: str | None = None
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    stereo_speakers: bool = False
    speakers: list[str] | None = None
    emit_speech_started: bool = True
    video_margin_s: float = 0.25
    max_video_wait_s: float = 1.0
    #: Frames older than this behind the audio clock are dropped even if an utterance is still open (bounded memory
    #: for a stream whose VAD never closes).
    max_video_buffer_s: float = 20.0


class StreamAnalyzer:
    """Analyze one stream. Use :meth:`run` with a :class:`~streaming.sources.Source`, or push items yourself with
    :meth:`process` and end with :meth:`finish` (the WebSocket service does the latter)."""

    def __init__(self, analyzer: UtteranceAnalyzer, config: StreamConfig | None = None, *,
                 has_video: bool | None = None):
        self.analyzer = analyzer
        self.config = config or StreamConfig()
        self.stream_id = self.config.stream_id or uuid.uuid4().hex[:12]
        self.config.segmenter.validate()
        self.has_video = bool(has_video)
        self.conversation = analyzer.new_conversation()
        self._segmenter: ChannelSegmenter | None = None
        self._pending: list[SpeechSegment] = []  # finished, waiting for their video frames
        self._out: list[Event] = []
        self._video: deque[VideoFrame] = deque()
        self._video_clock = -math.inf
        self._audio_clock = 0.0
        # Arrival wall time of audio: chunk end times (stream s) and monotonic clock, for latency.
        self._arr_t: list[float] = []
        self._arr_wall: list[float] = []
        self._next_utterance_id = 0
        self._source: Source | None = None
        self._finished = False
        self.latencies_ms: list[float] = []
        #: Wall time spent in the VAD segmenter so far (all chunks), for benchmarks.
        self.segmenter_ms = 0.0

    # ---------------------------------------------------------------------------------------------- set-up

    def _make_segmenter(self, channels: int) -> ChannelSegmenter:
        cfg = self.config
        n = channels if cfg.stereo_speakers else 1
        if cfg.stereo_speakers and channels < 2:
            raise SourceError("channel diarization (stereo speakers) needs a 2-channel input, got 1 channel",
                              field="stereo")
        speakers = cfg.speakers
        if speakers is not None and len(speakers) != n:
            raise ValueError(f"StreamConfig.speakers: need {n} name(s), got {len(speakers)}")
        return ChannelSegmenter(n, cfg.segmenter, speakers=speakers, on_speech_start=self._on_speech_start)

    def _on_speech_start(self, s: SpeechStart) -> None:
        if self.config.emit_speech_started:
            self._out.append(SpeechStartedEvent(self.stream_id, s.speaker, s.channel, _r(s.start_s)))

    # ---------------------------------------------------------------------------------------------- input

    def process(self, item: SourceItem) -> list[Event]:
        """Feed one source item; returns the events it completed (possibly none)."""
        if isinstance(item, AudioChunk):
            return self.process_audio(item)
        if isinstance(item, VideoFrame) or (isinstance(item, tuple) and len(item) == 2):
            return self.process_video(VideoFrame(float(item[0]), item[1]))
        raise TypeError(f"expected AudioChunk or VideoFrame, got {type(item).__name__}")

    def process_audio(self, chunk: AudioChunk) -> list[Event]:
        if self._finished:
            raise RuntimeError("stream already finished")
        x = chunk.samples
        if self._segmenter is None:
            self._segmenter = self._make_segmenter(chunk.channels)
        if x.ndim == 2 and self._segmenter.channels == 1:
            x = x.mean(axis=1, dtype=np.float32)  # no diarization: one mono stream
        self._arr_t.append(chunk.end_s)
        self._arr_wall.append(time.monotonic())
        self._audio_clock = max(self._audio_clock, chunk.end_s)
        t0 = time.perf_counter()
        self._pending.extend(self._segmenter.feed(x, chunk.start_s))
        self.segmenter_ms += (time.perf_counter() - t0) * 1000.0
        return self._drain()

    def process_video(self, frame: VideoFrame) -> list[Event]:
        if self._finished:
            raise RuntimeError("stream already finished")
        self.has_video = True
        self._video.append(frame)
        self._video_clock = max(self._video_clock, frame.t)
        return self._drain()

    def finish(self) -> list[Event]:
        """End of stream (or Ctrl-C): flush the utterance in progress and analyze everything still waiting."""
        if self._finished:
            return []
        self._finished = True
        if self._segmenter is not None:
            self._pending.extend(self._segmenter.flush())
        return self._drain(final=True)

    def run(self, source: Source) -> Iterator[Event]:
        """Open ``source``, yield events as they are produced, flush at the end. ``stop()`` (e.g. from a signal
        handler) ends the source, after which the utterance in progress is still analyzed and yielded."""
        self._source = source
        source.open()
        if self.config.stereo_speakers and source.channels < 2:
            source.close()
            raise SourceError(f"channel diarization (stereo speakers) needs a 2-channel input, {source.name} gives "
                              f"{source.channels}", field="stereo")
        self.has_video = self.has_video or source.has_video
        log.info("stream %s: %s (channels=%d, video=%s)", self.stream_id, source.name, source.channels,
                 self.has_video)
        items = iter(source)
        try:
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except SourceError as e:
                    # The input broke mid-stream (network drop, device unplugged): report it, keep what was heard.
                    yield ErrorEvent(self.stream_id, "source_error", e.message, e.field)
                    break
                yield from self.process(item)
        finally:
            source.close()
        yield from self.finish()

    def stop(self) -> None:
        """Ask the running source to stop (thread- and signal-safe)."""
        if self._source is not None:
            self._source.close()

    # ---------------------------------------------------------------------------------------------- output

    def _ready(self, seg: SpeechSegment) -> bool:
        if not self.has_video:
            return True
        need = seg.end_s + self.config.video_margin_s
        return self._video_clock >= need or self._audio_clock >= seg.end_s + self.config.max_video_wait_s

    def _drain(self, final: bool = False) -> list[Event]:
        while self._pending and (final or self._ready(self._pending[0])):
            self._emit(self._pending.pop(0))
        self._trim_buffers()
        out, self._out = self._out, []
        return out

    def _frames_for(self, seg: SpeechSegment) -> list[tuple[float, np.ndarray]] | None:
        if not self.has_video:
            return None
        lo = seg.start_s - self.config.video_margin_s
        hi = seg.end_s + self.config.video_margin_s
        return [(f.t, f.image) for f in self._video if lo <= f.t <= hi]

    def _arrival_wall(self, t: float) -> float | None:
        i = bisect.bisect_left(self._arr_t, t - 1e-9)
        return self._arr_wall[i] if i < len(self._arr_wall) else None

    def _emit(self, seg: SpeechSegment) -> None:
        frames = self._frames_for(seg)
        try:
            res = self.analyzer.analyze(seg, frames, self.conversation)
        except Exception as e:  # one bad utterance must not end a live stream
            log.error("stream %s: analysis of %.2f-%.2f s failed: %s: %s", self.stream_id, seg.start_s, seg.end_s,
                      type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
            self._out.append(ErrorEvent(self.stream_id, "analysis_failed",
                                        f"utterance {seg.start_s:.2f}-{seg.end_s:.2f} s ({seg.speaker}): "
                                        f"{type(e).__name__}: {e}"))
            return
        arrived = self._arrival_wall(seg.end_s)
        latency_ms = max(0.0, (time.monotonic() - arrived) * 1000.0) if arrived is not None else 0.0
        try:
            event = self._make_event(seg, res, latency_ms)
        except EventValidationError as e:
            log.error("stream %s: analyzer returned an invalid result: %s", self.stream_id, e)
            self._out.append(ErrorEvent(self.stream_id, "invalid_analysis", f"analyzer result: {e}", e.field))
            return
        self._next_utterance_id += 1
        self.latencies_ms.append(latency_ms)
        log.debug("stream %s: utterance %d %.2f-%.2f s %s latency %.0f ms%s", self.stream_id, event.utterance_id,
                  event.start, event.end, event.emotion.label, latency_ms,
                  "".join(f", {k} {v:.0f}" for k, v in (res.timings_ms or {}).items()))
        self._out.append(event)

    def _make_event(self, seg: SpeechSegment, res: AnalysisResult, latency_ms: float) -> UtteranceEvent:
        probs = res.emotion_probs
        if not isinstance(probs, dict):
            raise EventValidationError("emotion.probs", "analyzer must return a dict of probabilities")
        missing = [lab for lab in EMOTION_LABELS if lab not in probs]
        if missing:
            raise EventValidationError(f"emotion.probs.{missing[0]}", "analyzer gave no probability for this label")
        mods = res.modalities or {}
        return UtteranceEvent(
            stream_id=self.stream_id,
            utterance_id=self._next_utterance_id,
            speaker=seg.speaker,
            channel=seg.channel,
            start=_r(seg.start_s),
            end=_r(seg.end_s),
            text=str(res.text),
            language=str(res.language),
            emotion=EmotionResult(label=res.emotion, confidence=float(probs.get(res.emotion, 0.0)),
                                  probs={k: float(v) for k, v in probs.items()}),
            # Clip tiny float excursions (tanh in float32 can give 1.0000001).
            sentiment=SentimentResult(score=float(np.clip(res.sentiment_score, -1.0, 1.0)),
                                      label=res.sentiment_label),
            gate_alpha=tuple(float(a) for a in res.alpha),
            modalities=Modalities(**{m: bool(mods.get(m, False)) for m in MODALITIES}),
            latency_ms=round(latency_ms, 1),
            model_version=str(self.analyzer.version),
        )

    def _trim_buffers(self) -> None:
        # Video: keep what an utterance still to be analyzed could need.
        if self._video:
            horizon = self._audio_clock
            if self._segmenter is not None:
                horizon = min(horizon, self._segmenter.earliest_pending_start)
            if self._pending:
                horizon = min(horizon, min(s.start_s for s in self._pending))
            horizon = max(horizon - self.config.video_margin_s, self._audio_clock - self.config.max_video_buffer_s)
            while self._video and self._video[0].t < horizon:
                self._video.popleft()
        # Arrival times: keep those from the oldest end that may still be looked up.
        if len(self._arr_t) > 256:
            keep_from = self._audio_clock - 2 * (self.config.segmenter.max_utterance_s + 5.0)
            i = bisect.bisect_left(self._arr_t, keep_from)
            if i > 128:
                del self._arr_t[:i]
                del self._arr_wall[:i]

    @property
    def utterance_count(self) -> int:
        return self._next_utterance_id


def _r(t: float) -> float:
    """Stream times to the microsecond: frame arithmetic leaves float noise (2.0100000000000002) in the JSON."""
    return round(float(t), 6)

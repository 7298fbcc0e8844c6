"""One stream: source -> segmenter -> per-utterance analysis -> events (:class:`StreamAnalyzer`).

The stream's bookkeeping: feeding the segmenter, ordering, buffering video frames and aligning them with utterances,
latency accounting, error events. The design choices are in the package docstring (:mod:`streaming.pipeline`); the
analyzer's contract is in :mod:`~streaming.pipeline.contract`, the speculative analysis in
:mod:`~streaming.pipeline.speculation`, the result -> event conversion in :mod:`~streaming.pipeline.utterance_event`.
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

import numpy as np

from egmf_core.features.segmenter import ChannelSegmenter, SegmenterConfig, SpeechSegment, SpeechStart

from ..events import ErrorEvent, Event, SpeechStartedEvent
from ..sources import AudioChunk, Source, SourceError, SourceItem, VideoFrame
from .contract import SpeculativeAnalyzer, UtteranceAnalyzer
from .speculation import Speculator
from .utterance_event import make_utterance_event, stream_time

__all__ = ["StreamConfig", "StreamAnalyzer"]

log = logging.getLogger("streaming.pipeline")  # the name it had before the pipeline became a package


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
    #: Analyze a tentative end of utterance during the VAD's hangover (see the module docstring): events come
    #: ``hangover_ms - post_roll_ms`` sooner, at the cost of analysis started for pauses that turn out to be
    #: mid-utterance (cancelled after the recognizer at the latest). Only with a :class:`SpeculativeAnalyzer`.
    #: Off for input read faster than real time, where waiting costs nothing and wasted work does.
    speculative: bool = True


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
        self._speculative = self.config.speculative and isinstance(analyzer, SpeculativeAnalyzer)
        # used only when self._speculative (then the analyzer is a SpeculativeAnalyzer)
        self._speculator = Speculator(analyzer, self.stream_id)  # type: ignore[arg-type]
        #: Speculative analyses started, used for the event, and discarded (speech resumed or the end differed).
        self.speculation = self._speculator.counts

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
            self._out.append(SpeechStartedEvent(self.stream_id, s.speaker, s.channel, stream_time(s.start_s)))

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
        out = self._drain()
        self._speculate()
        return out

    def process_video(self, frame: VideoFrame) -> list[Event]:
        if self._finished:
            raise RuntimeError("stream already finished")
        self.has_video = True
        self._video.append(frame)
        self._video_clock = max(self._video_clock, frame.t)
        out = self._drain()
        self._speculate()
        return out

    def finish(self) -> list[Event]:
        """End of stream (or Ctrl-C): flush the utterance in progress and analyze everything still waiting."""
        if self._finished:
            return []
        self._finished = True
        if self._segmenter is not None:
            self._pending.extend(self._segmenter.flush())
        out = self._drain(final=True)
        self._speculator.close()
        return out

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

    # ---------------------------------------------------------------------------------------------- speculation

    def _speculate(self) -> None:
        """Start analyzing the segmenter's tentative end of utterance, or drop a speculation that no longer holds."""
        if not self._speculative or self._segmenter is None:
            return
        t = self._segmenter.tentative
        if self._speculator.holds(t):
            return
        self._speculator.drop()  # speech resumed (nothing to drop if none runs)
        if t is None or self._pending:
            return
        if self.has_video and self._video_clock < t.end_s + self.config.video_margin_s:
            return  # its frames are not all here yet: try again with the next item
        self._speculator.start(t, self._frames_for(t), self.conversation)

    # ---------------------------------------------------------------------------------------------- events

    def _emit(self, seg: SpeechSegment) -> None:
        frames = self._frames_for(seg)
        try:
            res = self._speculator.result_for(seg, frames, self.conversation) if self._speculative else None
            if res is None:
                res = self.analyzer.analyze(seg, frames, self.conversation)
        except Exception as e:  # one bad utterance must not end a live stream
            log.error("stream %s: analysis of %.2f-%.2f s failed: %s: %s", self.stream_id, seg.start_s, seg.end_s,
                      type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
            self._out.append(ErrorEvent(self.stream_id, "analysis_failed",
                                        f"utterance ({seg.speaker}): {type(e).__name__}: {e}",
                                        start=stream_time(seg.start_s), end=stream_time(seg.end_s)))
            return
        arrived = self._arrival_wall(seg.end_s)
        latency_ms = max(0.0, (time.monotonic() - arrived) * 1000.0) if arrived is not None else 0.0
        try:
            event = make_utterance_event(self.stream_id, self._next_utterance_id, seg, res, latency_ms,
                                         self.analyzer.version)
        except (TypeError, ValueError) as e:  # EventValidationError, or a malformed value: fails its utterance alone
            log.error("stream %s: analyzer returned an invalid result for %.2f-%.2f s: %s", self.stream_id,
                      seg.start_s, seg.end_s, e)
            self._out.append(ErrorEvent(self.stream_id, "invalid_analysis",
                                        f"utterance ({seg.speaker}): analyzer result: {e}",
                                        getattr(e, "field", None), start=stream_time(seg.start_s),
                                        end=stream_time(seg.end_s)))
            return
        self._next_utterance_id += 1
        self.latencies_ms.append(latency_ms)
        log.debug("stream %s: utterance %d %.2f-%.2f s %s latency %.0f ms%s", self.stream_id, event.utterance_id,
                  event.start, event.end, event.emotion.label, latency_ms,
                  "".join(f", {k} {v:.0f}" for k, v in (res.timings_ms or {}).items()))
        self._out.append(event)

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


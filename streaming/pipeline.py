"""Source -> segmenter -> per-utterance analysis -> events.

:class:`StreamAnalyzer` is model-agnostic: the per-utterance work sits behind the small :class:`UtteranceAnalyzer`
protocol (the EGMF implementation is :class:`streaming.analyzer.EGMFUtteranceAnalyzer`), so that segmentation,
ordering, video alignment, latency accounting and the event schema are the same whatever model is plugged in.

Design choices:

* **Synchronous.** Analysis runs in the caller's thread, between chunks (a speculative one, below, on one worker
  thread whose result the caller's thread collects). Events come out in a deterministic order, nothing runs on
  after Ctrl-C but a cancelled speculation's current stage, and the sources already buffer input while an
  utterance is analyzed (the microphone callback queue, the push queue; a paced file catches up). Analysis of one
  utterance takes ~0.8 s on the 2-core CPU (``benchmarks/results/streaming_latency.md``), so the stream keeps up as
  long as an utterance plus the pause after it last longer than that; a backlog is worked off in the next pauses.
* **One conversation per stream**, shared by all channels/speakers, because the model's context is the dialogue,
  not one speaker's monologue.
* **Video alignment.** Frames are buffered with their stream timestamps; an utterance gets the frames within
  ``[start - video_margin_s, end + video_margin_s]``. Containers interleave audio ahead of video, so a finished
  utterance waits until the video clock has passed its end (at most ``max_video_wait_s`` of audio).
* **Speculative end of utterance.** The VAD declares an end only after ``hangover_ms`` (300 ms) of non-speech, but
  the utterance's audio is complete ``post_roll_ms`` (60 ms) after its last voiced frame
  (:attr:`~egmf_core.features.segmenter.ChannelSegmenter.tentative`). With an analyzer that can analyze without
  committing the turn to the conversation (:class:`SpeculativeAnalyzer`), that tentative utterance is analyzed on a
  worker thread during the rest of the hangover. If the utterance ends there, the result is used and committed (it is
  the same segment, frames and context, so the same result, 240 ms sooner); if speech resumes, the analysis is
  cancelled at its next stage boundary and discarded. One analysis runs at a time per stream, so events keep their
  order and the context is always the one the utterance would have seen.
* **Latency** is measured from the wall-clock arrival of the audio at ``end_s`` to the creation of the event; for a
  file read as fast as possible it is pure processing time, for live input it is what the user waits.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
from egmf_core.features.segmenter import ChannelSegmenter, SegmenterConfig, SpeechSegment, SpeechStart
from .sources import AudioChunk, Source, SourceError, SourceItem, VideoFrame

__all__ = ["AnalysisResult", "AnalysisCancelled", "check_cancelled", "analyze_and_commit", "UtteranceAnalyzer",
           "SpeculativeAnalyzer", "StreamConfig", "StreamAnalyzer"]

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    """What an :class:`UtteranceAnalyzer` returns for one utterance (the model-side half of an event).

    ``emotion_probs`` must cover the 7 labels of :data:`streaming.events.EMOTION_LABELS`; ``alpha`` holds the 3
    gate weights in :data:`streaming.events.MODALITIES` order; ``modalities`` says which inputs carried data.
    ``timings_ms`` (optional): wall time per stage of this analysis (e.g. ``asr_encoder``, ``fusion``,
    ``llm_prefill``), for logs and benchmarks; it is not part of the event, nor is ``prompt_tokens`` (optional: how
    many prompt ids came from the model's KV cache and how many its prompt pass encoded). ``pending``: for a result of
    :meth:`SpeculativeAnalyzer.analyze_uncommitted`, what its ``commit`` needs (opaque to the pipeline).
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
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    pending: Any = field(default=None, repr=False)


class AnalysisCancelled(Exception):
    """Raised by :meth:`SpeculativeAnalyzer.analyze_uncommitted` when its ``cancel`` event was set."""


def check_cancelled(cancel: threading.Event | None) -> None:
    """For analyzers: raise :class:`AnalysisCancelled` if ``cancel`` is set (call it between stages)."""
    if cancel is not None and cancel.is_set():
        raise AnalysisCancelled("speech resumed")


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


@runtime_checkable
class SpeculativeAnalyzer(UtteranceAnalyzer, Protocol):
    """An analyzer that can also analyze an utterance without adding it to the conversation, so that the pipeline
    can start on a tentative end of utterance and keep the result only if the utterance really ends there.

    ``analyze_uncommitted`` does what ``analyze`` does except the final append to ``conversation``; it may be called
    from a worker thread, checks ``cancel`` between its stages and raises :class:`AnalysisCancelled` when it is set.
    ``commit`` adds the result's turn to the conversation and returns True, or returns False (and changes nothing)
    when the conversation changed since the result's context was taken.
    """

    def analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                            conversation: Any, cancel: threading.Event) -> AnalysisResult: ...

    def commit(self, conversation: Any, result: AnalysisResult) -> bool: ...


def analyze_and_commit(analyzer: SpeculativeAnalyzer, segment: SpeechSegment,
                       video: list[tuple[float, np.ndarray]] | None, conversation: Any) -> AnalysisResult:
    """``analyze`` for a :class:`SpeculativeAnalyzer`: analyze, then add the turn to the conversation."""
    result = analyzer.analyze_uncommitted(segment, video, conversation, None)
    if not analyzer.commit(conversation, result):
        raise RuntimeError("the conversation changed during the analysis: analyze one stream's utterances in order")
    return result


@dataclass
class _Speculation:
    """A running analysis of a tentative end of utterance."""

    segment: SpeechSegment
    frame_times: tuple[float, ...] | None
    future: Future
    cancel: threading.Event


def _same_segment(a: SpeechSegment, b: SpeechSegment) -> bool:
    return (a.channel == b.channel and a.start_s == b.start_s and a.end_s == b.end_s and not a.split and not b.split
            and a.audio_start_s == b.audio_start_s and len(a.audio) == len(b.audio))


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
        self._spec: _Speculation | None = None
        self._last_future: Future | None = None  # the last analysis handed to the worker (it runs them in order)
        self._executor: ThreadPoolExecutor | None = None
        #: Speculative analyses started, used for the event, and discarded (speech resumed or the end differed).
        self.speculation = {"started": 0, "used": 0, "discarded": 0}

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
        self._drop_speculation()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
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
        if self._spec is not None:
            if t is not None and _same_segment(self._spec.segment, t):
                return
            self._drop_speculation()  # speech resumed
        if t is None or self._pending:
            return
        if self.has_video and self._video_clock < t.end_s + self.config.video_margin_s:
            return  # its frames are not all here yet: try again with the next item
        frames = self._frames_for(t)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"speculate-{self.stream_id}")
        cancel = threading.Event()
        future = self._executor.submit(self.analyzer.analyze_uncommitted, t, frames,  # type: ignore[attr-defined]
                                       self.conversation, cancel)
        self._spec = _Speculation(t, _frame_times(frames), future, cancel)
        self._last_future = future
        self.speculation["started"] += 1

    def _drop_speculation(self) -> None:
        if self._spec is not None:
            self._spec.cancel.set()  # a cancelled analysis stops at its next stage (or before its first)
            self._spec = None
            self.speculation["discarded"] += 1

    def _speculative_result(self, seg: SpeechSegment, frames: list | None) -> AnalysisResult | None:
        """The speculation's result if it analyzed exactly this segment with these frames and its context is still
        the conversation's (then committed), else None. Either way no other analysis is running afterwards."""
        spec = self._spec
        if spec is None or not _same_segment(spec.segment, seg) or spec.frame_times != _frame_times(frames):
            self._drop_speculation()
            if self._last_future is not None:
                _wait_quietly(self._last_future)  # the worker is idle once its last task is done
            return None
        self._spec = None
        try:
            res = spec.future.result()
        except Exception as e:  # analyzed again below, in the caller's thread, where errors become error events
            log.debug("stream %s: speculative analysis failed (%s: %s)", self.stream_id, type(e).__name__, e)
            self.speculation["discarded"] += 1
            return None
        if not self.analyzer.commit(self.conversation, res):  # type: ignore[attr-defined]
            self.speculation["discarded"] += 1
            return None
        self.speculation["used"] += 1
        return res

    # ---------------------------------------------------------------------------------------------- events

    def _emit(self, seg: SpeechSegment) -> None:
        frames = self._frames_for(seg)
        try:
            res = self._speculative_result(seg, frames) if self._speculative else None
            if res is None:
                res = self.analyzer.analyze(seg, frames, self.conversation)
        except Exception as e:  # one bad utterance must not end a live stream
            log.error("stream %s: analysis of %.2f-%.2f s failed: %s: %s", self.stream_id, seg.start_s, seg.end_s,
                      type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
            self._out.append(ErrorEvent(self.stream_id, "analysis_failed",
                                        f"utterance ({seg.speaker}): {type(e).__name__}: {e}",
                                        start=_r(seg.start_s), end=_r(seg.end_s)))
            return
        arrived = self._arrival_wall(seg.end_s)
        latency_ms = max(0.0, (time.monotonic() - arrived) * 1000.0) if arrived is not None else 0.0
        try:
            event = self._make_event(seg, res, latency_ms)
        except (TypeError, ValueError) as e:  # EventValidationError, or a malformed value: fails its utterance alone
            log.error("stream %s: analyzer returned an invalid result for %.2f-%.2f s: %s", self.stream_id,
                      seg.start_s, seg.end_s, e)
            self._out.append(ErrorEvent(self.stream_id, "invalid_analysis",
                                        f"utterance ({seg.speaker}): analyzer result: {e}",
                                        getattr(e, "field", None), start=_r(seg.start_s), end=_r(seg.end_s)))
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
            # the schema checks the values (numbers in [0, 1]) and makes them floats
            emotion=EmotionResult(label=res.emotion, confidence=probs.get(res.emotion, 0.0), probs=dict(probs)),
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


def _frame_times(frames: list[tuple[float, np.ndarray]] | None) -> tuple[float, ...] | None:
    return None if frames is None else tuple(t for t, _ in frames)


def _wait_quietly(future: Future) -> None:
    """Wait for a cancelled speculation to stop; its outcome (usually AnalysisCancelled) no longer matters."""
    try:
        future.result()
    except Exception:
        pass


def _r(t: float) -> float:
    """Stream times to the microsecond: frame arithmetic leaves float noise (2.0100000000000002) in the JSON."""
    return round(float(t), 6)

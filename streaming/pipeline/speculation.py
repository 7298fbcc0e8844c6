"""Speculative end of utterance: one stream's analysis of a tentative utterance on a worker thread.

The VAD declares an end only after its hangover, but the utterance's audio is complete a post-roll after the last
voiced frame (:attr:`~egmf_core.features.segmenter.ChannelSegmenter.tentative`). :class:`Speculator` analyzes that
tentative utterance with :meth:`~streaming.pipeline.contract.SpeculativeAnalyzer.analyze_uncommitted` during the rest
of the hangover, and hands the result over only for the very segment (and frames) that then ends, committing it to
the conversation; otherwise the analysis is cancelled and discarded. Apart from
:class:`~streaming.pipeline.stream.StreamAnalyzer` because the thread, the cancellation and the counts are a concern
of their own; the stream decides when to start and drop.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from egmf_core.features.segmenter import SpeechSegment

from .contract import AnalysisResult, SpeculativeAnalyzer

__all__ = ["Speculation", "Speculator", "same_segment", "frame_times"]

log = logging.getLogger("streaming.pipeline")  # the stream's logger, as before the pipeline was a package


@dataclass
class Speculation:
    """A running analysis of a tentative end of utterance."""

    segment: SpeechSegment
    frame_times: tuple[float, ...] | None
    future: Future
    cancel: threading.Event


def same_segment(a: SpeechSegment, b: SpeechSegment) -> bool:
    """Whether two segments are the same utterance with the same audio (a speculation's result holds for both)."""
    return (a.channel == b.channel and a.start_s == b.start_s and a.end_s == b.end_s and not a.split and not b.split
            and a.audio_start_s == b.audio_start_s and len(a.audio) == len(b.audio))


def frame_times(frames: list[tuple[float, np.ndarray]] | None) -> tuple[float, ...] | None:
    """The timestamps of an utterance's frames (``None`` without video), to compare two frame selections."""
    return None if frames is None else tuple(t for t, _ in frames)


def wait_quietly(future: Future) -> None:
    """Wait for a cancelled speculation to stop; its outcome (usually AnalysisCancelled) no longer matters."""
    try:
        future.result()
    except Exception:
        pass


class Speculator:
    """One stream's speculative analyses: at most one running, on one worker thread (started on first use), so
    analyses run in order and the context is always the one the utterance would have seen. ``counts``: speculative
    analyses started, used for the event, and discarded (speech resumed or the end differed)."""

    def __init__(self, analyzer: SpeculativeAnalyzer, stream_id: str):
        self.analyzer = analyzer
        self.stream_id = stream_id
        self.running: Speculation | None = None
        self._last_future: Future | None = None  # the last analysis handed to the worker (it runs them in order)
        self._executor: ThreadPoolExecutor | None = None
        self.counts = {"started": 0, "used": 0, "discarded": 0}

    def holds(self, segment: SpeechSegment | None) -> bool:
        """Whether the running speculation analyzes ``segment``."""
        return segment is not None and self.running is not None and same_segment(self.running.segment, segment)

    def start(self, segment: SpeechSegment, frames: list[tuple[float, np.ndarray]] | None, conversation: Any) -> None:
        """Start analyzing ``segment`` with ``frames`` in ``conversation``'s context, without committing it."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"speculate-{self.stream_id}")
        cancel = threading.Event()
        future = self._executor.submit(self.analyzer.analyze_uncommitted, segment, frames, conversation, cancel)
        self.running = Speculation(segment, frame_times(frames), future, cancel)
        self._last_future = future
        self.counts["started"] += 1

    def drop(self) -> None:
        """Cancel the running speculation, if any."""
        if self.running is not None:
            self.running.cancel.set()  # a cancelled analysis stops at its next stage (or before its first)
            self.running = None
            self.counts["discarded"] += 1

    def result_for(self, seg: SpeechSegment, frames: list | None, conversation: Any) -> AnalysisResult | None:
        """The speculation's result if it analyzed exactly this segment with these frames and its context is still
        the conversation's (then committed), else None. Either way no other analysis is running afterwards."""
        spec = self.running
        if spec is None or not same_segment(spec.segment, seg) or spec.frame_times != frame_times(frames):
            self.drop()
            if self._last_future is not None:
                wait_quietly(self._last_future)  # the worker is idle once its last task is done
            return None
        self.running = None
        try:
            res = spec.future.result()
        except Exception as e:  # analyzed again by the stream, in its thread, where errors become error events
            log.debug("stream %s: speculative analysis failed (%s: %s)", self.stream_id, type(e).__name__, e)
            self.counts["discarded"] += 1
            return None
        if not self.analyzer.commit(conversation, res):
            self.counts["discarded"] += 1
            return None
        self.counts["used"] += 1
        return res

    def close(self) -> None:
        """End of stream: cancel the running speculation and let the worker thread go."""
        self.drop()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

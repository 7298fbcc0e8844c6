"""The bound on a stream's audio waiting for its analyzer, counted in seconds of audio.

:class:`AudioBudget` is shared by the stream's producer (:class:`~deploy.protocol.stream_input.StreamInput`, which
waits for room) and its consumer (:class:`MeteredSource`, the analyzer's view of the stream's
:class:`~streaming.sources.PushSource`, which frees it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from deploy.protocol.framing import FrameError
from streaming.sources import AudioChunk, PushSource, Source, SourceItem

__all__ = ["AudioBudget", "MeteredSource"]


class AudioBudget:
    """How many seconds of a stream's audio may wait for its analyzer (``max_buffered_audio_s``).

    Memory per stream is bounded in seconds of audio, not in queued messages: a message may hold 1 sample or
    1 MiB, so an item count bounds nothing. The producer (:class:`StreamInput`, on a worker thread) waits for room
    before pushing; the consumer (:class:`MeteredSource`, the stream's analyzer) frees it as it reads. ``close``
    wakes a waiting producer, so a stream whose analyzer has stopped never holds a thread for ``push_timeout_s``.
    """

    def __init__(self, max_s: float):
        if not max_s > 0:
            raise ValueError(f"AudioBudget.max_s must be > 0, got {max_s}")
        self.max_s = max_s
        self._pushed_s = 0.0
        self._consumed_s = 0.0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def buffered_s(self) -> float:
        with self._cond:
            return self._pushed_s - self._consumed_s

    def wait_room(self, seconds: float, timeout: float) -> None:
        """Wait until ``seconds`` more fit (or nothing is buffered: a message longer than the budget still passes
        alone). Raises :class:`FrameError` after ``timeout`` or once closed."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._closed or self._pushed_s - self._consumed_s <= 0
                                     or self._pushed_s - self._consumed_s + seconds <= self.max_s, timeout)
            if self._closed:
                raise FrameError("stream_closed", "audio", "the stream's analysis has stopped")
            if not ok:
                raise FrameError("invalid_audio", "audio",
                                 f"the analyzer is falling behind: {self._pushed_s - self._consumed_s:.1f} s of audio "
                                 f"are waiting (max_buffered_audio_s {self.max_s:g} s) and none was taken within "
                                 f"{timeout:g} s")

    def added(self, seconds: float) -> None:
        with self._cond:
            self._pushed_s += seconds

    def consumed(self, until_s: float) -> None:
        with self._cond:
            self._consumed_s = max(self._consumed_s, until_s)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class MeteredSource(Source):
    """A :class:`PushSource` read by the analyzer, returning each audio chunk's seconds to the stream's
    :class:`AudioBudget` as it is taken."""

    def __init__(self, inner: PushSource, budget: AudioBudget):
        self.inner = inner
        self.budget = budget
        self.sample_rate = inner.sample_rate
        self.channels = inner.channels
        self.has_video = inner.has_video
        self.name = inner.name

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.budget.close()
        self.inner.close()

    def __iter__(self) -> Iterator[SourceItem]:
        for item in self.inner:
            if isinstance(item, AudioChunk):
                self.budget.consumed(item.end_s)
            yield item

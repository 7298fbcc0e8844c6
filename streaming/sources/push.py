"""Audio (and optionally video) pushed by a caller (:class:`PushSource`): the WebSocket service feeds each stream's
PCM (in the wire format of :mod:`streaming.sources.pcm`) and decoded frames into one, and iterating it gives the
pipeline's items.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator

import numpy as np

from .base import SAMPLE_RATE, AudioChunk, Source, SourceError, SourceItem, StreamResampler, VideoFrame
from .pcm import MAX_PCM_RATE, MIN_PCM_RATE, decode_pcm, to_float32


class PushSource(Source):
    """Audio (and optionally video) pushed by a caller, e.g. the WebSocket handler, consumed by iteration.

    ``push_audio`` takes int16 or float32 PCM as bytes (``dtype`` required) or as an array, ``(n,)`` or
    ``(n, channels)``, at ``sample_rate`` (resampled to 16 kHz if different). Stream time counts pushed samples.
    ``push_video(t, rgb)`` adds a frame at ``t`` stream seconds. ``end()`` ends the stream after what was pushed.
    Pushing blocks when ``max_queue`` items are waiting, which gives the producer back-pressure instead of growing
    memory without bound.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, channels: int = 1, *, has_video: bool = False,
                 max_queue: int = 4096, name: str = "push"):
        if channels not in (1, 2):
            raise SourceError(f"channels must be 1 or 2, got {channels}", field="channels")
        if not (isinstance(sample_rate, int) and MIN_PCM_RATE <= sample_rate <= MAX_PCM_RATE):
            raise SourceError(f"sample_rate must be an integer between {MIN_PCM_RATE} and {MAX_PCM_RATE} Hz, got "
                              f"{sample_rate!r}", field="sample_rate")
        self.input_rate = sample_rate
        self.channels = channels
        self.has_video = has_video
        self.name = name
        self._queue: queue.Queue[SourceItem | None] = queue.Queue(maxsize=max_queue)
        self._resampler = StreamResampler(sample_rate, channels) if sample_rate != SAMPLE_RATE else None
        self._n_out = 0
        self._ended = False
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def open(self) -> None:  # nothing to acquire
        return None

    def push_audio(self, data: bytes | bytearray | memoryview | np.ndarray, dtype: str | None = None,
                   timeout: float | None = None) -> None:
        """Add PCM. Raises :class:`SourceError` (``field="audio"``) for malformed data or after ``end()``."""
        if self._ended:
            raise SourceError("audio pushed after the end of the stream", field="audio")
        if isinstance(data, (bytes, bytearray, memoryview)):
            arr = decode_pcm(data, dtype, self.channels)
        elif isinstance(data, np.ndarray):
            arr = data
            if dtype is not None and np.dtype(dtype) != arr.dtype:
                arr = arr.astype(dtype)
            want = "(n,)" if self.channels == 1 else f"(n, {self.channels})"
            ok = arr.ndim == 1 if self.channels == 1 else (arr.ndim == 2 and arr.shape[1] == self.channels)
            if self.channels == 1 and arr.ndim == 2 and arr.shape[1] == 1:
                arr, ok = arr[:, 0], True
            if not ok:
                raise SourceError(f"audio array must have shape {want}, got {arr.shape}", field="audio")
        else:
            raise SourceError(f"audio must be bytes or a numpy array, got {type(data).__name__}", field="audio")
        x = to_float32(arr, "audio")
        with self._lock:  # the resampler and the sample counter are stateful
            if self._resampler is not None:
                x = self._resampler.process(x)
            if not len(x):
                return
            chunk = AudioChunk(self._n_out / SAMPLE_RATE, np.ascontiguousarray(x))
            self._n_out += len(x)
            self._put(chunk, timeout)

    def push_video(self, t: float, image: np.ndarray, timeout: float | None = None) -> None:
        """Add one RGB uint8 ``(H, W, 3)`` frame at ``t`` seconds of stream time."""
        if self._ended:
            raise SourceError("video pushed after the end of the stream", field="video")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise SourceError(f"video timestamp must be a finite number >= 0, got {t!r}", field="video.t")
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise SourceError(f"video frame must be an RGB uint8 array (H, W, 3), got {desc}", field="video.image")
        self.has_video = True
        self._put(VideoFrame(float(t), image), timeout)

    def _put(self, item: SourceItem | None, timeout: float | None) -> None:
        try:
            self._queue.put(item, timeout=timeout)
        except queue.Full:
            raise SourceError("the analyzer is falling behind: input queue full", field="audio") from None

    def end(self) -> None:
        """No more input: iteration ends once the queued items are consumed."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if self._resampler is not None:
                tail = self._resampler.flush()
                if len(tail):
                    self._queue.put(AudioChunk(self._n_out / SAMPLE_RATE, tail))
                    self._n_out += len(tail)
        self._queue.put(None)

    def close(self) -> None:
        """Stop now, dropping what is queued."""
        self._closed.set()
        self._ended = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def __iter__(self) -> Iterator[SourceItem]:
        while not self._closed.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                break
            yield item

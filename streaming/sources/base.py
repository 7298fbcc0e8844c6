"""What every source shares: the items a source yields (:class:`AudioChunk`, :class:`VideoFrame`), the
:class:`Source` interface, :class:`SourceError` and the pipeline's sample rate, plus the incremental resampler the
microphone and the push source use for input at another rate. Imports only numpy (PyAV when a resampler is made), so
each adapter's own dependency stays in its module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np

#: The sample rate of everything downstream (webrtcvad and Whisper both want 16 kHz).
SAMPLE_RATE = 16000


class SourceError(Exception):
    """An input cannot be used. ``str(err)`` is one human-readable line; ``field`` names the input at fault
    (``"device"``, ``"file"``, ``"url"``, ``"audio"``, ``"video"``, ``"stereo"``...)."""

    def __init__(self, message: str, *, field: str | None = None):
        # Keep it to one line: FFmpeg and PortAudio messages sometimes carry newlines.
        message = " ".join(str(message).split())
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class AudioChunk:
    """``samples`` (float32 in [-1, 1]) starting at ``start_s`` seconds of stream time."""

    start_s: float
    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else int(self.samples.shape[1])

    @property
    def end_s(self) -> float:
        return self.start_s + self.n_samples / self.sample_rate


class VideoFrame(NamedTuple):
    """One video frame: ``t`` in stream seconds, ``image`` RGB uint8 ``(H, W, 3)``. Unpacks as ``(t, image)``."""

    t: float
    image: np.ndarray


SourceItem = Union[AudioChunk, VideoFrame]


class Source(ABC):
    """A stream of :class:`AudioChunk` and :class:`VideoFrame` items in arrival order.

    ``open()`` acquires the device/file and raises :class:`SourceError` for unusable input; iterating opens the
    source if needed. ``close()`` may be called from another thread (or a signal handler) to stop a blocking
    iteration; the iteration then ends after the current item.
    """

    sample_rate: int = SAMPLE_RATE
    #: Number of audio channels of the yielded chunks (1, or 2 with channel diarization).
    channels: int = 1
    #: Whether :class:`VideoFrame` items can appear.
    has_video: bool = False
    #: A short human-readable description for logs.
    name: str = "source"

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def __iter__(self) -> Iterator[SourceItem]: ...

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------- resampling


class StreamResampler:
    """Incremental resampler for raw numpy PCM at an arbitrary rate -> float32 at 16 kHz (FFmpeg's swresample via
    PyAV, which keeps filter state across chunks so chunk boundaries leave no clicks)."""

    def __init__(self, in_rate: int, channels: int, out_rate: int = SAMPLE_RATE):
        import av

        self.in_rate = int(in_rate)
        self.channels = int(channels)
        self._layout = "mono" if channels == 1 else "stereo"
        self._resampler = av.AudioResampler(format="flt", layout=self._layout, rate=out_rate)
        self._av = av

    def _collect(self, frames: list) -> np.ndarray:
        if not frames:
            return np.zeros((0,) if self.channels == 1 else (0, self.channels), np.float32)
        data = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)
        return data if self.channels == 1 else data.reshape(-1, self.channels)

    def process(self, x: np.ndarray) -> np.ndarray:
        """``x``: float32 ``(n,)`` or ``(n, channels)`` -> resampled float32 of the same layout."""
        packed = np.ascontiguousarray(x, dtype=np.float32).reshape(1, -1)
        frame = self._av.AudioFrame.from_ndarray(packed, format="flt", layout=self._layout)
        frame.sample_rate = self.in_rate
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        return self._collect(self._resampler.resample(None))

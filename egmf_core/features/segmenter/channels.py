"""Channel diarization: one VAD segmenter per channel, segments released in conversation order.

:class:`ChannelSegmenter` runs one :class:`VADSegmenter` per channel (call-center stereo: one speaker per channel)
and releases segments ordered by start time, holding a finished segment back only while another channel has an
utterance in progress that started earlier. Overlapping speech on two channels gives two overlapping segments.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

from egmf_core.features.segmenter.config import SegmenterConfig
from egmf_core.features.segmenter.segments import SpeechSegment, SpeechStartCallback
from egmf_core.features.segmenter.vad import VADSegmenter

__all__ = ["ChannelSegmenter"]


class ChannelSegmenter:
    """Channel diarization: one :class:`VADSegmenter` per channel, one speaker per channel.

    ``feed()`` takes ``(n,)`` (one channel) or ``(n, channels)`` chunks and returns segments ordered by start time.
    A segment is released once no other channel can still produce one that starts earlier (see
    :attr:`VADSegmenter.earliest_pending_start`), so the event order is the conversation order even when one
    speaker's long turn ends after the other speaker's short reply.
    """

    def __init__(self, channels: int = 1, config: SegmenterConfig | None = None, *,
                 speakers: Sequence[str] | None = None, on_speech_start: SpeechStartCallback | None = None):
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if speakers is None:
            speakers = ["Speaker"] if channels == 1 else [f"Speaker {i + 1}" for i in range(channels)]
        if len(speakers) != channels:
            raise ValueError(f"need one speaker name per channel ({channels}), got {len(speakers)}")
        self.channels = channels
        self.speakers = list(speakers)
        self.segmenters = [VADSegmenter(config, channel=i, speaker=self.speakers[i], on_speech_start=on_speech_start)
                           for i in range(channels)]
        self._held: list[tuple[float, int, int, SpeechSegment]] = []
        self._seq = 0

    @property
    def in_speech(self) -> bool:
        return any(s.in_speech for s in self.segmenters)

    @property
    def earliest_pending_start(self) -> float:
        return min(s.earliest_pending_start for s in self.segmenters)

    @property
    def tentative(self) -> SpeechSegment | None:
        """The segment that :meth:`feed` would return next if the utterance in progress on some channel ended now
        (its tentative end, see :attr:`VADSegmenter.tentative`), or None: it must start before every held segment
        and before anything another channel could still produce."""
        held = self._held[0][0] if self._held else math.inf
        best = None
        for i, seg in enumerate(self.segmenters):
            t = seg.tentative
            if t is None or (best is not None and t.start_s >= best.start_s):
                continue
            others = [s.earliest_pending_start for j, s in enumerate(self.segmenters) if j != i]
            if t.start_s < held and t.start_s <= min(others, default=math.inf):
                best = t
        return best

    def _hold(self, segs: list[SpeechSegment]) -> None:
        for s in segs:
            heapq.heappush(self._held, (s.start_s, s.channel, self._seq, s))
            self._seq += 1

    def _release(self, everything: bool = False) -> list[SpeechSegment]:
        bound = math.inf if everything else self.earliest_pending_start
        out = []
        while self._held and self._held[0][0] <= bound:
            out.append(heapq.heappop(self._held)[3])
        return out

    def feed(self, chunk: np.ndarray, start_s: float | None = None) -> list[SpeechSegment]:
        x = np.asarray(chunk)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected chunks of shape (n, {self.channels}), got {np.asarray(chunk).shape}")
        for c, seg in enumerate(self.segmenters):
            self._hold(seg.feed(np.ascontiguousarray(x[:, c]), start_s))
        return self._release()

    def flush(self) -> list[SpeechSegment]:
        for seg in self.segmenters:
            self._hold(seg.flush())
        return self._release(everything=True)

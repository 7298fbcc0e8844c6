"""What the VAD segmenter produces: utterances (:class:`SpeechSegment`) and speech starts (:class:`SpeechStart`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["SpeechSegment", "SpeechStart", "SpeechStartCallback"]


@dataclass(frozen=True)
class SpeechSegment:
    """One utterance.

    ``start_s``/``end_s``: the detected speech span in stream seconds (frame-exact: multiples of the frame length
    after the stream origin, or the split point). ``audio``: float32 mono samples from ``audio_start_s`` (pre-roll
    before ``start_s``) to ``audio_end_s`` (post-roll after ``end_s``). ``split``: this segment was cut at the
    maximum length and the turn continues in the next segment of the same channel.
    """

    start_s: float
    end_s: float
    audio: np.ndarray
    channel: int = 0
    speaker: str = ""
    audio_start_s: float = 0.0
    split: bool = False
    sample_rate: int = 16000

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def audio_end_s(self) -> float:
        return self.audio_start_s + len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class SpeechStart:
    """Payload of the speech-start callback: an utterance reached the minimum length on ``channel``."""

    start_s: float
    channel: int
    speaker: str


SpeechStartCallback = Callable[[SpeechStart], None]

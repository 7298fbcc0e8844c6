"""One stream's binary messages, checked against the stream's limits and fed to its :class:`PushSource`.

The service's side of the protocol: the framing (:mod:`deploy.protocol.framing`), the message and frame limits
(:class:`InputLimits`, :class:`VideoLimits`), the video frame rate (:class:`VideoRateLimiter`), PCM and JPEG
decoding, and the audio budget's back-pressure; every refused message or frame is an :class:`InputError`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from deploy.protocol.budget import AudioBudget
from deploy.protocol.framing import (
    AUDIO_TAG,
    TAG_BYTES,
    TIMESTAMP,
    VIDEO_HEADER_BYTES,
    VIDEO_TAG,
    FrameError,
    is_untagged_video,
)
from deploy.protocol.jpeg import decode_jpeg
from streaming.sources import PushSource, SourceError
from streaming.sources.pcm import PCM_DTYPES, pcm_frame_bytes

__all__ = ["VideoLimits", "VideoRateLimiter", "InputError", "InputLimits", "StreamInput"]


@dataclass(frozen=True)
class VideoLimits:
    """Limits on one stream's video frames (``AppArgs.max_video_*``, documented in ``deploy/README.md``)."""

    max_frame_bytes: int = 1 << 20
    max_fps: int = 15
    max_lead_s: float = 2.0
    max_pixels: int = 4096 * 2160
    max_width: int = 640

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_fps", "max_pixels", "max_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"VideoLimits.{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_lead_s > 0:
            raise ValueError(f"VideoLimits.max_lead_s must be > 0, got {self.max_lead_s}")


class VideoRateLimiter:
    """At most ``max_fps`` frames within any 1 s of stream time; the frames above are dropped and counted.

    A sliding window rather than a minimum interval between frames: a capture clock that jitters around a rate
    below the limit never loses a frame. Drops are reported (:meth:`take_report`) at most once per
    ``report_every_s`` of stream time, so a client far above the limit gets a counted warning, not a flood."""

    def __init__(self, max_fps: int, report_every_s: float = 1.0):
        self.max_fps = max_fps
        self.report_every_s = report_every_s
        self.dropped = 0
        self._kept: deque[float] = deque()
        self._unreported = 0
        self._last_report_t = -math.inf

    def admit(self, t: float) -> bool:
        """``t`` must increase from call to call (the caller checks it)."""
        while self._kept and self._kept[0] <= t - 1.0 + 1e-6:
            self._kept.popleft()
        if len(self._kept) >= self.max_fps:
            self.dropped += 1
            self._unreported += 1
            return False
        self._kept.append(t)
        return True

    def take_report(self, t: float | None) -> int:
        """How many drops to report now: 0, or all those not reported yet when the last report is at least
        ``report_every_s`` older than ``t``; ``t=None`` (end of stream) reports whatever is left."""
        if not self._unreported or (t is not None and t - self._last_report_t < self.report_every_s):
            return 0
        n, self._unreported = self._unreported, 0
        if t is not None:
            self._last_report_t = t
        return n


@dataclass(frozen=True)
class InputError:
    """One error event to send for a binary message (the message or frame it names was not used)."""

    code: str
    message: str
    field: str


@dataclass(frozen=True)
class InputLimits:
    """Per-message limits of a stream. ``video`` None: the start message did not declare ``"video": true``."""

    max_message_bytes: int
    push_timeout_s: float
    video: VideoLimits | None = None


class StreamInput:
    """One stream's binary messages -> its :class:`PushSource`: framing, limits, PCM and JPEG decoding.

    :meth:`handle` blocks (JPEG decoding, back-pressure of a full input queue or of the :class:`AudioBudget`): the
    service calls it from a worker pool, one message at a time per stream. Every refused message or frame comes back
    as an :class:`InputError`.
    """

    def __init__(self, source: PushSource, sample_format: str, limits: InputLimits, budget: AudioBudget | None = None):
        if sample_format not in PCM_DTYPES:
            raise ValueError(f"sample_format must be one of {list(PCM_DTYPES)}, got {sample_format!r}")
        self.source = source
        self.sample_format = sample_format
        self.limits = limits
        self.budget = budget
        #: Seconds of audio received so far: the stream clock video timestamps are checked against.
        self.audio_s = 0.0
        self._last_t = -math.inf
        self._rate = VideoRateLimiter(limits.video.max_fps) if limits.video else None

    @property
    def video(self) -> bool:
        return self.limits.video is not None

    def handle(self, data: bytes) -> list[InputError]:
        try:
            if not self.video:
                if is_untagged_video(data):
                    raise FrameError("video_not_enabled", "video",
                                     'video frame on a stream without "video": true in its start message')
                self._audio(data)
                return []
            tag = data[:TAG_BYTES]
            if tag == AUDIO_TAG:
                self._audio(data[TAG_BYTES:])
                return []
            if tag == VIDEO_TAG:
                return self._video(data[TAG_BYTES:])
            raise FrameError("invalid_frame", "tag",
                             f"binary messages of a video stream must start with {AUDIO_TAG!r} (audio) or "
                             f"{VIDEO_TAG!r} (video), got {tag!r}")
        except FrameError as e:
            return [InputError(e.code, f"{e.message}; dropped", e.field)]

    def finish(self) -> list[InputError]:
        """End of input: the video frames dropped by the rate limit and not reported yet."""
        return self._drop_report(None)

    # ------------------------------------------------------------------------------------------------ audio

    def _audio(self, pcm: bytes) -> None:
        if len(pcm) > self.limits.max_message_bytes:
            raise FrameError("message_too_large", "audio",
                             f"audio of {len(pcm)} bytes exceeds the limit of {self.limits.max_message_bytes} bytes")
        frame_bytes = pcm_frame_bytes(self.sample_format, self.source.channels)
        seconds = len(pcm) / frame_bytes / self.source.input_rate
        if self.budget is not None:
            self.budget.wait_room(seconds, self.limits.push_timeout_s)
        try:
            self.source.push_audio(pcm, self.sample_format, self.limits.push_timeout_s)
        except SourceError as e:
            raise FrameError("invalid_audio", e.field or "audio", e.message) from None
        if self.budget is not None:
            self.budget.added(seconds)
        self.audio_s += seconds

    # ------------------------------------------------------------------------------------------------ video

    def _video(self, payload: bytes) -> list[InputError]:
        lim, rate = self.limits.video, self._rate
        assert lim is not None and rate is not None  # only called on video streams
        if len(payload) < TIMESTAMP.size:
            raise FrameError("invalid_video", "video.header",
                             f"video message of {TAG_BYTES + len(payload)} bytes is shorter than its "
                             f"{VIDEO_HEADER_BYTES}-byte header ({VIDEO_TAG!r} + float64 little-endian timestamp)")
        (t,) = TIMESTAMP.unpack_from(payload)
        jpeg = payload[TIMESTAMP.size:]
        if len(jpeg) > lim.max_frame_bytes:
            raise FrameError("message_too_large", "video",
                             f"JPEG of {len(jpeg)} bytes exceeds the limit of {lim.max_frame_bytes} bytes")
        self._check_time(t, lim)
        if not rate.admit(t):
            return self._drop_report(t)
        image = decode_jpeg(jpeg, lim.max_pixels, lim.max_width)
        try:
            self.source.push_video(t, image, self.limits.push_timeout_s)
        except SourceError as e:
            raise FrameError("invalid_video", "video", e.message) from None
        return self._drop_report(t)

    def _check_time(self, t: float, lim: VideoLimits) -> None:
        if not math.isfinite(t) or t < 0:
            raise FrameError("invalid_video", "video.t",
                             f"timestamp must be a finite number of seconds >= 0, got {t!r}")
        if t <= self._last_t:
            raise FrameError("invalid_video", "video.t",
                             f"timestamp {t:.3f} s is not after the previous frame's {self._last_t:.3f} s: "
                             "timestamps must increase")
        lead = t - self.audio_s
        if lead > lim.max_lead_s:
            raise FrameError("invalid_video", "video.t",
                             f"frame at {t:.2f} s is {lead:.2f} s ahead of the audio received so far "
                             f"({self.audio_s:.2f} s), at most {lim.max_lead_s:g} s is accepted: send audio and video "
                             "interleaved in time order")
        self._last_t = t

    def _drop_report(self, t: float | None) -> list[InputError]:
        lim, rate = self.limits.video, self._rate
        n = rate.take_report(t) if rate is not None else 0
        if not n or lim is None or rate is None:
            return []
        where = "before the end of the stream" if t is None else f"up to {t:.2f} s"
        return [InputError("video_frames_dropped",
                           f"{n} video frame(s) dropped {where} ({rate.dropped} in all): more than {lim.max_fps} "
                           "frames within 1 s of stream time (max_video_fps; the face features use 10 fps)", "video")]

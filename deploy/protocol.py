"""Binary messages of ``WS /v1/stream``: PCM audio and JPEG video frames (the spec is in ``deploy/README.md``).

Shared by the service (:class:`StreamInput` validates a stream's binary messages and feeds its
:class:`~streaming.sources.PushSource`) and by ``deploy.client`` (:func:`audio_message`, :func:`video_message`,
:func:`encode_jpeg`). Nothing here imports Ray, so the client and the unit tests load it cheaply.

Why every binary message of a video stream carries a 4-byte tag (``EGA1`` audio, ``EGV1`` video) while an
audio-only stream keeps sending untagged PCM: raw PCM may hold any bytes, so a header on video messages alone could
never be told apart from audio with certainty. With a tag on both kinds the framing is unambiguous, and clients that
never declare ``"video": true`` work unchanged.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from streaming.sources import AudioChunk, PushSource, Source, SourceError, SourceItem
from streaming.sources.pcm import PCM_DTYPES, pcm_frame_bytes

__all__ = [
    "AUDIO_TAG",
    "AudioBudget",
    "MeteredSource",
    "loads_json",
    "VIDEO_HEADER_BYTES",
    "VIDEO_TAG",
    "FrameError",
    "InputError",
    "InputLimits",
    "StreamInput",
    "VideoLimits",
    "VideoRateLimiter",
    "audio_message",
    "decode_jpeg",
    "encode_jpeg",
    "is_untagged_video",
    "jpeg_size",
    "video_message",
]

AUDIO_TAG = b"EGA1"
VIDEO_TAG = b"EGV1"
TAG_BYTES = 4
_TIMESTAMP = struct.Struct("<d")  # float64 little endian, seconds of stream time
VIDEO_HEADER_BYTES = TAG_BYTES + _TIMESTAMP.size  # 12
JPEG_SOI = b"\xff\xd8\xff"  # every JPEG file starts with SOI (FF D8) followed by the next marker's FF
# Start-of-frame markers (baseline, progressive, lossless, arithmetic ...): they hold the image size.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class FrameError(ValueError):
    """A binary message that cannot be used: ``code`` and ``field`` go into the error event."""

    def __init__(self, code: str, field: str, message: str):
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


def loads_json(text: str | bytes) -> object:
    """``json.loads`` whose every failure is a ValueError: deeply nested input (``[[[[...``) makes the stdlib parser
    raise RecursionError, which would otherwise escape the protocol's ``except ValueError`` and drop the connection
    without an error event."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# ------------------------------------------------------------------------------------------------- client side


def audio_message(pcm: bytes) -> bytes:
    """An audio message of a stream with video (audio-only streams send the PCM bytes as they are)."""
    return AUDIO_TAG + pcm


def video_message(t: float, jpeg: bytes) -> bytes:
    """A video message: the frame's time ``t`` in seconds of stream time (0 = the first audio sample) + the JPEG."""
    return VIDEO_TAG + _TIMESTAMP.pack(t) + jpeg


def encode_jpeg(rgb: np.ndarray, qscale: int = 5) -> bytes:
    """RGB uint8 (H, W, 3) -> JPEG bytes with PyAV's MJPEG encoder (``qscale`` 2 best .. 31 smallest; 5 keeps the
    facial detail the face landmarker needs at about 15-30 KB for a 640 x 640 frame)."""
    h, w = rgb.shape[:2]
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w - w % 2, h - h % 2, "yuvj420p"  # 4:2:0 needs even sizes
    ctx.time_base = Fraction(1, 1)
    ctx.options = {"qmin": str(qscale), "qmax": str(qscale)}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: ctx.height, : ctx.width]), format="rgb24")
    packets = ctx.encode(frame.reformat(format="yuvj420p")) + ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


# ------------------------------------------------------------------------------------------------- server side


def is_untagged_video(data: bytes) -> bool:
    """True for a video message sent on a stream whose start message did not declare ``"video": true``: the
    ``EGV1`` tag, a timestamp, then the JPEG start marker. Raw PCM matches this by chance with probability 2^-56."""
    return data[:TAG_BYTES] == VIDEO_TAG and data[VIDEO_HEADER_BYTES:VIDEO_HEADER_BYTES + 3] == JPEG_SOI


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's start-of-frame marker, read before decoding so that a small file declaring a
    huge image (a decompression bomb) is refused without allocating it."""
    if not data.startswith(JPEG_SOI):
        got = data[:3].hex(" ") or "nothing"
        raise FrameError("invalid_video", "video.jpeg",
                         f"payload is not a JPEG image: it must start with FF D8 FF, got {got}")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS and i + 9 <= len(data):
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        i += 2 + length
    raise FrameError("invalid_video", "video.jpeg", "JPEG has no readable start-of-frame marker (truncated or corrupt)")


def decode_jpeg(data: bytes, max_pixels: int, max_width: int | None = None) -> np.ndarray:
    """JPEG bytes -> RGB uint8 (H, W, 3), C-contiguous, downscaled to ``max_width`` (keeping the aspect ratio).

    FFmpeg's MJPEG decoder conceals damage by default (a truncated file decodes to a half-grey picture); with
    ``err_detect=explode`` a truncated or corrupt JPEG is an error instead of a fake frame."""
    width, height = jpeg_size(data)
    if width * height > max_pixels or not width or not height:
        raise FrameError("invalid_video", "video.jpeg",
                         f"JPEG of {width} x {height} pixels: expected 1 to {max_pixels} pixels (max_video_pixels)")
    ctx = av.CodecContext.create("mjpeg", "r")
    ctx.options = {"err_detect": "explode", "max_pixels": str(max_pixels)}
    try:
        frames = ctx.decode(av.Packet(data)) + ctx.decode(None)
    except av.error.FFmpegError as e:
        raise FrameError("invalid_video", "video.jpeg", f"JPEG cannot be decoded (truncated or corrupt): {e}") from None
    if len(frames) != 1:
        raise FrameError("invalid_video", "video.jpeg", f"JPEG decoded to {len(frames)} pictures, expected 1")
    frame = frames[0]
    w, h = frame.width, frame.height
    if max_width and w > max_width:
        h, w = max(2, round(h * max_width / w / 2) * 2), max_width
    # mediapipe reads densely packed rows; PyAV pads the rows of odd widths.
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24", width=w, height=h))


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
        if len(payload) < _TIMESTAMP.size:
            raise FrameError("invalid_video", "video.header",
                             f"video message of {TAG_BYTES + len(payload)} bytes is shorter than its "
                             f"{VIDEO_HEADER_BYTES}-byte header ({VIDEO_TAG!r} + float64 little-endian timestamp)")
        (t,) = _TIMESTAMP.unpack_from(payload)
        jpeg = payload[_TIMESTAMP.size:]
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

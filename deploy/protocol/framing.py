"""The framing of the binary messages: the tags, the video header, and the errors a message can earn.

Why every binary message of a video stream carries a 4-byte tag (``EGA1`` audio, ``EGV1`` video) while an
audio-only stream keeps sending untagged PCM: see :mod:`deploy.protocol`. The client builds its messages with
:func:`audio_message` and :func:`video_message`; the service recognizes a video frame sent on a stream that did not
declare video with :func:`is_untagged_video`.
"""

from __future__ import annotations

import json
import struct

__all__ = [
    "AUDIO_TAG",
    "VIDEO_TAG",
    "TAG_BYTES",
    "TIMESTAMP",
    "VIDEO_HEADER_BYTES",
    "JPEG_SOI",
    "FrameError",
    "loads_json",
    "audio_message",
    "video_message",
    "is_untagged_video",
]

AUDIO_TAG = b"EGA1"
VIDEO_TAG = b"EGV1"
TAG_BYTES = 4
#: The video header's frame time: float64 little endian, seconds of stream time.
TIMESTAMP = struct.Struct("<d")
VIDEO_HEADER_BYTES = TAG_BYTES + TIMESTAMP.size  # 12
JPEG_SOI = b"\xff\xd8\xff"  # every JPEG file starts with SOI (FF D8) followed by the next marker's FF


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
    return VIDEO_TAG + TIMESTAMP.pack(t) + jpeg


# ------------------------------------------------------------------------------------------------- server side


def is_untagged_video(data: bytes) -> bool:
    """True for a video message sent on a stream whose start message did not declare ``"video": true``: the
    ``EGV1`` tag, a timestamp, then the JPEG start marker. Raw PCM matches this by chance with probability 2^-56."""
    return data[:TAG_BYTES] == VIDEO_TAG and data[VIDEO_HEADER_BYTES:VIDEO_HEADER_BYTES + 3] == JPEG_SOI

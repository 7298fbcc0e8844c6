"""Binary messages of ``WS /v1/stream``: PCM audio and JPEG video frames (the spec is in ``deploy/README.md``).

Shared by the service (:class:`StreamInput` validates a stream's binary messages and feeds its
:class:`~streaming.sources.PushSource`) and by ``deploy.client`` (:func:`audio_message`, :func:`video_message`,
:func:`encode_jpeg`). Nothing here imports Ray, so the client and the unit tests load it cheaply.

Why every binary message of a video stream carries a 4-byte tag (``EGA1`` audio, ``EGV1`` video) while an
audio-only stream keeps sending untagged PCM: raw PCM may hold any bytes, so a header on video messages alone could
never be told apart from audio with certainty. With a tag on both kinds the framing is unambiguous, and clients that
never declare ``"video": true`` work unchanged.

One concern per module: :mod:`~deploy.protocol.framing` (the tags, the video header, :class:`FrameError`, the client's
message builders), :mod:`~deploy.protocol.jpeg` (JPEG encoding, and the decoding that checks the declared size
first), :mod:`~deploy.protocol.budget` (:class:`AudioBudget` and :class:`MeteredSource`: a stream's buffered audio
in seconds), :mod:`~deploy.protocol.stream_input` (:class:`StreamInput`: one stream's binary messages with their
limits). Importers use this package (``from deploy.protocol import StreamInput``).
"""

from deploy.protocol.budget import AudioBudget, MeteredSource
from deploy.protocol.framing import (
    AUDIO_TAG,
    VIDEO_HEADER_BYTES,
    VIDEO_TAG,
    FrameError,
    audio_message,
    is_untagged_video,
    loads_json,
    video_message,
)
from deploy.protocol.jpeg import decode_jpeg, encode_jpeg, jpeg_size
from deploy.protocol.stream_input import InputError, InputLimits, StreamInput, VideoLimits, VideoRateLimiter

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

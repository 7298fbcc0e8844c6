"""Audio/video sources that yield timestamped chunks in *stream time*.

Every source yields, in arrival order, :class:`AudioChunk` (float32 samples at 16 kHz, mono ``(n,)`` or
multi-channel ``(n, channels)``) and :class:`VideoFrame` (``(t, rgb)`` with an RGB uint8 ``(H, W, 3)`` image).
Stream time is counted in samples from the first audio sample, not read from the wall clock, so that segment
boundaries are exact and identical across runs; video timestamps come from the container on the same origin.

One module per adapter, each with its own dependency, and what they share:

* ``base``: the items, the :class:`Source` interface, :class:`SourceError`, ``SAMPLE_RATE``, the resampler.
* ``microphone``: :class:`MicrophoneSource`, a sound card through sounddevice/PortAudio.
* ``av_file``: :class:`AVFileSource`, files, URLs (RTSP/HTTP) and v4l2 webcams through PyAV (its own FFmpeg).
* ``push``: :class:`PushSource`, PCM chunks (and optional frames) pushed by a caller, for the WebSocket service.
* ``pcm``: the PCM wire format of pushed audio (sample types, channel layout, rates).
* ``merged``: :class:`MergedSource`, audio from one source and video from another (a webcam's picture with a
  microphone).

All user-facing failures (no microphone, unreadable file, unreachable URL, malformed pushed data) raise
:class:`SourceError`, whose message is one line that says which input was wrong and what was expected, so the CLI
can print it without a traceback.
"""

from .av_file import AVFileSource, AVSourceConfig
from .base import SAMPLE_RATE, AudioChunk, Source, SourceError, SourceItem, VideoFrame
from .merged import MergedSource
from .microphone import MicrophoneConfig, MicrophoneSource, list_input_devices
from .push import PushSource

__all__ = [
    "SAMPLE_RATE",
    "SourceError",
    "AudioChunk",
    "VideoFrame",
    "SourceItem",
    "Source",
    "MicrophoneConfig",
    "MicrophoneSource",
    "AVSourceConfig",
    "AVFileSource",
    "PushSource",
    "MergedSource",
    "list_input_devices",
]

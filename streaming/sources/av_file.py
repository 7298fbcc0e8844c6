"""Files, URLs (RTSP/HTTP...) and capture devices such as v4l2 webcams, decoded with PyAV (its own FFmpeg):
:class:`AVFileSource` and its settings :class:`AVSourceConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

from .base import SAMPLE_RATE, AudioChunk, Source, SourceError, SourceItem, VideoFrame

log = logging.getLogger(__name__)

_LIVE_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp", "http", "https", "mms"}
_LIVE_FORMATS = {"v4l2", "video4linux2", "alsa", "pulse", "avfoundation", "dshow", "x11grab"}


@dataclass
class AVSourceConfig:
    """Settings of :class:`AVFileSource`.

    ``format``: force a demuxer (``"v4l2"`` for a webcam, else guessed). ``options``: demuxer options such as
    ``{"rtsp_transport": "tcp"}`` (the default for RTSP, since UDP loses packets behind NAT). ``stereo``: keep two
    channels (call-center recordings with one speaker per channel); otherwise downmix to mono. ``audio``/``video``:
    which streams to decode (a webcam has no audio). ``video_fps``: frames kept per second (10, the rate the face
    features are sampled at in training; expressions change slower than 25-30 fps). ``video_max_width``: downscale
    wider frames (keeps aspect). ``realtime``: pace a file to the wall clock, as if live; live inputs are paced by
    nature and never slowed further.
    ``open_timeout_s``/``read_timeout_s``: network timeouts, so a dead URL fails instead of hanging.
    """

    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    stereo: bool = False
    audio: bool = True
    video: bool = True
    video_fps: float = 10.0
    video_max_width: int | None = 640
    realtime: bool = False
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    max_decode_errors: int = 50


def _is_url(target: str) -> bool:
    scheme = urlparse(target).scheme.lower()
    return len(scheme) > 1 and scheme != "file"  # "C:" is a drive letter, not a scheme


class AVFileSource(Source):
    """Decode a file, URL or capture device with PyAV.

    Audio is resampled with ``av.AudioResampler(format="s16", layout="mono"|"stereo", rate=16000)`` and yielded as
    float32; the first audio sample is placed at its container timestamp relative to the container start, and later
    chunks follow by sample count (container timestamps jitter; sample counts do not). Video frames are kept at
    ``video_fps`` and yielded as ``VideoFrame(t, rgb)`` on the same time origin.
    """

    def __init__(self, target: str | os.PathLike[str], config: AVSourceConfig | None = None, **overrides: Any):
        self.target = os.fspath(target)
        self.config = dataclasses.replace(config or AVSourceConfig(), **overrides)
        if self.config.video_fps <= 0:
            raise SourceError(f"video_fps must be > 0, got {self.config.video_fps}", field="video_fps")
        self.is_url = _is_url(self.target)
        self.is_live = (self.is_url and urlparse(self.target).scheme.lower() in _LIVE_SCHEMES) or (
            (self.config.format or "").lower() in _LIVE_FORMATS
        )
        self._field = "url" if self.is_url else ("device" if self.config.format in _LIVE_FORMATS else "file")
        self.name = self.target
        self.channels = 2 if self.config.stereo else 1
        self._container: Any = None
        self._astream: Any = None
        self._vstream: Any = None
        self._closed = threading.Event()
        self._iterating = False

    def open(self) -> None:
        if self._container is not None:
            return
        import av

        cfg = self.config
        if not self.is_url and cfg.format is None:
            if not os.path.exists(self.target):
                raise SourceError(f"file not found: {self.target}", field="file")
            if os.path.isdir(self.target):
                raise SourceError(f"expected a media file, got a directory: {self.target}", field="file")
        options = dict(cfg.options)
        if urlparse(self.target).scheme.lower() in ("rtsp", "rtsps"):
            options.setdefault("rtsp_transport", "tcp")
        try:
            self._container = av.open(self.target, mode="r", format=cfg.format, options=options,
                                      timeout=(cfg.open_timeout_s, cfg.read_timeout_s))
        except av.error.FileNotFoundError:
            raise SourceError(f"{self._field} not found: {self.target}", field=self._field) from None
        except av.error.InvalidDataError:
            raise SourceError(
                f"not a readable media file: {self.target} "
                "(expected audio/video such as wav, flac, mp3, mp4, mkv, webm)",
                field=self._field,
            ) from None
        except (av.error.FFmpegError, OSError) as e:
            what = getattr(e, "strerror", None) or str(e)
            raise SourceError(f"cannot open {self._field} {self.target}: {what}", field=self._field) from None
        c = self._container
        self._astream = c.streams.audio[0] if (cfg.audio and c.streams.audio) else None
        self._vstream = c.streams.video[0] if (cfg.video and c.streams.video) else None
        if cfg.audio and self._astream is None:
            self.close()
            raise SourceError(f"{self.target} has no audio stream (speech analysis needs an audio track)",
                              field=self._field)
        if self._astream is None and self._vstream is None:
            self.close()
            raise SourceError(f"{self.target} has no audio or video stream", field=self._field)
        if cfg.stereo and self._astream is not None:
            n_ch = self._astream.codec_context.channels
            if n_ch < 2:
                self.close()
                raise SourceError(
                    f"channel diarization needs a 2-channel (stereo) recording, {self.target} has {n_ch} channel",
                    field="stereo",
                )
        if self._vstream is not None:
            self._vstream.thread_type = "AUTO"
        self.has_video = self._vstream is not None
        log.info("opened %s: audio=%s video=%s live=%s", self.target,
                 self._astream is not None and self._astream.codec_context.name,
                 self._vstream is not None and self._vstream.codec_context.name, self.is_live)

    def close(self) -> None:
        """Stop. Safe from a signal handler or another thread: while an iteration is running it only raises the
        stop flag and the iteration closes the container itself (closing it under a running demuxer is unsafe)."""
        self._closed.set()
        if not self._iterating:
            self._close_container()

    def _close_container(self) -> None:
        c, self._container = self._container, None
        if c is not None:
            try:
                c.close()
            except Exception as e:
                log.debug("closing %s: %s", self.target, e)

    def _rgb(self, frame: Any) -> np.ndarray:
        w, h = frame.width, frame.height
        maxw = self.config.video_max_width
        if maxw and w > maxw:
            h = max(2, int(round(h * maxw / w / 2)) * 2)
            w = maxw
        return frame.to_ndarray(format="rgb24", width=w, height=h)

    def __iter__(self) -> Iterator[SourceItem]:
        import av

        self.open()
        self._iterating = True
        c = self._container
        cfg = self.config
        streams = [s for s in (self._astream, self._vstream) if s is not None]
        resampler = av.AudioResampler(format="s16", layout="stereo" if cfg.stereo else "mono", rate=SAMPLE_RATE)
        origin: float | None = c.start_time / 1e6 if c.start_time is not None else None
        audio_t0: float | None = None
        n_audio = 0
        next_video_t = 0.0
        video_step = 1.0 / cfg.video_fps
        wall0: float | None = None
        errors = 0

        def pace(t: float) -> None:
            nonlocal wall0
            if not cfg.realtime or self.is_live:
                return
            now = time.monotonic()
            if wall0 is None:
                wall0 = now - t
            delay = wall0 + t - now
            if delay > 0:
                self._closed.wait(delay)

        def audio_chunks(frames: list) -> Iterator[AudioChunk]:
            nonlocal n_audio
            for f in frames:
                x = f.to_ndarray().reshape(-1)
                if cfg.stereo:
                    x = x.reshape(-1, 2)
                if not len(x):
                    continue
                t = (audio_t0 or 0.0) + n_audio / SAMPLE_RATE
                n_audio += len(x)
                pace(t + len(x) / SAMPLE_RATE)
                yield AudioChunk(t, x.astype(np.float32) * np.float32(1.0 / 32768.0))

        try:
            for packet in c.demux(*streams):
                if self._closed.is_set():
                    break
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as e:
                    errors += 1
                    log.warning("%s: skipping undecodable packet (%s)", self.target, e)
                    if errors > cfg.max_decode_errors:
                        raise SourceError(f"too many decoding errors in {self.target}", field=self._field) from None
                    continue
                for frame in frames:
                    ft = frame.time
                    if origin is None and ft is not None:
                        origin = ft  # live streams without a container start time: first frame is 0
                    rel = None if ft is None else ft - (origin or 0.0)
                    if packet.stream is self._astream:
                        if audio_t0 is None:
                            audio_t0 = max(0.0, rel or 0.0)
                        yield from audio_chunks(resampler.resample(frame))
                    else:
                        if rel is None or rel + 1e-6 < next_video_t:
                            continue
                        rel = max(0.0, rel)
                        next_video_t = max(next_video_t + video_step, rel + video_step / 2)
                        pace(rel)
                        yield VideoFrame(rel, self._rgb(frame))
            else:
                if self._astream is not None:
                    yield from audio_chunks(resampler.resample(None))
        except av.error.ExitError:
            if not self._closed.is_set():
                raise SourceError(f"{self.target}: no data for {cfg.read_timeout_s:g} s (stream stalled)",
                                  field=self._field) from None
        except av.error.EOFError:
            log.info("%s: end of stream", self.target)
        except (av.error.FFmpegError, OSError) as e:
            if self._closed.is_set():  # closing a container under a blocking read raises here: a clean stop
                return
            raise SourceError(f"{self.target}: read failed: {getattr(e, 'strerror', None) or e}",
                              field=self._field) from None
        finally:
            self._iterating = False
            self._closed.set()
            self._close_container()

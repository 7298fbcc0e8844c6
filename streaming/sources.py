"""Audio/video sources that yield timestamped chunks in *stream time*.

Every source yields, in arrival order, :class:`AudioChunk` (float32 samples at 16 kHz, mono ``(n,)`` or
multi-channel ``(n, channels)``) and :class:`VideoFrame` (``(t, rgb)`` with an RGB uint8 ``(H, W, 3)`` image).
Stream time is counted in samples from the first audio sample, not read from the wall clock, so that segment
boundaries are exact and identical across runs; video timestamps come from the container on the same origin.

Sources:

* :class:`MicrophoneSource`: a sound card through sounddevice/PortAudio.
* :class:`AVFileSource`: files, URLs (RTSP/HTTP) and v4l2 webcams through PyAV (its own FFmpeg).
* :class:`PushSource`: PCM chunks (and optional frames) pushed by a caller, for the WebSocket service.
* :class:`MergedSource`: audio from one source and video from another (a webcam's picture with a microphone).

All user-facing failures (no microphone, unreadable file, unreachable URL, malformed pushed data) raise
:class:`SourceError`, whose message is one line that says which input was wrong and what was expected, so the CLI
can print it without a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union
from urllib.parse import urlparse

import numpy as np

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

log = logging.getLogger(__name__)

#: The sample rate of everything downstream (webrtcvad and Whisper both want 16 kHz).
SAMPLE_RATE = 16000

_LIVE_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp", "http", "https", "mms"}
_LIVE_FORMATS = {"v4l2", "video4linux2", "alsa", "pulse", "avfoundation", "dshow", "x11grab"}


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


class _StreamResampler:
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


def _to_float32(x: np.ndarray, field: str) -> np.ndarray:
    """int16 -> float32 in [-1, 1); float -> float32, rejecting NaN/inf (they would poison the VAD and the model)."""
    if x.dtype == np.int16:
        return x.astype(np.float32) * np.float32(1.0 / 32768.0)
    if x.dtype in (np.float32, np.float64):
        y = x.astype(np.float32, copy=False)
        if y.size and not np.isfinite(y).all():
            raise SourceError("audio contains NaN or infinite samples", field=field)
        return y
    raise SourceError(f"audio must be int16 or float32 PCM, got dtype {x.dtype}", field=field)


# ----------------------------------------------------------------------------------------------------- microphone


def list_input_devices() -> list[tuple[int, str]]:
    """``[(index, name)]`` of the PortAudio devices that have input channels (empty when none, as on a server)."""
    try:
        import sounddevice as sd
    except OSError:  # libportaudio2 missing
        return []
    return [(i, str(d["name"])) for i, d in enumerate(sd.query_devices()) if int(d.get("max_input_channels", 0)) > 0]


@dataclass
class MicrophoneConfig:
    """Microphone capture settings.

    ``device``: index, an index as a string, or a case-insensitive part of the device name; ``None`` = the system
    default input. ``block_ms``: the PortAudio callback period (smaller = lower latency, more wakeups).
    ``max_buffer_s``: how much audio is kept while the consumer is busy (analyzing an utterance) before the oldest
    blocks are dropped with a warning; generous because analysis runs in the same thread as segmentation.
    """

    device: int | str | None = None
    channels: int = 1
    block_ms: int = 30
    max_buffer_s: float = 120.0


class MicrophoneSource(Source):
    """Live audio from a sound card (sounddevice/PortAudio), float32 16 kHz.

    If the device does not accept 16 kHz it is opened at its own default rate and resampled here. When there is no
    input device at all (``query_devices()`` is empty, or opening raises ``PortAudioError``), ``open()`` raises a
    :class:`SourceError` with one line saying so.
    """

    def __init__(self, config: MicrophoneConfig | None = None, **overrides: Any):
        self.config = dataclasses.replace(config or MicrophoneConfig(), **overrides)
        self.channels = int(self.config.channels)
        self.name = f"microphone {self.config.device if self.config.device is not None else '(default)'}"
        self._stream: Any = None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self._max_blocks = max(1, int(self.config.max_buffer_s * 1000 / max(1, self.config.block_ms)))
        self._closed = threading.Event()
        self._resampler: _StreamResampler | None = None
        self._dropped = 0

    # -- device selection
    def _resolve_device(self, sd: Any) -> int | None:
        dev = self.config.device
        try:
            devices = list(sd.query_devices())
        except Exception as e:  # noqa: BLE001 - PortAudio not initialisable
            raise SourceError(f"cannot list audio devices: {e}", field="device") from None
        inputs = [(i, str(d["name"])) for i, d in enumerate(devices) if int(d.get("max_input_channels", 0)) > 0]
        if not inputs:
            raise SourceError(
                "no audio input device found (the system reports no microphone); connect one, or use --file/--url",
                field="device",
            )
        available = "; ".join(f"{i}: {n}" for i, n in inputs)
        if dev is None:
            return None  # PortAudio's default input
        if isinstance(dev, str) and dev.strip().lstrip("-").isdigit():
            dev = int(dev)
        if isinstance(dev, int):
            if dev not in {i for i, _ in inputs}:
                raise SourceError(f"audio device {dev} is not an input device (inputs: {available})", field="device")
            return dev
        matches = [(i, n) for i, n in inputs if str(dev).lower() in n.lower()]
        if not matches:
            raise SourceError(f"no input device matches {dev!r} (inputs: {available})", field="device")
        if len(matches) > 1:
            log.info("several input devices match %r, using %d: %s", dev, *matches[0])
        return matches[0][0]

    def open(self) -> None:
        if self._stream is not None:
            return
        try:
            import sounddevice as sd
        except OSError:
            raise SourceError(
                "cannot use the microphone: the PortAudio library is missing (install libportaudio2)", field="device"
            ) from None
        device = self._resolve_device(sd)
        block = max(1, SAMPLE_RATE * self.config.block_ms // 1000)
        try:
            self._stream = self._open_stream(sd, device, SAMPLE_RATE, block)
        except sd.PortAudioError as e:
            # Hardware devices often refuse 16 kHz: retry at the device's own rate and resample here.
            try:
                info = sd.query_devices(device, "input")
                rate = int(info["default_samplerate"])
            except Exception:
                rate = 0
            if rate and rate != SAMPLE_RATE:
                try:
                    self._stream = self._open_stream(sd, device, rate, max(1, rate * self.config.block_ms // 1000))
                    self._resampler = _StreamResampler(rate, self.channels)
                except sd.PortAudioError as e2:
                    raise SourceError(f"cannot open the microphone ({self.name}): {e2}", field="device") from None
            else:
                raise SourceError(f"cannot open the microphone ({self.name}): {e}", field="device") from None
        try:
            self._stream.start()
        except sd.PortAudioError as e:
            raise SourceError(f"cannot start the microphone ({self.name}): {e}", field="device") from None
        log.info("microphone open: %s, %d channel(s)", self.name, self.channels)

    def _open_stream(self, sd: Any, device: int | None, rate: int, block: int) -> Any:
        return sd.InputStream(samplerate=rate, channels=self.channels, dtype="float32", blocksize=block,
                              device=device, callback=self._callback)

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Runs on PortAudio's thread: copy and hand over, nothing else (no allocation-heavy work, no blocking).
        if status:
            log.warning("microphone status: %s", status)
        if self._queue.qsize() >= self._max_blocks:
            try:
                self._queue.get_nowait()
                self._dropped += 1
            except queue.Empty:
                pass
        self._queue.put_nowait(indata.copy())

    def close(self) -> None:
        self._closed.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception as e:  # closing must never raise during Ctrl-C handling
                log.debug("closing microphone: %s", e)
        self._queue.put(None)

    def __iter__(self) -> Iterator[SourceItem]:
        self.open()
        n_out = 0
        while not self._closed.is_set():
            try:
                block = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if block is None:
                break
            if self._dropped:
                log.warning("microphone: dropped %d blocks because analysis fell behind", self._dropped)
                self._dropped = 0
            x = block[:, 0] if self.channels == 1 else block
            if self._resampler is not None:
                x = self._resampler.process(x)
            if len(x):
                yield AudioChunk(n_out / SAMPLE_RATE, np.ascontiguousarray(x, dtype=np.float32))
                n_out += len(x)


# --------------------------------------------------------------------------------------------------- files and URLs


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


# ----------------------------------------------------------------------------------------------------------- push


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
        if not (isinstance(sample_rate, int) and 8000 <= sample_rate <= 192000):
            raise SourceError(f"sample_rate must be an integer between 8000 and 192000 Hz, got {sample_rate!r}",
                              field="sample_rate")
        self.input_rate = sample_rate
        self.channels = channels
        self.has_video = has_video
        self.name = name
        self._queue: queue.Queue[SourceItem | None] = queue.Queue(maxsize=max_queue)
        self._resampler = _StreamResampler(sample_rate, channels) if sample_rate != SAMPLE_RATE else None
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
            if dtype not in ("int16", "float32"):
                raise SourceError(f"raw PCM needs dtype 'int16' or 'float32', got {dtype!r}", field="dtype")
            width = 2 if dtype == "int16" else 4
            nbytes = len(data)
            if nbytes % (width * self.channels):
                raise SourceError(
                    f"PCM length {nbytes} bytes is not a multiple of {width} bytes x {self.channels} channel(s)",
                    field="audio")
            arr = np.frombuffer(data, dtype="<i2" if dtype == "int16" else "<f4").astype(
                np.int16 if dtype == "int16" else np.float32)
            if self.channels > 1:
                arr = arr.reshape(-1, self.channels)
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
        x = _to_float32(arr, "audio")
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


# ---------------------------------------------------------------------------------------------------------- merged


class MergedSource(Source):
    """Audio from ``audio`` and video frames from ``video`` (e.g. a microphone and a v4l2 webcam).

    The video source is read on a helper thread and its frames are interleaved with the audio chunks as they come.
    Both clocks start when the sources start, so their origins agree to within the devices' start-up skew (tens of
    ms), which is well inside the margin used to pick the frames of an utterance.
    """

    def __init__(self, audio: Source, video: Source):
        self.audio, self.video = audio, video
        self.channels = audio.channels
        self.has_video = True
        self.name = f"{audio.name} + {video.name}"
        self._frames: queue.Queue[VideoFrame | None] = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None
        self._video_error: SourceError | None = None

    def open(self) -> None:
        self.audio.open()
        try:
            self.video.open()
        except SourceError:
            self.audio.close()
            raise

    def _pump_video(self) -> None:
        try:
            for item in self.video:
                if isinstance(item, VideoFrame):
                    try:
                        self._frames.put(item, timeout=1.0)
                    except queue.Full:
                        log.debug("merged source: dropping a video frame, consumer busy")
        except SourceError as e:
            self._video_error = e
            log.warning("video input stopped: %s", e)
        finally:
            self._frames.put(None)

    def close(self) -> None:
        self.audio.close()
        self.video.close()

    def __iter__(self) -> Iterator[SourceItem]:
        self.open()
        self._thread = threading.Thread(target=self._pump_video, name="video-source", daemon=True)
        self._thread.start()
        video_alive = True
        for item in self.audio:
            while video_alive:
                try:
                    f = self._frames.get_nowait()
                except queue.Empty:
                    break
                if f is None:
                    video_alive = False
                else:
                    yield f
            yield item
        self.video.close()

"""Live audio from a sound card through sounddevice/PortAudio (:class:`MicrophoneSource`), and the list of input
devices the CLI shows. PortAudio is imported only when a microphone is used, so servers without a sound card load
the other sources.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import SAMPLE_RATE, AudioChunk, Source, SourceError, SourceItem, StreamResampler

log = logging.getLogger(__name__)


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
        self._resampler: StreamResampler | None = None
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
                    self._resampler = StreamResampler(rate, self.channels)
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

"""The PCM wire format of pushed audio, defined once for the push source and for the service's start message,
binary protocol and client.

Pushed audio is raw PCM: little-endian samples of one of the :data:`PCM_DTYPES` (the start message's
``sample_format``), channels interleaved (one sample per channel per frame, ``(n, channels)`` row-major), at the
sender's rate, from :data:`MIN_PCM_RATE` to :data:`MAX_PCM_RATE` Hz (the push source resamples it to
``SAMPLE_RATE``).
"""

from __future__ import annotations

import numpy as np

from .base import SourceError

#: Sample format name (the start message's ``sample_format``) -> its little-endian sample type.
PCM_DTYPES: dict[str, np.dtype] = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
#: The sample rates pushed PCM may have (the service's ``max_sample_rate`` may cap it lower).
MIN_PCM_RATE, MAX_PCM_RATE = 8000, 192000


def pcm_frame_bytes(sample_format: str, channels: int) -> int:
    """Bytes of one frame: one sample of each channel."""
    return PCM_DTYPES[sample_format].itemsize * channels


def decode_pcm(data: bytes | bytearray | memoryview, sample_format: str | None, channels: int) -> np.ndarray:
    """Raw PCM -> an int16 or float32 array, ``(n,)`` for one channel, ``(n, channels)`` for more. Raises
    :class:`SourceError` for an unknown sample format (``field="dtype"``) or a length that is not whole frames."""
    if not isinstance(sample_format, str) or sample_format not in PCM_DTYPES:
        names = " or ".join(repr(name) for name in PCM_DTYPES)
        raise SourceError(f"raw PCM needs dtype {names}, got {sample_format!r}", field="dtype")
    dtype = PCM_DTYPES[sample_format]
    nbytes = len(data)
    if nbytes % (dtype.itemsize * channels):
        raise SourceError(
            f"PCM length {nbytes} bytes is not a multiple of {dtype.itemsize} bytes x {channels} channel(s)",
            field="audio")
    arr = np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="))
    return arr.reshape(-1, channels) if channels > 1 else arr


def to_float32(x: np.ndarray, field: str) -> np.ndarray:
    """int16 -> float32 in [-1, 1); float -> float32, rejecting NaN/inf (they would poison the VAD and the model)."""
    if x.dtype == np.int16:
        return x.astype(np.float32) * np.float32(1.0 / 32768.0)
    if x.dtype in (np.float32, np.float64):
        y = x.astype(np.float32, copy=False)
        if y.size and not np.isfinite(y).all():
            raise SourceError("audio contains NaN or infinite samples", field=field)
        return y
    raise SourceError(f"audio must be int16 or float32 PCM, got dtype {x.dtype}", field=field)

"""Channel and level degradations of speech: the conditions users' audio arrives in, for training and benchmarks.

A call-center line or a meeting microphone is not a studio: levels vary by +-20 dB, AGC and limiters compress, phone
lines keep 300-3400 Hz at 8 kHz through G.711 mu-law, VoIP and recordings pass low-bitrate codecs, rooms add noise
and reverberation. Training on RAVDESS alone taught the audio branch its studio's level and room as emotion, so
training draws a random chain of these per clip (:func:`random_chain`), and ``benchmarks/bench_real_speech.py``
scores the model under each named condition (:data:`CONDITIONS`). Everything is applied to the raw clip, before the
live cut and the loudness normalization, as a real channel would be.

The signal processing comes from maintained libraries, not hand-written DSP: audiomentations (gain, limiter, noise,
band-pass, room simulation through pyroomacoustics) and PyAV/FFmpeg (G.711 mu-law, MP3, Opus encode and decode).
Research code: the runtime (streaming, deploy, export) never imports it.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Callable

import av
import numpy as np

from ..features.loudness import normalize_loudness

SAMPLE_RATE = 16_000
#: Bump when a condition or the random chain changes what it gives for the same clip and seed: cached features of
#: degraded clips are keyed on it.
DEGRADE_VERSION = 1

Degradation = Callable[[np.ndarray], np.ndarray]


def _decode(data: io.BytesIO) -> np.ndarray:
    data.seek(0)
    with av.open(data) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for out in resampler.resample(frame)]
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def codec_roundtrip(audio: np.ndarray, container: str, codec: str, rate: int,
                    bit_rate: int | None = None) -> np.ndarray:
    """``audio`` (float32 mono 16 kHz) encoded with FFmpeg's ``codec`` at ``rate`` Hz and decoded back to 16 kHz,
    trimmed or zero-padded to its original length (codecs add priming delay and padding)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=rate,
                                      frame_size=stream.codec_context.frame_size or None)
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    y = _decode(buf)
    return np.pad(y, (0, max(0, len(audio) - len(y))))[: len(audio)]


def telephone(audio: np.ndarray) -> np.ndarray:
    """A narrowband phone line: 300-3400 Hz band-pass, 8 kHz G.711 mu-law (FFmpeg's pcm_mulaw), back to 16 kHz."""
    import audiomentations as A

    high = A.HighPassFilter(min_cutoff_freq=300.0, max_cutoff_freq=300.0, min_rolloff=24, max_rolloff=24, p=1.0)
    low = A.LowPassFilter(min_cutoff_freq=3400.0, max_cutoff_freq=3400.0, min_rolloff=24, max_rolloff=24, p=1.0)
    band = low(high(audio, sample_rate=SAMPLE_RATE), sample_rate=SAMPLE_RATE)
    return codec_roundtrip(band, "wav", "pcm_mulaw", 8000)


def mp3(audio: np.ndarray, kbps: int = 32) -> np.ndarray:
    return codec_roundtrip(audio, "mp3", "libmp3lame", SAMPLE_RATE, kbps * 1000)


def opus(audio: np.ndarray, kbps: int = 16) -> np.ndarray:
    return codec_roundtrip(audio, "ogg", "libopus", SAMPLE_RATE, kbps * 1000)


def gain(audio: np.ndarray, db: float) -> np.ndarray:
    """Gain as a line or a microphone applies it: what exceeds full scale clips."""
    return np.clip(audio * np.float32(10.0 ** (db / 20.0)), -1.0, 1.0).astype(np.float32)


def loud_limited(audio: np.ndarray, db: float = 12.0) -> np.ndarray:
    """+``db`` of gain through a brick-wall limiter at -1 dBFS (audiomentations' Limiter, 5 ms attack), as a hot
    microphone with an AGC gives; what the limiter lets past full scale clips."""
    import audiomentations as A

    limiter = A.Limiter(min_threshold_db=-1.0, max_threshold_db=-1.0, min_attack=0.005, max_attack=0.005,
                        min_release=0.05, max_release=0.05, threshold_mode="relative_to_signal_peak", p=1.0)
    hot = audio * np.float32(10.0 ** (db / 20.0))
    limited = limiter(hot / max(1.0, float(np.abs(hot).max())), sample_rate=SAMPLE_RATE)
    return gain(limited * np.float32(max(1.0, float(np.abs(hot).max()))), 0.0)


def noise(audio: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White Gaussian noise at ``snr_db`` below the clip's signal (audiomentations' AddGaussianSNR)."""
    import audiomentations as A

    np.random.seed(seed)  # audiomentations draws from numpy's global generator
    return A.AddGaussianSNR(min_snr_db=snr_db, max_snr_db=snr_db, p=1.0)(audio, sample_rate=SAMPLE_RATE)


def reverb(audio: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random shoebox room (audiomentations' RoomSimulator: pyroomacoustics' image-source method), same length."""
    import audiomentations as A

    np.random.seed(seed)
    room = A.RoomSimulator(min_target_rt60=0.2, max_target_rt60=0.7, calculation_mode="rt60",
                           leave_length_unchanged=True, p=1.0)
    return room(audio, sample_rate=SAMPLE_RATE).astype(np.float32)


#: The benchmark's named conditions (issue 25, 4a): each a deterministic function of the clip.
CONDITIONS: dict[str, Degradation] = {
    "clean": lambda x: x,
    "gain_-20dB": lambda x: gain(x, -20.0),
    "gain_+12dB_limited": loud_limited,
    "lufs_-16": lambda x: normalize_loudness(x, -16.0),
    "telephone_mulaw": telephone,
    "mp3_32k": mp3,
    "noise_10dB": lambda x: noise(x, 10.0),
}


@dataclass(frozen=True)
class Chain:
    """One random draw of degradations; ``name`` says what was applied (for logs and tests)."""

    name: str
    apply: Degradation


def random_chain(key: str, variant: int) -> Chain:
    """A reproducible random chain for training copy ``variant`` of the clip ``key`` (e.g. its file name): room
    (25 %), gain -20..+20 dB with clipping, or +6..+14 dB through the limiter (25 % of the gains), noise at
    5-20 dB SNR (40 %), then one channel: none (35 %), phone mu-law (25 %), MP3 24-64 kbit/s (20 %), Opus 12-32 kbit/s
    (20 %). The same (key, variant) always gives the same chain and the same noise."""
    seed = zlib.crc32(f"{key}#{variant}#v{DEGRADE_VERSION}".encode())
    rng = np.random.default_rng(seed)
    steps: list[tuple[str, Degradation]] = []
    if rng.random() < 0.25:
        steps.append(("reverb", lambda x, s=seed: reverb(x, s % 2**31)))
    if rng.random() < 0.25:
        db = float(rng.uniform(6.0, 14.0))
        steps.append((f"limited+{db:.0f}dB", lambda x, d=db: loud_limited(x, d)))
    else:
        db = float(rng.uniform(-20.0, 20.0))
        steps.append((f"gain{db:+.0f}dB", lambda x, d=db: gain(x, d)))
    if rng.random() < 0.4:
        snr = float(rng.uniform(5.0, 20.0))
        steps.append((f"noise{snr:.0f}dB", lambda x, s=snr, n=seed: noise(x, s, (n + 1) % 2**31)))
    channel = rng.random()
    if channel < 0.25:
        steps.append(("telephone", telephone))
    elif channel < 0.45:
        kbps = int(rng.choice([24, 32, 48, 64]))
        steps.append((f"mp3_{kbps}k", lambda x, k=kbps: mp3(x, k)))
    elif channel < 0.65:
        kbps = int(rng.choice([12, 16, 24, 32]))
        steps.append((f"opus_{kbps}k", lambda x, k=kbps: opus(x, k)))

    def apply(x: np.ndarray) -> np.ndarray:
        for _, step in steps:
            x = step(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    return Chain("+".join(name for name, _ in steps), apply)

"""Loudness normalization of an utterance before the speech encoder: one function for training, evaluation and live.

Why: Whisper's log-mel features carry the absolute recording level, and the acted corpus the audio branch learns
from ties level to emotion (RAVDESS neutral clips sit near -42 LUFS, strong anger near -18 LUFS, while broadcast,
meeting and phone speech sits around -16 to -26 LUFS). Unnormalized, a calm caller at an ordinary level was "anger
0.98". Every utterance is therefore scaled to one integrated loudness (ITU-R BS.1770 with its gating, through
pyloudnorm, a maintained implementation, rather than hand-written K-weighting) before the encoder, so the level of
a line, a microphone or a studio carries no label.

The target is a property of a checkpoint (``FusionConfig.audio_loudness_lufs``, stored in its metadata):
`WhisperFrontend` applies it to everything it encodes (training features, the live recognizer's pass, the
service's), and the feature cache keys on it.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["MAX_GAIN_DB", "integrated_loudness", "normalize_loudness", "scaled_loudness"]

#: The most an utterance is amplified, so that a near-silent cut (a VAD false start) is not blown up into loud
#: noise. 50 dB lifts speech as faint as -73 LUFS to -23 LUFS (RAVDESS's quietest clips turned down 20 dB sit near
#: -65).
MAX_GAIN_DB = 50.0
_BLOCK_S = 0.4  # BS.1770 gating block: shorter audio is measured over a repeated copy of itself
_REFERENCE_RMS = 0.1  # -20 dBFS: the level every utterance is measured at (see normalize_loudness)


@functools.lru_cache(maxsize=4)
def _meter(sample_rate: int):
    import pyloudnorm

    return pyloudnorm.Meter(sample_rate, block_size=_BLOCK_S)


def integrated_loudness(audio: np.ndarray, sample_rate: int = 16_000) -> float:
    """Integrated loudness in LUFS (BS.1770 K-weighting and gating); -inf for digital silence."""
    x = np.asarray(audio, dtype=np.float64)
    need = int(math.ceil(_BLOCK_S * sample_rate)) + 1
    if x.size < need:
        x = np.resize(x, need) if x.size else np.zeros(need)
    if not np.any(x):
        return float("-inf")
    with np.errstate(divide="ignore"):
        return float(_meter(sample_rate).integrated_loudness(x))


def normalize_loudness(audio: np.ndarray, target_lufs: float, sample_rate: int = 16_000,
                       max_gain_db: float = MAX_GAIN_DB) -> np.ndarray:
    """``audio`` (float32 mono) scaled to ``target_lufs`` integrated loudness, amplified by at most ``max_gain_db``.

    The measurement is made on a copy first scaled to a fixed RMS (-20 dBFS): BS.1770's absolute gate (-70 LUFS)
    would otherwise drop different blocks of the same utterance at different levels, so a -20 dB copy would not come
    out exactly like the original. With the pre-scaling the result does not depend on the input level at all (up to
    the gain cap). Digital silence is returned unchanged. Samples may exceed [-1, 1] afterwards: they feed the encoder's
    log-mel as floats, never a DAC."""
    x = np.asarray(audio, np.float32)
    loudness = scaled_loudness(x, sample_rate)
    if not math.isfinite(loudness):
        return audio
    gain_db = min(target_lufs - loudness, max_gain_db)
    return (x * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32, copy=False)


def scaled_loudness(audio: np.ndarray, sample_rate: int = 16_000) -> float:
    """Integrated loudness (LUFS) measured on a copy scaled to a fixed RMS (-20 dBFS), then shifted back: exactly
    ``20 log10(g)`` higher for ``g * audio``, which BS.1770's absolute gate (-70 LUFS) does not give for quiet audio.
    -inf for digital silence."""
    x = np.asarray(audio, np.float32)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms == 0.0:
        return float("-inf")
    pre = _REFERENCE_RMS / rms
    return integrated_loudness(x * np.float32(pre), sample_rate) - 20.0 * math.log10(pre)

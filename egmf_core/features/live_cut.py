"""The live cut: what the recognizer and the audio branch get for one utterance of a live stream.

This is the checkpoint's audio input definition (the last training stage learned from clips cut this way, and the
feature cache keys on :data:`LIVE_CUT_VERSION`), so it lives here, below both the streaming pipeline and training:
the VAD segmenter's cut (``egmf_core.features.segmenter``), framed by room tone on each side of the speech
(``frame_utterance``), encoded in the live recognizer window :data:`LIVE_WINDOW_S`. The CLI, the service and the
training/evaluation code all call these functions; loudness normalization happens after, inside
``WhisperFrontend`` (``egmf_core.features.loudness``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from egmf_core.features.audio import frame_utterance
from egmf_core.features.loudness import scaled_loudness
from egmf_core.features.segmenter import SegmenterConfig, SpeechSegment, VADSegmenter

__all__ = ["LINE_NOISE_BELOW_DB", "LIVE_CUT_VERSION", "LIVE_WINDOW_S", "TRAINING_FRAME_S", "LiveCut", "live_cut",
           "utterance_audio"]

log = logging.getLogger(__name__)

#: The recognizer's encoder window for live utterances (the segmenter caps them at 8 s): a fifth of the cost of
#: Whisper's native 30 s with the same word error rate (benchmarks/results/whisper_window.md); the shipped
#: checkpoint's last stages learned from live cuts encoded in it.
LIVE_WINDOW_S = 10.0
# Whisper's input window: longer audio cannot be encoded in one pass (the segmenter caps utterances at ~8 s anyway).
_MAX_AUDIO_S = 30.0
# Audio around the speech in the clips the audio branch was trained on (RAVDESS: ~1.0 s of room tone before and ~0.95 s
# after the speech, medians of actors 11-12).
TRAINING_FRAME_S = 1.0


def utterance_audio(segment: SpeechSegment, frame_s: float, window_s: float) -> np.ndarray:
    """What the recognizer and the audio branch get for one live utterance (the CLI's analyzer and the service's
    share it): the segment's audio, at most 30 s, framed by ``frame_s`` of room tone on each side of the speech
    without exceeding the recognizer's ``window_s`` (see ``egmf_core.features.audio.frame_utterance``)."""
    sr = segment.sample_rate
    audio = np.ascontiguousarray(segment.audio, dtype=np.float32)
    if len(audio) > _MAX_AUDIO_S * sr:
        log.warning("utterance of %.1f s truncated to %.0f s for the recognizer", len(audio) / sr, _MAX_AUDIO_S)
        audio = audio[:int(_MAX_AUDIO_S * sr)]
    duration = len(audio) / sr
    start = min(max(0.0, segment.start_s - segment.audio_start_s), duration)
    end = min(max(start, segment.end_s - segment.audio_start_s), duration)
    return frame_utterance(audio, start, end, frame_s, max(window_s, duration), sr)


#: Bump when :func:`live_cut` or the segmenter's cut change the audio they give for the same settings: features
#: cached for live cuts (``egmf_core.research.feature_lookup.whisper_audio_lookup(view="live")``) are keyed on it.
#: 5: quiet voiced frames neither start nor prolong the speech, hangover 390 ms; 3: the segmenter's VAD gain for
#: quiet lines; 2: line noise relative to the clip (1: -70 dBFS).
LIVE_CUT_VERSION = 5

#: How far below the clip's integrated loudness the cut's line noise sits (dB). Relative, so that the cut of a clip
#: turned up or down is the same cut scaled: version 1 added a fixed -70 dBFS, which after loudness normalization
#: sat ~28 dB below quiet RAVDESS clips (neutral, sad: ~-42 LUFS) and ~52 dB below loud ones (anger: ~-18 LUFS), so
#: the audible noise floor itself told the emotion, and a quiet caller sounded noisy.
LINE_NOISE_BELOW_DB = 50.0
# Line noise for a digitally silent clip (no loudness to be relative to).
_SILENT_CLIP_NOISE_DBFS = -90.0


@dataclass(frozen=True)
class LiveCut:
    """A recorded clip as the live pipeline would analyze it. ``audio``: what the recognizer and the audio branch get
    (empty when the VAD heard no speech: live, no event); ``segments``: how many segments the VAD cut (several are
    joined, from the first's audio start to the last's audio end); ``tail_ms``: audio the cut kept after the end of
    speech, before framing (nan without a segment)."""

    audio: np.ndarray
    segments: int
    tail_ms: float


def live_cut(audio: np.ndarray, segmenter: SegmenterConfig | None = None, frame_s: float = TRAINING_FRAME_S,
             window_s: float = LIVE_WINDOW_S, lead_s: float = 0.5,
             noise_below_db: float = LINE_NOISE_BELOW_DB) -> LiveCut:
    """Cut a recorded clip (float32 mono 16 kHz) as a live line would: the clip framed by ``lead_s`` of faint noise
    (white, ``noise_below_db`` under the clip's integrated loudness; a live line is never digitally silent),
    segmented by :class:`VADSegmenter` (``segmenter``, default the live settings), and the speech framed by
    :func:`utterance_audio` (``frame_s`` of room tone, within the recognizer's ``window_s``). One implementation for the
    live-cut benchmark (``benchmarks/bench_live_segments.py``) and for training and evaluating on live cuts
    (``egmf_core.research.feature_lookup.whisper_audio_lookup(view="live")``). Deterministic: the noise has a fixed
    seed."""

    cfg = segmenter or SegmenterConfig()
    audio = np.asarray(audio, np.float32)
    loudness = scaled_loudness(audio, cfg.sample_rate)
    noise_dbfs = loudness - noise_below_db if np.isfinite(loudness) else _SILENT_CLIP_NOISE_DBFS
    pad = np.zeros(int(round(lead_s * cfg.sample_rate)), np.float32)
    x = np.concatenate([pad, audio, pad])
    x += np.random.default_rng(0).normal(0, 10 ** (noise_dbfs / 20), len(x)).astype(np.float32)
    seg = VADSegmenter(cfg)
    segs = seg.feed(x) + seg.flush()
    if not segs:
        return LiveCut(np.zeros(0, np.float32), 0, float("nan"))
    first, last = segs[0], segs[-1]
    sr = cfg.sample_rate
    joined = SpeechSegment(start_s=first.start_s, end_s=last.end_s, audio_start_s=first.audio_start_s,
                           audio=x[round(first.audio_start_s * sr):round(last.audio_end_s * sr)],
                           channel=0, speaker="", sample_rate=sr)
    return LiveCut(utterance_audio(joined, frame_s, window_s), len(segs), 1000.0 * (last.audio_end_s - last.end_s))

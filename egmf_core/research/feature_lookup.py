"""Feature lookups of dataset records: Whisper encoder states of a record's audio file (:func:`whisper_audio_lookup`,
as a whole clip or as the live pipeline cuts it, optionally through a channel degradation) and face features of its
video file (:func:`face_visual_lookup`), both through the on-disk feature cache.

Used by evaluation, training, calibration and distillation alike (and by the benchmarks), so they live apart from
the evaluation command (`egmf_core.research.evaluate`) that first needed them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..data import UtteranceRecord
from ..features.live_cut import LIVE_CUT_VERSION, LIVE_WINDOW_S, TRAINING_FRAME_S, live_cut
from .examples import AudioLookup, VisualLookup

__all__ = ["AUDIO_VIEWS", "face_visual_lookup", "live_encoder_states", "degradation_of", "whisper_audio_lookup"]


def face_visual_lookup() -> VisualLookup:
    """Face features of a record's video file (FaceLandmarker at its configured fps) through the on-disk feature
    cache; a video in which no frame shows a face gives None: a missing modality, never zeros."""
    from ..features.cache import FeatureCache
    from ..features.visual import FaceFeatureExtractor

    extractor, cache = FaceFeatureExtractor(), FeatureCache()

    def lookup(rec: UtteranceRecord) -> tuple[np.ndarray, np.ndarray] | None:
        vf = extractor.extract_file(rec.video_path, cache)
        return (vf.features, vf.valid) if len(vf) and bool(np.any(vf.valid)) else None

    return lookup


AUDIO_VIEWS: tuple[str, ...] = ("clip", "live")


def live_encoder_states(audio: np.ndarray, frontend) -> np.ndarray:
    """Whisper encoder states of a recorded clip (float32 mono 16 kHz) as the live pipeline encodes it: the VAD
    segmenter's cut with the live defaults (`egmf_core.features.live_cut.live_cut`: 1 s of room tone each side) in
    `frontend`'s window (a `WhisperFrontend` with the live window and the checkpoint's loudness normalization). Empty
    (0 frames) when the VAD hears no speech."""
    cut = live_cut(audio, None, TRAINING_FRAME_S, frontend.config.window_s)
    return frontend.encoder_states(cut.audio) if cut.segments else np.zeros(0, np.float32)


def degradation_of(name: str | None, key: str):
    """The degradation named `name` for the clip `key`: a benchmark condition (`egmf_core.research.degrade.CONDITIONS`),
    `random:<k>` (training copy k's random chain, `egmf_core.research.degrade.random_chain`), or None (the clip as
    recorded)."""
    from .degrade import CONDITIONS, random_chain

    if name is None:
        return None
    if name.startswith("random:"):
        return random_chain(key, int(name.split(":", 1)[1])).apply
    if name not in CONDITIONS:
        raise ValueError(f"degradation: expected one of {', '.join(CONDITIONS)} or random:<k>, got {name!r}")
    return CONDITIONS[name]


def whisper_audio_lookup(view: str = "clip", loudness_lufs: float | None = None,
                         degradation: str | None = None) -> AudioLookup:
    """Audio features of a record's file: Whisper encoder states through the on-disk feature cache.

    `view` says which audio: `clip`, the whole file in Whisper's native 30 s window; `live`, the file as the live
    pipeline analyzes it (`egmf_core.features.live_cut.live_cut`: the VAD segmenter's cut framed by 1 s of room tone,
    encoded in the live 10 s window), so that a model can be trained and evaluated on the audio it gets live. A clip
    in which the VAD hears no speech has no audio features in the live view (live, it would give no event).
    `loudness_lufs`: the model's input normalization (`FusionConfig.audio_loudness_lufs`). `degradation`: a channel
    condition applied to the file's audio first (`degradation_of`), as a phone line or a codec would."""
    from ..features.audio import WhisperFrontend, WhisperFrontendConfig, load_audio
    from ..features.cache import ExtractorId, FeatureCache
    from ..features.segmenter import SegmenterConfig

    if view not in AUDIO_VIEWS:
        raise ValueError(f"audio view: expected one of {', '.join(AUDIO_VIEWS)}, got {view!r}")
    degradation_of(degradation, "")  # refuse an unknown name before any work
    cache = FeatureCache()
    window = LIVE_WINDOW_S if view == "live" else WhisperFrontendConfig.window_s
    frontend = WhisperFrontend(WhisperFrontendConfig(window_s=window, loudness_lufs=loudness_lufs))
    if view == "clip" and degradation is None:
        return lambda rec: frontend.encoder_states_file(rec.audio_path, cache) if rec.audio_path else None

    base = ExtractorId.of(frontend)
    name, config = base.name, dict(base.config)
    if view == "live":
        name += "-live-cut"
        config.update({"live_cut_version": LIVE_CUT_VERSION, "segmenter": dataclasses.asdict(SegmenterConfig()),
                       "frame_s": TRAINING_FRAME_S})
    if degradation is not None:
        from .degrade import DEGRADE_VERSION

        config.update({"degradation": degradation, "degrade_version": DEGRADE_VERSION})
    extractor = ExtractorId(name, base.version, config)

    def compute(path: str) -> dict[str, np.ndarray]:
        audio = load_audio(path)
        degrade = degradation_of(degradation, Path(path).name)
        if degrade is not None:
            audio = degrade(audio)
        states = live_encoder_states(audio, frontend) if view == "live" else frontend.encoder_states(audio)
        return {"encoder_states": states}

    def lookup(rec: UtteranceRecord) -> np.ndarray | None:
        if not rec.audio_path:
            return None
        states = cache.get_or_compute(rec.audio_path, extractor, lambda: compute(rec.audio_path))["encoder_states"]
        return states if len(states) else None

    return lookup

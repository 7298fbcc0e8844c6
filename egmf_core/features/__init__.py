"""Feature extractors shared by training, evaluation and the streaming service (one implementation for all three).

- `audio`: `WhisperFrontend` transcribes an utterance and returns the Whisper encoder states (AUDIO_DIM=384 at
  50 Hz) from the same encoder pass.
- `visual`: `FaceFeatureExtractor` gives VISUAL_DIM=58 values per sampled frame (52 blendshapes + head pose) with a
  validity mask for frames without a face.
- `cache`: `FeatureCache` stores per-file arrays on disk, keyed by file version and extractor identity.
"""

from egmf_core.features.audio import (
    AUDIO_DIM,
    FRAME_RATE as AUDIO_FRAME_RATE,
    MAX_SECONDS,
    SAMPLE_RATE,
    AudioAnalysis,
    WhisperFrontend,
    WhisperFrontendConfig,
    load_audio,
    num_frames,
    validate_audio,
)
from egmf_core.features.cache import CACHE_DIR_ENV, ExtractorId, FeatureCache
from egmf_core.features.visual import (
    BLENDSHAPE_NAMES,
    FEATURE_NAMES as VISUAL_FEATURE_NAMES,
    VISUAL_DIM,
    FaceFeatureConfig,
    FaceFeatureExtractor,
    VisualFeatures,
    extract_span,
    read_video_frames,
)

__all__ = [
    "AUDIO_DIM",
    "AUDIO_FRAME_RATE",
    "BLENDSHAPE_NAMES",
    "CACHE_DIR_ENV",
    "MAX_SECONDS",
    "SAMPLE_RATE",
    "VISUAL_DIM",
    "VISUAL_FEATURE_NAMES",
    "AudioAnalysis",
    "ExtractorId",
    "FaceFeatureConfig",
    "FaceFeatureExtractor",
    "FeatureCache",
    "VisualFeatures",
    "WhisperFrontend",
    "WhisperFrontendConfig",
    "extract_span",
    "load_audio",
    "num_frames",
    "read_video_frames",
    "validate_audio",
]

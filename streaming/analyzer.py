"""The EGMF implementation of :class:`streaming.pipeline.UtteranceAnalyzer`.

Per utterance: ONE Whisper encoder pass gives both the transcript and the (T, 384) audio features
(``egmf_core.features.audio.WhisperFrontend.process``); the frames inside the utterance span give (T, 58) face
features with a validity mask (``egmf_core.features.visual.FaceFeatureExtractor.extract``); then the predictor
fuses them with the conversation context (``egmf_core.predictor.EGMFPredictor.predict``, which appends the turn to
the conversation, so context is incremental and bounded by the predictor).

The model packages are imported inside the constructor: the rest of :mod:`streaming` (sources, segmentation, event
schema, CLI argument handling) must work, and report clear errors, without loading torch or an LLM.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .pipeline import AnalysisResult, analyze_and_commit, check_cancelled
from .segmenter import SegmenterConfig, SpeechSegment

__all__ = ["EGMFAnalyzerConfig", "EGMFUtteranceAnalyzer", "LiveCut", "ModelUnavailableError", "live_cut",
           "utterance_audio"]

log = logging.getLogger(__name__)

# Whisper's input window: longer audio cannot be encoded in one pass (the segmenter caps utterances at ~8 s anyway).
_MAX_AUDIO_S = 30.0
# Audio around the speech in the clips the audio branch was trained on (RAVDESS: ~1.0 s of room tone before and ~0.95 s
# after the speech, medians of actors 11-12).
TRAINING_FRAME_S = 1.0


def utterance_audio(segment: SpeechSegment, frame_s: float, window_s: float) -> np.ndarray:
    """What the recognizer and the audio branch get for one live utterance (the CLI's analyzer and the service's
    share it): the segment's audio, at most 30 s, framed by ``frame_s`` of room tone on each side of the speech
    without exceeding the recognizer's ``window_s`` (see ``egmf_core.features.audio.frame_utterance``)."""
    from egmf_core.features.audio import frame_utterance

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
#: cached for live cuts (``egmf_core.evaluate.whisper_audio_lookup(view="live")``) are keyed on it.
LIVE_CUT_VERSION = 1


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
             window_s: float = 10.0, lead_s: float = 0.5, noise_dbfs: float = -70.0) -> LiveCut:
    """Cut a recorded clip (float32 mono 16 kHz) as a live line would: the clip framed by ``lead_s`` of faint noise
    (``noise_dbfs``; a live line is never digitally silent), segmented by :class:`VADSegmenter` (``segmenter``,
    default the live settings), and the speech framed by :func:`utterance_audio` (``frame_s`` of room tone, within
    the recognizer's ``window_s``). One implementation for the live-cut benchmark
    (``benchmarks/bench_live_segments.py``) and for training and evaluating on live cuts
    (``egmf_core.evaluate.whisper_audio_lookup(view="live")``). Deterministic: the noise has a fixed seed."""
    from .segmenter import VADSegmenter

    cfg = segmenter or SegmenterConfig()
    pad = np.zeros(int(round(lead_s * cfg.sample_rate)), np.float32)
    x = np.concatenate([pad, np.asarray(audio, np.float32), pad])
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


class ModelUnavailableError(RuntimeError):
    """The model (or one of its parts) cannot be loaded; the message is one line for the CLI."""


@dataclass
class EGMFAnalyzerConfig:
    """``checkpoint``: ``"default"`` (the shipped model) or a checkpoint path. ``whisper_model_path``: a local
    CTranslate2 Whisper folder (default: the bundled tiny.en). ``language``: the recognizer/predictor language
    (``None`` = the recognizer's default, ``"en"`` for tiny.en). ``use_video``: compute face features when the stream
    has video (needs mediapipe and the face model; without them the analyzer carries on with audio and text and
    logs why once). ``cpu_threads``: recognizer threads; 1 because tiny.en's decoder steps are too small to split (on
    2 cores, 1 thread decodes faster and encodes about as fast: ASR p50 / p95 218 / 338 ms vs 255 / 458 ms with 2,
    ``benchmarks/bench_streaming_latency.py --asr-threads 2 1``). ``asr_window_s``: the recognizer's encoder window. Live
    utterances are at most ``max_utterance_s`` (8 s) long, and the encoder's cost follows the window, not the speech:
    10 s costs a fifth of Whisper's native 30 s, with the same word error rate (benchmarks/results/whisper_window.md);
    the shipped checkpoint's last training stage learned from live cuts in the 10 s window (its earlier stages from
    whole clips in 30 s). ``frame_s``: room tone the recognizer
    and the audio branch get on each side of the speech (:func:`utterance_audio`); the default is the training
    clips' framing, 0 gives them the segmenter's cut alone."""

    checkpoint: str = "default"
    whisper_model_path: str | None = None
    language: str | None = None
    use_video: bool = True
    face_model_path: str | None = None
    cpu_threads: int = 1
    asr_window_s: float = 10.0
    frame_s: float = TRAINING_FRAME_S

    def __post_init__(self) -> None:
        if not self.frame_s >= 0:
            raise ValueError(f"frame_s: expected seconds >= 0, got {self.frame_s}")


class EGMFUtteranceAnalyzer:
    """Whisper frontend + face features + EGMF predictor. Load once, share across streams (one conversation each).

    ``predictor``/``frontend``/``face`` may be passed in (already loaded, e.g. by the service that shares them
    between workers); otherwise they are loaded from ``config``.
    """

    def __init__(self, config: EGMFAnalyzerConfig | None = None, *, predictor: Any = None, frontend: Any = None,
                 face: Any = None):
        self.config = config or EGMFAnalyzerConfig()
        cfg = self.config
        warm = [frontend is None, predictor is None]  # what this analyzer loads itself, it warms up
        if frontend is None:
            try:
                from egmf_core.features.audio import (
                    WhisperFrontend,
                    WhisperFrontendConfig,
                )
            except ImportError as e:
                raise ModelUnavailableError(f"speech recognizer unavailable: {e}") from e
            kwargs: dict[str, Any] = {"model_path": cfg.whisper_model_path, "cpu_threads": cfg.cpu_threads,
                                      "window_s": cfg.asr_window_s}
            if cfg.language is not None:
                kwargs["language"] = cfg.language
            try:
                frontend = WhisperFrontend(WhisperFrontendConfig(**kwargs))
            except (OSError, RuntimeError, ValueError) as e:
                raise ModelUnavailableError(f"cannot load the speech recognizer: {e}") from e
        if predictor is None:
            try:
                from egmf_core.predictor import EGMFPredictor
            except ImportError as e:
                raise ModelUnavailableError(f"EGMF predictor unavailable: {e}") from e
            try:
                predictor = EGMFPredictor.load(cfg.checkpoint)
            except (OSError, RuntimeError, ValueError, KeyError) as e:
                raise ModelUnavailableError(f"cannot load EGMF checkpoint {cfg.checkpoint!r}: {e}") from e
        for model, loaded_here in zip((frontend, predictor), warm):
            if loaded_here:  # so that the first utterance pays no start-up cost
                model.warm_up()
        self.frontend = frontend
        self.predictor = predictor
        self._face = face
        self._face_failed = face is None and not cfg.use_video
        self._face_lock = threading.Lock()

    @property
    def version(self) -> str:
        return str(self.predictor.version)

    def new_conversation(self) -> Any:
        return self.predictor.new_conversation()

    def _face_extractor(self) -> Any:
        """Load the face model on first use: streams without video never pay for importing mediapipe."""
        if self._face is not None or self._face_failed:
            return self._face
        with self._face_lock:
            if self._face is None and not self._face_failed:
                try:
                    from egmf_core.features.visual import (
                        FaceFeatureConfig,
                        FaceFeatureExtractor,
                    )

                    self._face = FaceFeatureExtractor(FaceFeatureConfig(model_path=self.config.face_model_path))
                except (ImportError, OSError, RuntimeError, ValueError) as e:
                    self._face_failed = True
                    log.warning("face features disabled, analyzing audio and text only: %s", e)
        return self._face

    def analyze(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                conversation: Any) -> AnalysisResult:
        """Analyze one utterance and add it to ``conversation``."""
        return analyze_and_commit(self, segment, video, conversation)

    def analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                            conversation: Any, cancel: threading.Event | None = None) -> AnalysisResult:
        """``analyze`` without adding the turn to ``conversation`` (the pipeline's speculative end of utterance);
        ``cancel`` is checked before each stage: speech recognition, face features, the model."""
        check_cancelled(cancel)
        audio = utterance_audio(segment, self.config.frame_s, self.config.asr_window_s)
        asr = self.frontend.process(audio, language=self.config.language)
        text = asr.text.strip()
        timings = {"asr_encoder": float(asr.encoder_ms), "asr_decode": float(asr.asr_ms - asr.encoder_ms)}
        check_cancelled(cancel)

        visual_features = visual_valid = None
        if video:
            face = self._face_extractor()
            if face is not None:
                t0 = time.perf_counter()
                vf = face.extract(video)
                timings["face"] = (time.perf_counter() - t0) * 1000.0
                if len(vf) and bool(np.any(vf.valid)):  # no face at all = no visual modality, not zeros
                    visual_features, visual_valid = vf.features, vf.valid
        check_cancelled(cancel)

        t0 = time.perf_counter()
        p, pending = self.predictor.predict_uncommitted(
            conversation,
            text=text,
            speaker=segment.speaker,
            audio_features=asr.encoder_states,
            visual_features=visual_features,
            visual_valid=visual_valid,
            language=asr.language,
        )
        # predict = the whole predictor call; fusion/llm_* its parts where the model reports them
        timings["predict"] = (time.perf_counter() - t0) * 1000.0
        timings.update(getattr(p, "timings_ms", None) or {})
        return AnalysisResult(
            text=text,
            language=asr.language,
            emotion=p.emotion,
            emotion_probs=dict(p.emotion_probs),
            sentiment_score=float(p.sentiment_score),
            sentiment_label=p.sentiment_label,
            alpha=[float(a) for a in p.alpha],
            modalities=dict(p.modalities),
            timings_ms={k: round(float(v), 2) for k, v in timings.items()},
            prompt_tokens=dict(p.prompt_tokens or {}),
            pending=pending,
        )

    def commit(self, conversation: Any, result: AnalysisResult) -> bool:
        """Add an uncommitted result's turn to ``conversation``; False if the context changed since."""
        return bool(self.predictor.commit(conversation, result.pending))

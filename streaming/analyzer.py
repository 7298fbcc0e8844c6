"""The EGMF implementation of :class:`streaming.pipeline.UtteranceAnalyzer`.

Per utterance: ONE Whisper encoder pass gives both the transcript and the (T, 384) audio features
(``egmf_core.features.audio.WhisperFrontend.process``); the frames inside the utterance span give (T, 58) face
features with a validity mask (:class:`streaming.face.FaceModel`, loaded on first use); then the predictor fuses
them with the conversation context (``egmf_core.predictor.EGMFPredictor.predict_uncommitted``, then ``commit``
appends the turn to the conversation, so context is incremental and bounded by the predictor). The step itself is
:func:`streaming.analysis.analyze_utterance`, shared with the service; here it runs over the local models
(:class:`WhisperRecognizer`, :class:`PredictorScorer`).

The model packages are imported inside the constructor: the rest of :mod:`streaming` (sources, segmentation, event
schema, CLI argument handling) must work, and report clear errors, without loading torch or an LLM.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from egmf_core.features.live_cut import LIVE_WINDOW_S, TRAINING_FRAME_S
from egmf_core.features.segmenter import SpeechSegment
from egmf_core.precision import PRECISIONS

from .analysis import Recognition, analyze_utterance, prediction_fields
from .face import FaceModel
from .pipeline import AnalysisResult, analyze_and_commit

__all__ = ["EGMFAnalyzerConfig", "EGMFUtteranceAnalyzer", "ModelUnavailableError", "PredictorScorer",
           "WhisperRecognizer"]


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
    ``benchmarks/bench_streaming_latency.py --asr-threads 2 1``). ``asr_window_s``: the recognizer's encoder window.
    Live utterances are at most ``max_utterance_s`` (8 s) long, and the encoder's cost follows the window, not the
    speech: 10 s costs a fifth of Whisper's native 30 s, with the same word error rate
    (benchmarks/results/whisper_window.md); the shipped checkpoint's last training stage learned from live cuts in the
    10 s window (its earlier stages from whole clips in 30 s). ``frame_s``: room tone the recognizer and the audio
    branch get on each side of the speech (``egmf_core.features.live_cut.utterance_audio``); the default is the training
    clips' framing, 0 gives them the segmenter's cut alone. ``llm_precision``: the number format of the LLM's
    projections (``egmf_core.precision``: "auto" runs bfloat16 on CPUs with native bf16 where a start-up probe finds it faster, else the fp32
    reference)."""

    checkpoint: str = "default"
    whisper_model_path: str | None = None
    language: str | None = None
    use_video: bool = True
    face_model_path: str | None = None
    cpu_threads: int = 1
    asr_window_s: float = LIVE_WINDOW_S
    frame_s: float = TRAINING_FRAME_S
    llm_precision: str = "auto"

    def __post_init__(self) -> None:
        if not self.frame_s >= 0:
            raise ValueError(f"frame_s: expected seconds >= 0, got {self.frame_s}")
        if self.llm_precision not in PRECISIONS:
            raise ValueError(f"llm_precision: expected one of {', '.join(PRECISIONS)}, got {self.llm_precision!r}")


class EGMFUtteranceAnalyzer:
    """Whisper frontend + face features + EGMF predictor. Load once, share across streams (one conversation each).

    ``predictor``/``frontend`` may be passed in (already loaded, e.g. shared between analyzers), and ``face`` (a
    :class:`streaming.face.FaceModel`); otherwise they are made from ``config``.
    """

    def __init__(self, config: EGMFAnalyzerConfig | None = None, *, predictor: Any = None, frontend: Any = None,
                 face: FaceModel | None = None):
        self.config = config or EGMFAnalyzerConfig()
        cfg = self.config
        warm = [frontend is None, predictor is None]  # what this analyzer loads itself, it warms up
        if predictor is None:
            try:
                from egmf_core.predictor import EGMFPredictor
            except ImportError as e:
                raise ModelUnavailableError(f"EGMF predictor unavailable: {e}") from e
            try:
                predictor = EGMFPredictor.load(cfg.checkpoint, llm_precision=cfg.llm_precision)
            except (OSError, RuntimeError, ValueError, KeyError) as e:
                raise ModelUnavailableError(f"cannot load EGMF checkpoint {cfg.checkpoint!r}: {e}") from e
        # the recognizer normalizes audio as the checkpoint was trained; a predictor that does not say (a stand-in in
        # tests or a custom analyzer) takes the audio as recorded
        loudness = getattr(predictor, "audio_loudness_lufs", None)
        if frontend is None:
            try:
                from egmf_core.features.audio import (
                    WhisperFrontend,
                    WhisperFrontendConfig,
                )
            except ImportError as e:
                raise ModelUnavailableError(f"speech recognizer unavailable: {e}") from e
            kwargs: dict[str, Any] = {"model_path": cfg.whisper_model_path, "cpu_threads": cfg.cpu_threads,
                                      "window_s": cfg.asr_window_s, "loudness_lufs": loudness}
            if cfg.language is not None:
                kwargs["language"] = cfg.language
            try:
                frontend = WhisperFrontend(WhisperFrontendConfig(**kwargs))
            except (OSError, RuntimeError, ValueError) as e:
                raise ModelUnavailableError(f"cannot load the speech recognizer: {e}") from e
        elif frontend.config.loudness_lufs != loudness:
            raise ModelUnavailableError(
                f"the speech recognizer normalizes audio to {frontend.config.loudness_lufs} LUFS but the checkpoint "
                f"was trained on audio normalized to {loudness} LUFS (WhisperFrontendConfig.loudness_lufs)")
        for model, loaded_here in zip((frontend, predictor), warm):
            if loaded_here:  # so that the first utterance pays no start-up cost
                model.warm_up()
        self.frontend = frontend
        self.predictor = predictor
        self.face = face if face is not None else FaceModel(cfg.face_model_path, enabled=cfg.use_video)

    @property
    def version(self) -> str:
        return str(self.predictor.version)

    def new_conversation(self) -> Any:
        return self.predictor.new_conversation()

    def analyze(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                conversation: Any) -> AnalysisResult:
        """Analyze one utterance and add it to ``conversation``."""
        return analyze_and_commit(self, segment, video, conversation)

    def analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                            conversation: Any, cancel: threading.Event | None = None) -> AnalysisResult:
        """``analyze`` without adding the turn to ``conversation`` (the pipeline's speculative end of utterance):
        :func:`streaming.analysis.analyze_utterance` over this analyzer's recognizer, face model and predictor;
        ``cancel`` is checked before speech recognition and before the model."""
        cfg = self.config
        return analyze_utterance(segment, video, conversation, recognizer=WhisperRecognizer(self.frontend),
                                 scorer=PredictorScorer(self.predictor), face=self.face, frame_s=cfg.frame_s,
                                 window_s=cfg.asr_window_s, language=cfg.language, cancel=cancel)

    def commit(self, conversation: Any, result: AnalysisResult) -> bool:
        """Add an uncommitted result's turn to ``conversation``; False if the context changed since."""
        return bool(self.predictor.commit(conversation, result.pending))


class WhisperRecognizer:
    """:class:`streaming.analysis.Recognizer` over a local ``WhisperFrontend``: one encoder pass gives the transcript
    and the audio features; it recognizes when asked, so the call it returns answers at once."""

    def __init__(self, frontend: Any):
        self.frontend = frontend

    def transcribe(self, audio: np.ndarray, language: str | None) -> Callable[[], Recognition]:
        asr = self.frontend.process(audio, language=language)
        recognition = Recognition(asr.text.strip(), asr.language, asr.encoder_states,
                                  {"asr_encoder": float(asr.encoder_ms),
                                   "asr_decode": float(asr.asr_ms - asr.encoder_ms)})
        return lambda: recognition


class PredictorScorer:
    """:class:`streaming.analysis.Scorer` over a local ``EGMFPredictor`` and its conversations
    (``predict_uncommitted``; the analyzer's ``commit`` adds the turn)."""

    def __init__(self, predictor: Any):
        self.predictor = predictor

    def score(self, conversation: Any, text: str, speaker: str, audio: np.ndarray | None,
              visual: np.ndarray | None, visual_valid: np.ndarray | None,
              language: str | None) -> tuple[dict[str, Any], Any]:
        p, pending = self.predictor.predict_uncommitted(conversation, text=text, speaker=speaker, audio_features=audio,
                                                        visual_features=visual, visual_valid=visual_valid,
                                                        language=language)
        return prediction_fields(p), pending

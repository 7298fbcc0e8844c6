"""Real-time streaming layer of the EGMF analyzer: live audio/video -> utterances -> one event per utterance.

* :mod:`streaming.events`: the one event schema (utterance, speech_started, error) used by the CLI, the service
  and clients.
* :mod:`streaming.sources`: microphone, files/URLs/webcams (PyAV), pushed PCM; timestamped chunks in stream time.
* :mod:`streaming.pipeline`: :class:`StreamAnalyzer` wiring source -> segmenter (``egmf_core.features.segmenter``,
  shared with training's live cuts) -> analyzer -> events.
* :mod:`streaming.analyzer`: the EGMF analyzer (Whisper frontend + face features + predictor).
* :mod:`streaming.cli`: ``python -m streaming``.

Importing this package loads numpy only; PyAV, webrtcvad, sounddevice and the model are imported when used.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    # events
    "EMOTION_LABELS", "SENTIMENT_LABELS", "EventValidationError", "UtteranceEvent", "SpeechStartedEvent",
    "ErrorEvent", "EmotionResult", "SentimentResult", "Modalities", "parse_event",
    # sources
    "SourceError", "AudioChunk", "VideoFrame", "MicrophoneSource", "AVFileSource", "AVSourceConfig", "PushSource",
    "MergedSource",
    # segmentation
    "SegmenterConfig", "SpeechSegment", "VADSegmenter", "ChannelSegmenter",
    # pipeline
    "AnalysisResult", "UtteranceAnalyzer", "StreamConfig", "StreamAnalyzer",
    # model
    "EGMFUtteranceAnalyzer", "EGMFAnalyzerConfig",
]  # fmt: skip

#: Public name -> the module that defines it. The segmenter lives in egmf_core (training's live cuts use it too).
_WHERE = {
    **dict.fromkeys(["EMOTION_LABELS", "SENTIMENT_LABELS", "EventValidationError", "UtteranceEvent",
                     "SpeechStartedEvent", "ErrorEvent", "EmotionResult", "SentimentResult", "Modalities",
                     "parse_event"], "streaming.events"),
    **dict.fromkeys(["SourceError", "AudioChunk", "VideoFrame", "MicrophoneSource", "AVFileSource", "AVSourceConfig",
                     "PushSource", "MergedSource"], "streaming.sources"),
    **dict.fromkeys(["SegmenterConfig", "SpeechSegment", "VADSegmenter", "ChannelSegmenter"],
                    "egmf_core.features.segmenter"),
    **dict.fromkeys(["AnalysisResult", "UtteranceAnalyzer", "StreamConfig", "StreamAnalyzer"], "streaming.pipeline"),
    **dict.fromkeys(["EGMFUtteranceAnalyzer", "EGMFAnalyzerConfig"], "streaming.analyzer"),
}


def __getattr__(name: str) -> Any:
    # Lazy re-exports: `from streaming import UtteranceEvent` must not import PyAV or the model.
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'streaming' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value

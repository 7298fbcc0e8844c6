"""The pipeline's contract with the model: what an analyzer returns for an utterance and the two protocols it may
implement.

:class:`UtteranceAnalyzer` is all the pipeline needs (the EGMF implementation is
:class:`streaming.analyzer.EGMFUtteranceAnalyzer`, the service's is :class:`deploy.remote_analyzer.RemoteAnalyzer`);
:class:`SpeculativeAnalyzer` adds analysis without committing the turn, for the speculative end of utterance
(:mod:`streaming.pipeline.speculation`). Kept apart from the stream's bookkeeping so that an analyzer's author reads
this file alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from egmf_core.features.segmenter import SpeechSegment

__all__ = ["AnalysisResult", "AnalysisCancelled", "check_cancelled", "analyze_and_commit", "UtteranceAnalyzer",
           "SpeculativeAnalyzer"]


@dataclass
class AnalysisResult:
    """What an :class:`UtteranceAnalyzer` returns for one utterance (the model-side half of an event).

    ``emotion_probs`` must cover the 7 labels of :data:`streaming.events.EMOTION_LABELS`; ``alpha`` holds the 3
    gate weights in :data:`streaming.events.MODALITIES` order; ``modalities`` says which inputs carried data.
    ``timings_ms`` (optional): wall time per stage of this analysis (e.g. ``asr_encoder``, ``fusion``,
    ``llm_prefill``), for logs and benchmarks; it is not part of the event, nor is ``prompt_tokens`` (optional: how
    many prompt ids came from the model's KV cache and how many its prompt pass encoded). ``pending``: for a result of
    :meth:`SpeculativeAnalyzer.analyze_uncommitted`, what its ``commit`` needs (opaque to the pipeline).
    """

    text: str
    language: str
    emotion: str
    emotion_probs: dict[str, float]
    sentiment_score: float
    sentiment_label: str
    alpha: list[float]
    modalities: dict[str, bool]
    timings_ms: dict[str, float] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    pending: Any = field(default=None, repr=False)


class AnalysisCancelled(Exception):
    """Raised by :meth:`SpeculativeAnalyzer.analyze_uncommitted` when its ``cancel`` event was set."""


def check_cancelled(cancel: threading.Event | None) -> None:
    """For analyzers: raise :class:`AnalysisCancelled` if ``cancel`` is set (call it between stages)."""
    if cancel is not None and cancel.is_set():
        raise AnalysisCancelled("speech resumed")


@runtime_checkable
class UtteranceAnalyzer(Protocol):
    """The pluggable per-utterance step.

    ``new_conversation()`` makes the per-stream context object passed back to every ``analyze`` call of that
    stream (the analyzer owns its contents; the pipeline only keeps it). ``analyze`` gets the segment (16 kHz
    float32 audio with pre/post-roll, speaker, channel, span), the video frames inside the span (``None`` when the
    stream has no video; an empty list when it has video but no frame fell inside the span), and the conversation.
    ``version`` identifies the model/checkpoint in every event.
    """

    @property
    def version(self) -> str: ...

    def new_conversation(self) -> Any: ...

    def analyze(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                conversation: Any) -> AnalysisResult: ...


@runtime_checkable
class SpeculativeAnalyzer(UtteranceAnalyzer, Protocol):
    """An analyzer that can also analyze an utterance without adding it to the conversation, so that the pipeline
    can start on a tentative end of utterance and keep the result only if the utterance really ends there.

    ``analyze_uncommitted`` does what ``analyze`` does except the final append to ``conversation``; it may be called
    from a worker thread, checks ``cancel`` between its stages and raises :class:`AnalysisCancelled` when it is set.
    ``commit`` adds the result's turn to the conversation and returns True, or returns False (and changes nothing)
    when the conversation changed since the result's context was taken.
    """

    def analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                            conversation: Any, cancel: threading.Event) -> AnalysisResult: ...

    def commit(self, conversation: Any, result: AnalysisResult) -> bool: ...


def analyze_and_commit(analyzer: SpeculativeAnalyzer, segment: SpeechSegment,
                       video: list[tuple[float, np.ndarray]] | None, conversation: Any) -> AnalysisResult:
    """``analyze`` for a :class:`SpeculativeAnalyzer`: analyze, then add the turn to the conversation."""
    result = analyzer.analyze_uncommitted(segment, video, conversation, None)
    if not analyzer.commit(conversation, result):
        raise RuntimeError("the conversation changed during the analysis: analyze one stream's utterances in order")
    return result

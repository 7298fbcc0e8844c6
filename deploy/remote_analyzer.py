"""The ingress's per-utterance step: :class:`RemoteAnalyzer` asks the ``ASR`` and ``ModelServer`` deployments.

It is the :class:`streaming.pipeline.UtteranceAnalyzer` of every stream and upload of the ingress. The step itself is
the CLI's, :func:`streaming.analysis.analyze_utterance` (the audio cut as the model was trained, recognition, the face
features of the utterance's video frames computed here by :class:`streaming.face.FaceModel`, shared by the replica's
streams, while the recognizer works, then the model); here its recognizer and scorer are the two deployments, each
answer waited for with a timeout. The ingress keeps the stream's conversation (``egmf_core.conversation.Conversation``,
the CLI's type: the tokenized turns the model deployment returns, sent back with each request). A failure reaches the
client as a :class:`ServiceFailure` (a stable code, no internal detail); the detail is logged with the stream and the
utterance.
"""

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deploy.settings import Timeouts
from egmf_core.conversation import ContextWindow, Conversation
from egmf_core.features.segmenter import SpeechSegment
from streaming.analysis import Recognition, analyze_utterance
from streaming.events import ErrorEvent
from streaming.face import FaceModel
from streaming.pipeline import AnalysisResult, analyze_and_commit

log = logging.getLogger("deploy")

#: Turns kept per stream in the ingress; the model's ContextWindow keeps the last max_context_turns of them.
MAX_HISTORY_TURNS = 32


def new_history() -> Conversation:
    """An empty conversation that keeps the last ``MAX_HISTORY_TURNS`` turns."""
    return Conversation(ContextWindow(MAX_HISTORY_TURNS))


class ServiceFailure(Exception):
    """A failure to tell a client: ``code`` is a stable error code, ``message`` says what happened without any
    internal detail (the exception behind it is logged on the server with the stream and the utterance)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _segment_key(seg: SpeechSegment) -> tuple[int, float, float]:
    return seg.channel, seg.start_s, seg.end_s


@dataclass
class _Failure:
    segment: SpeechSegment
    failure: ServiceFailure


class _DeploymentCalls:
    """The :class:`streaming.analysis.Recognizer` and :class:`streaming.analysis.Scorer` of one utterance over the
    ASR and ModelServer deployments. ``wait(response, timeout_s, what)`` waits for an answer with its timeout and
    turns a failure into a :class:`ServiceFailure` (logged with the stream and the utterance)."""

    def __init__(self, asr: DeploymentHandle, model: DeploymentHandle, timeouts: Timeouts,
                 wait: Callable[[DeploymentResponse, float, str], Any]):
        self.asr = asr
        self.model = model
        self.timeouts = timeouts
        self.wait = wait

    def transcribe(self, audio: np.ndarray, language: str | None) -> Callable[[], Recognition]:
        response = self.asr.transcribe.remote(audio, language)

        def recognition() -> Recognition:
            asr = self.wait(response, self.timeouts.asr_s, "speech recognizer")
            return Recognition(asr["text"], asr["language"], asr["encoder_states"],
                               {"asr_encoder": float(asr["encoder_ms"]),
                                "asr_decode": float(asr["asr_ms"] - asr["encoder_ms"])})

        return recognition

    def score(self, conversation: Conversation, text: str, speaker: str, audio: np.ndarray | None,
              visual: np.ndarray | None, visual_valid: np.ndarray | None,
              language: str | None) -> tuple[dict[str, Any], tuple[Any, int]]:
        """The model deployment's answer (it is stateless: the stream's turns travel with the request) and the
        pending turn (None for an empty transcript) with the conversation's version."""
        context, version = conversation.context()
        p = self.wait(self.model.predict.remote({
            "text": text, "speaker": speaker, "audio_features": audio, "visual_features": visual,
            "visual_valid": visual_valid, "language": language, "context": list(context),
        }), self.timeouts.model_s, "emotion model")
        return p, (p["turn"], version)


class RemoteAnalyzer:
    """:class:`streaming.pipeline.UtteranceAnalyzer` over the ASR and ModelServer deployments, with the face
    features of the utterance's video frames computed in the ingress (the frames are already here; shipping decoded
    frames to another process would cost more than the landmarker). ``analyze`` blocks (it is called from a stream's
    worker thread, never from the event loop).

    Every replica call has a timeout: a hung or dead replica costs an utterance an error event, never the stream.
    Failures reach the client through :meth:`public_error` as a stable code and a message without internal detail;
    the detail is logged here with the stream id and the utterance."""

    def __init__(self, asr: DeploymentHandle, model: DeploymentHandle, version: str, language: str | None,
                 face: FaceModel, frame_s: float, window_s: float, timeouts: Timeouts, stream_id: str = "",
                 next_utterance_id: Callable[[], int] = lambda: 0):
        self.asr = asr
        self.model = model
        self._version = version
        self.language = language
        self.face = face
        self.frame_s = frame_s
        self.window_s = window_s
        self.timeouts = timeouts
        self.stream_id = stream_id
        #: The id the next successful utterance will get (for the server log of a failed one).
        self.next_utterance_id = next_utterance_id
        #: Failures of ``analyze`` not yet turned into error events (the pipeline reports them in order).
        self.failures: deque[_Failure] = deque()
        # A speculative analysis that timed out: the pipeline analyzes the same segment again, which would wait the
        # whole timeout a second time.
        self._speculation_timeout: tuple[tuple[int, float, float], ServiceFailure] | None = None

    @property
    def version(self) -> str:
        return self._version

    def new_conversation(self) -> Conversation:
        return new_history()

    def _result(self, response: DeploymentResponse, timeout_s: float, what: str, seg: SpeechSegment) -> Any:
        try:
            return response.result(timeout_s=timeout_s)
        except TimeoutError:
            response.cancel()
            log.warning("stream %s utterance %d (%.2f-%.2f s): the %s did not answer within %g s", self.stream_id,
                        self.next_utterance_id(), seg.start_s, seg.end_s, what, timeout_s)
            raise ServiceFailure("analysis_timeout", f"the {what} did not answer within {timeout_s:g} s") from None
        except Exception as e:  # a dead replica (RayActorError), an error raised in it (with its traceback)
            log.error("stream %s utterance %d (%.2f-%.2f s): the %s failed: %s: %s", self.stream_id,
                      self.next_utterance_id(), seg.start_s, seg.end_s, what, type(e).__name__, e)
            raise ServiceFailure("analysis_failed", f"the {what} failed (the details are in the server log)") from e

    def analyze(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                conversation: Conversation) -> AnalysisResult:
        try:
            spec, self._speculation_timeout = self._speculation_timeout, None
            if spec is not None and spec[0] == _segment_key(segment):
                raise spec[1]
            return analyze_and_commit(self, segment, video, conversation)
        except ServiceFailure as f:
            failure = f
        except Exception as e:
            log.exception("stream %s utterance %d (%.2f-%.2f s): analysis failed", self.stream_id,
                          self.next_utterance_id(), segment.start_s, segment.end_s)
            failure = ServiceFailure("analysis_failed", "internal error (the details are in the server log)")
            failure.__cause__ = e
        self.failures.append(_Failure(segment, failure))
        raise failure

    def analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                            conversation: Conversation, cancel: threading.Event | None = None) -> AnalysisResult:
        """``analyze`` without adding the turn to the stream's history (the pipeline's speculative end of
        utterance); ``cancel`` is checked before the recognizer is asked and before the model is."""
        calls = _DeploymentCalls(self.asr, self.model, self.timeouts,
                                 lambda response, timeout_s, what: self._result(response, timeout_s, what, segment))
        try:
            return analyze_utterance(segment, video, conversation, recognizer=calls, scorer=calls, face=self.face,
                                     frame_s=self.frame_s, window_s=self.window_s, language=self.language,
                                     cancel=cancel)
        except ServiceFailure as f:
            if cancel is not None and f.code == "analysis_timeout":
                self._speculation_timeout = (_segment_key(segment), f)
            raise

    def commit(self, conversation: Conversation, result: AnalysisResult) -> bool:
        return conversation.add(*result.pending)

    def public_error(self, event: ErrorEvent) -> ErrorEvent:
        """The pipeline's ``analysis_failed`` event (whose message carries the exception's text) as the client sees
        it: the failure's stable code (``analysis_timeout``, ``analysis_failed``) and the utterance's span."""
        if not self.failures:  # not raised by analyze (cannot happen with the pipeline as it is): say nothing more
            return ErrorEvent(event.stream_id, event.code, "an utterance could not be analyzed (the details are in "
                              "the server log)", start=event.start, end=event.end)
        f = self.failures.popleft()
        seg = f.segment
        return ErrorEvent(event.stream_id, f.failure.code, f"utterance ({seg.speaker}): {f.failure.message}",
                          start=round(seg.start_s, 6), end=round(seg.end_s, 6))

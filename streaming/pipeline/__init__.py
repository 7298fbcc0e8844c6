"""Source -> segmenter -> per-utterance analysis -> events.

:class:`StreamAnalyzer` is model-agnostic: the per-utterance work sits behind the small :class:`UtteranceAnalyzer`
protocol (the EGMF implementation is :class:`streaming.analyzer.EGMFUtteranceAnalyzer`), so that segmentation,
ordering, video alignment, latency accounting and the event schema are the same whatever model is plugged in.

Design choices:

* **Synchronous.** Analysis runs in the caller's thread, between chunks (a speculative one, below, on one worker
  thread whose result the caller's thread collects). Events come out in a deterministic order, nothing runs on
  after Ctrl-C but a cancelled speculation's current stage, and the sources already buffer input while an
  utterance is analyzed (the microphone callback queue, the push queue; a paced file catches up). Analysis of one
  utterance takes ~0.8 s on the 2-core CPU (``benchmarks/results/streaming_latency.md``), so the stream keeps up as
  long as an utterance plus the pause after it last longer than that; a backlog is worked off in the next pauses.
* **One conversation per stream**, shared by all channels/speakers, because the model's context is the dialogue,
  not one speaker's monologue.
* **Video alignment.** Frames are buffered with their stream timestamps; an utterance gets the frames within
  ``[start - video_margin_s, end + video_margin_s]``. Containers interleave audio ahead of video, so a finished
  utterance waits until the video clock has passed its end (at most ``max_video_wait_s`` of audio).
* **Speculative end of utterance.** The VAD declares an end only after ``hangover_ms`` (390 ms) of non-speech, but
  the utterance's audio is complete ``post_roll_ms`` (60 ms) after its last voiced frame
  (:attr:`~egmf_core.features.segmenter.ChannelSegmenter.tentative`). With an analyzer that can analyze without
  committing the turn to the conversation (:class:`SpeculativeAnalyzer`), that tentative utterance is analyzed on a
  worker thread during the rest of the hangover. If the utterance ends there, the result is used and committed (it is
  the same segment, frames and context, so the same result, 330 ms sooner); if speech resumes, the analysis is
  cancelled at its next stage boundary and discarded. One analysis runs at a time per stream, so events keep their
  order and the context is always the one the utterance would have seen.
* **Latency** is measured from the wall-clock arrival of the audio at ``end_s`` to the creation of the event; for a
  file read as fast as possible it is pure processing time, for live input it is what the user waits.

One concern per module: :mod:`~streaming.pipeline.contract` (:class:`AnalysisResult` and the analyzer protocols),
:mod:`~streaming.pipeline.stream` (:class:`StreamConfig`, :class:`StreamAnalyzer`: the stream's bookkeeping),
:mod:`~streaming.pipeline.speculation` (the speculative analysis on its worker thread),
:mod:`~streaming.pipeline.utterance_event` (an analyzed utterance -> its event). Importers use this package
(``from streaming.pipeline import StreamAnalyzer``).
"""

from .contract import (
    AnalysisCancelled,
    AnalysisResult,
    SpeculativeAnalyzer,
    UtteranceAnalyzer,
    analyze_and_commit,
    check_cancelled,
)
from .stream import StreamAnalyzer, StreamConfig

__all__ = ["AnalysisResult", "AnalysisCancelled", "check_cancelled", "analyze_and_commit", "UtteranceAnalyzer",
           "SpeculativeAnalyzer", "StreamConfig", "StreamAnalyzer"]

"""The stream: the audio pushed into a :class:`~streaming.sources.PushSource` in ``BLOCK``-sample (30 ms) blocks at
real-time pace by a feeder thread while this thread iterates the :class:`~streaming.pipeline.StreamAnalyzer` as the CLI
does, recording when each block went in and when each event came out; :class:`RecordingAnalyzer` records each
analysis (wall time, stage timings, the context it had) without adding to the work."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from bench_support import proc_stat_busy_s

from .inputs import SR

BLOCK = 480  # 30 ms pushed at a time, as the microphone source delivers


class RecordingAnalyzer:
    """Delegates to the real analyzer and records, per utterance, the wall time of its analysis, its stage timings and
    the context the conversation held before it (for the prompt length). Adds nothing to the work itself. A
    speculative analysis (``analyze_uncommitted`` on the pipeline's worker thread) is recorded when the pipeline
    commits it, so discarded ones (speech resumed) are counted by the pipeline but not as utterances."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.records: list[dict[str, Any]] = []
        # (start, end, finished) wall interval of every analysis, discarded speculations included: by design one
        # runs at a time per stream, and two that overlap would compete for the cores.
        self.intervals: list[tuple[float, float, bool]] = []

    @property
    def version(self) -> str:
        return self.inner.version

    def new_conversation(self) -> Any:
        return self.inner.new_conversation()

    def _timed(self, fn, segment, video, conversation, *args):
        window = getattr(conversation, "window", None)
        context = window.snapshot() if window is not None else ()
        t0 = time.perf_counter()
        finished = False
        try:
            res = fn(segment, video, conversation, *args)
            finished = True
        finally:
            self.intervals.append((t0, time.perf_counter(), finished))
        ms = (time.perf_counter() - t0) * 1000.0
        return res, {"start": round(segment.start_s, 6), "end": round(segment.end_s, 6), "analyze_ms": ms,
                     "timings_ms": dict(res.timings_ms), "prompt_tokens": dict(res.prompt_tokens), "context": context,
                     "segment": segment}

    def analyze(self, segment, video, conversation):
        res, rec = self._timed(self.inner.analyze, segment, video, conversation)
        self.records.append(rec)
        return res

    def analyze_uncommitted(self, segment, video, conversation, cancel):
        res, rec = self._timed(self.inner.analyze_uncommitted, segment, video, conversation, cancel)
        res.pending = (res.pending, rec)
        return res

    def commit(self, conversation, result) -> bool:
        pending, rec = result.pending
        result.pending = pending
        ok = self.inner.commit(conversation, result)
        result.pending = (pending, rec)
        if ok:
            self.records.append({**rec, "speculative": True})
        return ok


def push_blocks(x: np.ndarray, paced: bool, push: Callable[[np.ndarray], object], pushed: np.ndarray) -> None:
    """Push `x` in BLOCK-sample blocks, at real-time pace when `paced`, recording each block's wall time in `pushed`
    (read by the measuring thread as it goes, so the caller owns the array)."""
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(x), BLOCK)):
        if paced:
            time.sleep(max(0.0, t0 + (i + BLOCK) / SR - time.monotonic()))
        push(x[i:i + BLOCK])
        pushed[k] = time.monotonic()


def run_stream(analyzer: Any, x: np.ndarray, stream_id: str, paced: bool = True,
               speculative: bool = True) -> dict[str, Any]:
    """Push ``x`` in 30 ms blocks (at real-time pace when ``paced``) from a feeder thread; iterate the stream in this
    thread. Returns the events with the wall time each came out, and the wall time each block was pushed."""
    from streaming.pipeline import StreamAnalyzer, StreamConfig
    from streaming.sources import PushSource

    src = PushSource()
    pushed = np.zeros((len(x) + BLOCK - 1) // BLOCK)
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            push_blocks(x, paced, src.push_audio, pushed)
            src.end()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            src.end()

    sa = StreamAnalyzer(analyzer, StreamConfig(stream_id=stream_id, speculative=speculative))
    th = threading.Thread(target=feed, name="feeder", daemon=True)
    start = time.monotonic()
    cpu = [(start, proc_stat_busy_s(), time.process_time())]  # [0]: stream start, then one per event
    th.start()
    events = []
    for ev in sa.run(src):
        now = time.monotonic()
        events.append((now, ev))
        cpu.append((now, proc_stat_busy_s(), time.process_time()))
    th.join()
    if errors:
        raise errors[0]
    return {"events": events, "pushed": pushed, "wall_s": time.monotonic() - start, "segmenter_ms": sa.segmenter_ms,
            "stream_s": len(x) / SR, "cpu": cpu, "speculation": dict(sa.speculation)}


def block_wall(pushed: np.ndarray, t: float) -> float:
    """Wall time the block holding stream time ``t`` was pushed."""
    k = min(len(pushed) - 1, max(0, int(np.ceil(t * SR / BLOCK)) - 1))
    return float(pushed[k])

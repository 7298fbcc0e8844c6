"""A stream whose analysis stops (``stream_failed``), through the ingress's session code (:func:`deploy.session.run_stream`).

No client input can stop a stream's analysis: a failed utterance is reported on its own (``analysis_failed``,
``analysis_timeout``, ``invalid_analysis``) and the stream goes on; the fuzzed protocol run in
``test_deploy_hardening`` never reaches ``stream_failed``. What is left is a defect in the server's own code, so the
fault is injected here: the stream's :class:`streaming.pipeline.StreamAnalyzer` raises after its first utterance.
Everything else is real: the WebSocket (FastAPI, the ingress's framework), the PCM input chain, the VAD and segmenter,
the CLI's analyzer with the shipped model on real RAVDESS speech, the stream's record. Issue 26 found that after
``stream_failed`` later events were queued but never sent; pinned here: the client gets the utterance, then
``stream_failed`` without internal detail, then close code 1011; and a reconnect with the same ``stream_id`` resumes
with the utterance ids going on.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi import WebSocket
from test_streaming_support import SR, join_with_silence, needs_ravdess, ravdess_clips

from streaming.events import ErrorEvent, UtteranceEvent, parse_event

pytestmark = [pytest.mark.slow, needs_ravdess]

SECRET = "injected fault 5f3a: internal detail"


@pytest.fixture(scope="module")
def analyzer():
    from streaming.analyzer import EGMFAnalyzerConfig, EGMFUtteranceAnalyzer

    return EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(use_video=False))


@pytest.fixture(scope="module")
def speech():
    x, refs = join_with_silence(ravdess_clips(2, seed=5), gap_s=0.8)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    return [pcm[i:i + 3200].tobytes() for i in range(0, len(pcm), 3200)], refs


def _service(analyzer, monkeypatch, fail: dict):
    """A FastAPI app whose ``/v1/stream`` does what the ingress does around a session (start message, the stream's
    record kept across connections, the replay of a resume) and then runs :func:`deploy.session.run_stream`.
    ``fail["left"]``: how many of the coming streams stop after their first utterance."""
    from fastapi import FastAPI

    import deploy.session
    from deploy.resume import StreamRecord
    from deploy.settings import AppArgs
    from deploy.start import parse_start
    from streaming.pipeline import StreamAnalyzer

    class StopsAfterFirstUtterance(StreamAnalyzer):
        def run(self, source):
            stop = fail["left"] > 0
            fail["left"] -= stop
            for ev in super().run(source):
                yield ev
                if stop and isinstance(ev, UtteranceEvent):
                    raise RuntimeError(SECRET)

    monkeypatch.setattr(deploy.session, "StreamAnalyzer", StopsAfterFirstUtterance)
    args = AppArgs(language="en")
    records: dict[str, StreamRecord] = {}
    api = FastAPI()

    async def blocking(fn, *fn_args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *fn_args)

    async def no_face_error():
        return None

    class Remote:  # the ingress's RemoteAnalyzer interface over the CLI's analyzer
        def __init__(self):
            self.version = analyzer.version
            self.new_conversation = analyzer.new_conversation
            self.analyze, self.analyze_uncommitted = analyzer.analyze, analyzer.analyze_uncommitted
            self.commit = analyzer.commit

        def public_error(self, ev):
            return ev

    @api.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        start = parse_start(await ws.receive_text(), args, ["en"])
        record = records.setdefault(start.stream_id, StreamRecord(start.stream_id, analyzer.new_conversation()))
        replay = record.after(start.last_utterance_id)[0] if start.last_utterance_id is not None else []
        await deploy.session.run_stream(ws, start, record, replay, args=args, blocking=blocking,
                                        face_error=no_face_error, remote_analyzer=lambda next_id: Remote())

    return api, records


def _session(client, start: dict, frames: list[bytes]) -> tuple[list, int]:
    from starlette.websockets import WebSocketDisconnect

    events = []
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "sample_rate": SR, "channels": 1, "sample_format": "int16", **start}))
        for f in frames:
            ws.send_bytes(f)
        ws.send_text(json.dumps({"type": "end"}))
        while True:
            try:
                events.append(parse_event(ws.receive_text()))
            except WebSocketDisconnect as closed:
                return events, closed.code


def test_stream_failed_is_sent_closes_1011_and_the_stream_resumes(analyzer, speech, monkeypatch):
    from starlette.testclient import TestClient

    frames, refs = speech
    assert len(refs) == 2
    api, records = _service(analyzer, monkeypatch, {"left": 1})
    with TestClient(api) as client:
        events, code = _session(client, {"stream_id": "call-7"}, frames)
        utts = [e for e in events if isinstance(e, UtteranceEvent)]
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert [u.utterance_id for u in utts] == [0], events  # the first utterance, then the analysis stopped
        assert errors and errors[0].code == "stream_failed", events
        assert events.index(errors[0]) > events.index(utts[0])  # sent after what was analyzed, not lost behind it
        # audio the client had already sent when it stopped is refused, each message said so (nothing silent)
        assert {e.code for e in errors[1:]} <= {"stream_closed"}, events
        assert code == 1011
        text = "".join(e.to_json() for e in errors)
        assert SECRET not in text and "RuntimeError" not in text and "Traceback" not in text
        assert "stream_id" in errors[0].message  # it tells the client how to go on
        record = records["call-7"]
        assert record.next_utterance_id == 1 and not any(SECRET in t for _, t in record.events)
        replayed = [parse_event(t) for t in record.after(0)[0]]  # what came after utterance 0: stream_failed on
        assert replayed and replayed[0] == errors[0]
        t_base = record.audio_s

        # the client reconnects with its stream_id and the last id it got; the analysis goes on
        again, code = _session(client, {"stream_id": "call-7", "last_utterance_id": 0}, frames)
        assert again[:len(replayed)] == replayed  # the events it may have missed, again
        new = again[len(replayed):]
        utts = [e for e in new if isinstance(e, UtteranceEvent)]
        assert code == 1000 and not [e for e in new if isinstance(e, ErrorEvent)], new
        assert [u.utterance_id for u in utts] == [1, 2], new  # ids go on, no utterance sent twice
        assert utts[0].start >= t_base  # on the stream's clock, after the first connection's audio

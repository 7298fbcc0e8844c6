"""Issue 26, the rest: the client resumes a dropped stream by itself, a malformed model answer costs its utterance
only (``invalid_analysis`` with its span; it used to stop the stream with ``stream_failed``), and a client that does
not read never holds up the ingress. Against the real served app (Serve started by ``test_deploy_service``'s fixture
with the real models, real RAVDESS speech); extra ingress apps are deployed beside it on the same replicas with
``test_deploy_hardening._deploy_ingress``.

Before: ``python -m deploy.client`` exited with "connection closed" on a dropped connection and lost every event
after it (resume existed only in the protocol); model probabilities that were not numbers ended the stream
(``streaming/pipeline.py`` turned only schema errors into ``invalid_analysis``); nothing tested that a non-reading
client leaves ``/health`` and the other streams answering."""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from test_deploy_hardening import _deploy_ingress, _errors, _utts
from test_deploy_service import (  # noqa: F401 - fixtures
    BASE,
    PORT,
    WS,
    _int16_frames,
    _session,
    recording,
    service,
)
from test_streaming_support import SR, needs_ravdess, write_wav

from streaming.events import SpeechStartedEvent, parse_event

pytestmark = [pytest.mark.slow, needs_ravdess]


class _CuttableProxy:
    """A TCP proxy to the service whose connections the test cuts, as a network drop or a dead NAT entry would: the
    client sees its socket closed without a close frame (code 1006), the server sees a disconnect."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", PORT))
            with self.lock:
                self.pairs.append((down, up))
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(pairs)

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _lines(out: io.StringIO) -> list:
    return [parse_event(json.loads(s)) for s in out.getvalue().splitlines()]


def _kept_events(stream_id: str, url: str = WS) -> list:
    """Every event the server kept for ``stream_id`` (a resume after utterance -1 that sends no audio)."""
    deadline = time.monotonic() + 60
    while True:
        events, code = _session({"sample_rate": SR, "stream_id": stream_id, "last_utterance_id": -1}, [], url=url)
        if code != 1013 or time.monotonic() > deadline:
            assert code == 1000, events
            return events
        time.sleep(0.5)


def test_client_resumes_a_dropped_connection_every_event_once(service, recording, tmp_path):  # noqa: F811
    """``python -m deploy.client --realtime``: the test cuts the client's TCP connection after its first utterance,
    mid-stream. The client reconnects (``stream_in_use`` if the server is still finishing the first connection's
    audio: retried with backoff), resumes after its last utterance id and sends the rest of the file. Every utterance
    the server produced reaches the output exactly once, ids 0..n-1 in order, and no line is printed twice (the
    ``speech_started`` the resume sends again are dropped)."""
    from deploy.client import main

    x, refs = recording
    wav = write_wav(tmp_path / "call.wav", x)
    proxy = _CuttableProxy()
    out, err = io.StringIO(), io.StringIO()
    result: dict = {}
    argv = ["--url", f"ws://127.0.0.1:{proxy.port}/v1/stream", "--file", str(wav), "--json", "--realtime",
            "--stream-id", "client-resume-1", "--backoff", "0.2"]
    client = threading.Thread(target=lambda: result.update(rc=main(argv, out=out, err=err)))
    t0 = time.monotonic()
    client.start()
    try:
        while not _utts(_lines(out)):
            assert client.is_alive() and time.monotonic() - t0 < 120, err.getvalue()
            time.sleep(0.05)
        cut_at = time.monotonic() - t0
        before = len(_utts(_lines(out)))
        assert proxy.cut() == 1
        client.join(240)
    finally:
        proxy.close()
    assert not client.is_alive()
    print(f"\ncut after {cut_at:.1f} s of {len(x) / SR:.1f} s; client stderr:\n{err.getvalue()}")
    assert result["rc"] == 0, err.getvalue()
    assert "reconnecting" in err.getvalue() and cut_at < len(x) / SR  # the drop was mid-stream
    lines = out.getvalue().splitlines()
    assert len(lines) == len(set(lines)), "an event was printed twice"
    got = _utts(_lines(out))
    assert [u.utterance_id for u in got] == list(range(len(got))) and len(got) > before
    kept = _utts(_kept_events("client-resume-1"))
    assert [(u.utterance_id, u.text, u.start) for u in got] == [(u.utterance_id, u.text, u.start) for u in kept]
    assert got[-1].end > refs[-1][0]  # the audio after the cut was sent on the new connection and analyzed


def test_library_api_resumes_after_drops_while_sending_and_at_the_end(service, recording):  # noqa: F811
    """``ResumingStream`` with its connection closed under it twice: at 40 % of the audio, sent at real-time pace
    (the message being sent then is sent again on the next connection), and when the input is exhausted, just before
    the end message (the resume has nothing left to send: it collects the missed events and ends). Each utterance
    reaches ``on_event`` once, as the server kept them, and no ``speech_started`` twice."""
    from deploy.client import ResumingStream, RetryPolicy

    x, refs = recording
    frames = _int16_frames(x, 1600)
    events: list = []
    stream = ResumingStream(WS, {"sample_rate": SR, "sample_format": "int16", "stream_id": "client-resume-2"},
                            events.append, retry=RetryPolicy(backoff_s=0.2))

    def paced():
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            time.sleep(max(0.0, t0 + i * 0.1 - time.monotonic()))
            if i == int(len(frames) * 0.4):
                stream.connection.socket.shutdown(socket.SHUT_RDWR)
            yield f
        stream.connection.socket.shutdown(socket.SHUT_RDWR)

    assert stream.run(paced()) == []
    assert stream.connections >= 3
    utts = _utts(events)
    assert [u.utterance_id for u in utts] == list(range(len(utts))) and len(utts) >= len(refs)
    starts = [e.start for e in events if isinstance(e, SpeechStartedEvent)]
    assert len(starts) == len(set(starts))
    assert [(u.utterance_id, u.text) for u in utts] == [(u.utterance_id, u.text) for u in
                                                        _utts(_kept_events("client-resume-2"))]


# --------------------------------------------------------------------------------------- a malformed answer


def _faulty_model_deployment():
    """A model deployment in front of the real ``ModelServer`` whose ``arm(n)``-th next answer carries probabilities
    that are not numbers (before, such an answer stopped the stream's analysis: ``stream_failed``)."""
    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replica cannot import this test module

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class FaultyModel:
        def __init__(self, model) -> None:
            self.model = model
            self.countdown = 0

        def arm(self, n: int) -> None:
            self.countdown = n

        async def version(self) -> str:
            return await self.model.version.remote()

        async def health(self) -> dict:
            return await self.model.health.remote()

        async def predict(self, request: dict) -> dict:
            p = await self.model.predict.remote(request)
            self.countdown -= 1
            if self.countdown == 0:
                p = {**p, "emotion_probs": {k: "not a number" for k in p["emotion_probs"]}}
            return p

    return FaultyModel


@pytest.fixture(scope="module")
def faulty(service):  # noqa: F811
    from ray import serve

    model = _faulty_model_deployment().bind(serve.get_deployment_handle("ModelServer", app_name="egmf"))
    base = _deploy_ingress("faulty", {"speculative": False}, model=model)  # one predict call per utterance
    handle = serve.get_deployment_handle("FaultyModel", app_name="faulty")
    yield {"base": base, "ws": base.replace("http://", "ws://") + "/v1/stream",
           "arm": lambda n: handle.arm.remote(n).result(timeout_s=30)}
    serve.delete("faulty")


def test_a_malformed_model_answer_costs_its_utterance_only(faulty, recording):
    """The second utterance's answer is malformed: the client gets the first utterance, an ``invalid_analysis`` error
    naming the second one's span, then the third utterance with the next id, and close 1000; a resume gets the
    same kept events."""
    x, refs = recording
    faulty["arm"](2)
    events, code = _session({"sample_rate": SR, "stream_id": "malformed-1"}, _int16_frames(x), url=faulty["ws"])
    assert code == 1000, events
    assert [u.utterance_id for u in _utts(events)] == [0, 1]
    (err,) = _errors(events)
    assert err.code == "invalid_analysis" and err.field == "emotion.confidence", err
    assert err.start < refs[1][1] and err.end > refs[1][0] and "Traceback" not in err.message, (err, refs)
    kept = _kept_events("malformed-1", faulty["ws"])
    assert [e.code for e in _errors(kept)] == ["invalid_analysis"] and [u.utterance_id for u in _utts(kept)] == [0, 1]


def test_client_prints_a_malformed_answer_once_and_goes_on(faulty, recording, tmp_path):
    """The CLI prints the ``invalid_analysis`` error once between the utterances around it, on one connection."""
    from deploy.client import main

    x, refs = recording
    wav = write_wav(tmp_path / "call.wav", x)
    faulty["arm"](2)
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--url", faulty["ws"], "--file", str(wav), "--json", "--stream-id", "malformed-2"], out=out, err=err)
    assert rc == 0, err.getvalue()
    events = _lines(out)
    assert [e.code for e in _errors(events)] == ["invalid_analysis"], err.getvalue()
    assert [u.utterance_id for u in _utts(events)] == [0, 1]
    assert "reconnecting" not in err.getvalue()


# ------------------------------------------------------------------------------------------------ event loop


def test_a_client_that_never_reads_does_not_hold_up_health_or_other_streams(service):  # noqa: F811
    """A client with a tiny receive buffer that never reads floods its stream (2000 invalid text messages, each
    answered with an error event, then 10 s of audio as fast as possible) and sends ``end``; meanwhile ``/health``
    and another stream answer within 2 s each, and the slow client, once it reads, gets every one of its events and
    the close 1000. Behind Serve's proxy a replica's WebSocket send never waits for the client: the stream's session
    ends (``/health`` counts no open stream) while its events still wait in Serve for the client (deploy/README.md,
    "Slow clients")."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", PORT))
    n_bad = 2000
    events: list = []
    with connect(WS, sock=sock, max_size=None, open_timeout=30, max_queue=1) as slow:
        slow.send(json.dumps({"sample_rate": SR, "stream_id": "never-reads"}))
        for _ in range(n_bad):
            slow.send("{}")
        for f in _int16_frames(np.zeros(10 * SR, np.float32)):
            slow.send(f)
        slow.send(json.dumps({"type": "end"}))
        worst, streams = 0.0, []
        for _ in range(8):
            t0 = time.monotonic()
            with urllib.request.urlopen(f"{BASE}/health", timeout=10) as r:
                body = json.loads(r.read())
            health_s = time.monotonic() - t0
            assert body["status"] == "ok"
            streams.append(body["streams"])
            with connect(WS, open_timeout=10) as other:
                t0 = time.monotonic()
                other.send(json.dumps({"sample_rate": SR}))
                other.send("not the end")
                assert parse_event(json.loads(other.recv(timeout=10))).code == "invalid_message"
                other_s = time.monotonic() - t0
            worst = max(worst, health_s, other_s)
            assert health_s < 2.0 and other_s < 2.0, (health_s, other_s)
            time.sleep(0.5)
        print(f"\nslowest answer while a client did not read: {worst * 1000:.0f} ms; open streams: {streams}")
        assert 0 in streams  # its session ended without waiting for the client to read: the events wait in Serve
        try:
            while True:
                events.append(parse_event(json.loads(slow.recv(timeout=120))))
        except ConnectionClosed:
            pass
    assert [e.code for e in _errors(events)] == ["invalid_message"] * n_bad and len(events) == n_bad
    assert slow.close_code == 1000

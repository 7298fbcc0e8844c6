"""The service under Ray Serve's direct ingress (deploy/README.md, "More streams per machine"): the shipped
``deploy/config.yaml`` started as an operator would, ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1 serve run
deploy/config.yaml``, and real RAVDESS speech streamed to the Ingress replica's own port (30000), bypassing Serve's
proxy. The same FastAPI app answers there, so its checks must hold there too: the port is bound to the config's
host only (127.0.0.1), and a foreign Origin is refused."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_streaming_support import SR, join_with_silence, needs_ravdess, ravdess_clips, write_wav

from streaming.events import UtteranceEvent, parse_event

pytestmark = [pytest.mark.slow, needs_ravdess]

ROOT = Path(__file__).resolve().parents[1]
DIRECT = 30000  # the first port of RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT..MAX: the one Ingress replica's
BASE = f"http://127.0.0.1:{DIRECT}"
WS = f"ws://127.0.0.1:{DIRECT}/v1/stream"


def _health(base: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def direct_service():
    if _health("http://127.0.0.1:8000") is not None or _health(BASE) is not None:
        pytest.skip("a service already answers on port 8000 or 30000")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
           "HF_HUB_OFFLINE": "1"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    proc = subprocess.Popen(["serve", "run", "deploy/config.yaml"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while (health := _health(BASE)) is None:
            assert proc.poll() is None, "serve run exited before the direct ingress port answered"
            assert time.monotonic() < deadline, "no answer on the direct ingress port within 240 s"
            time.sleep(0.5)
        yield health
    finally:  # the local cluster `serve run` started lives in its session: stop that, not every Ray on the machine
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=90)
        deadline = time.monotonic() + 60
        while (left := _session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for p in left:
            p.kill()
        assert not left, [p.name() for p in left]


def _session_processes(sid: int) -> list:
    """The processes still running in session ``sid`` (Ray's raylet, GCS and workers stay in `serve run`'s)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (OSError, psutil.Error):
            pass
    return found


def test_streams_through_the_replicas_own_port(direct_service, tmp_path):
    import psutil

    assert direct_service["status"] == "ok"
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert ("127.0.0.1", DIRECT) in listening and ("0.0.0.0", DIRECT) not in listening  # the config's host only
    x, refs = join_with_silence(ravdess_clips(2), gap_s=1.0, tail_s=1.0)
    wav = write_wav(tmp_path / "call.wav", x)
    from deploy.client import main

    out, err = io.StringIO(), io.StringIO()
    assert main(["--url", WS, "--file", str(wav), "--json"], out=out, err=err) == 0, err.getvalue()
    events = [parse_event(json.loads(s)) for s in out.getvalue().splitlines()]
    utterances = [e for e in events if isinstance(e, UtteranceEvent)]
    assert len(utterances) == len(refs) == 2
    assert all(abs(u.start - r[0]) < 1.0 and u.text for u, r in zip(utterances, refs))


def test_foreign_origin_is_refused_there_too(direct_service):
    from websockets.exceptions import ConnectionClosedOK, InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as e:
        with connect(WS, origin="https://evil.example", open_timeout=30):
            pass
    assert e.value.response.status_code == 403
    with connect(WS, origin=BASE, open_timeout=30) as ws:  # its own origin: accepted, and ended normally
        ws.send(json.dumps({"sample_rate": SR}))
        ws.send(json.dumps({"type": "end"}))
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=60)

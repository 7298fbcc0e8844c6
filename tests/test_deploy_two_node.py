"""Scale-out on Ray (issue 26): a two-node Ray cluster on this machine, the model replica on the second node, that
node killed mid-stream, then a new node started in its place.

The head (``ray start --head``, resource ``head_node``) runs the Serve controller, the HTTP proxy, ``Ingress`` and
``ASR``; the second node (``ray start --address ... --num-cpus 1``, resource ``model_node``) runs ``ModelServer``.
The app is deployed with ``serve run --non-blocking`` from ``deploy/config.yaml`` with only the placement
(``ray_actor_options.resources``), the port and the model call timeout changed, as an operator would. Two clients
(``deploy.client.ResumingStream``, real RAVDESS speech looped at twice real time) stream while the second node's
process group (its ``ray start --block``, raylet and workers) is killed with SIGKILL. The clients must get an event
or an error event for every utterance they sent (matched by span: nothing silently lost), utterance ids that never
repeat, no ``stream_failed``, and normal events again once a new node is up and Serve has placed a new model replica
there; a new stream afterwards is analyzed.

The head's GCS declares a node dead after ``RAY_health_check_period_ms`` x ``RAY_health_check_failure_threshold``
(Ray defaults 3000 ms x 5); the test sets 1000 ms x 3. Takes 1.5-2.5 min on 2 shared cores. The timeline is printed,
and written as Markdown to the file named by ``TWO_NODE_RESULTS`` when set (``benchmarks/results/two_node_failover.md``
was written that way)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_deploy_hardening import _errors, _one_utterance, _utts
from test_deploy_service import _session, recording  # noqa: F401 - fixture
from test_streaming_support import SR, needs_ravdess

from streaming.events import ErrorEvent, UtteranceEvent

pytestmark = [pytest.mark.slow, needs_ravdess]

ROOT = Path(__file__).resolve().parents[1]
# Ports apart from Ray's and the other deploy tests' defaults, so that a cluster started by someone else on this
# machine is not touched.
GCS_PORT = 6391
HTTP_PORT = 18796
BASE = f"http://127.0.0.1:{HTTP_PORT}"
WS = f"ws://127.0.0.1:{HTTP_PORT}/v1/stream"
MODEL_TIMEOUT_S = 10.0  # model_timeout_s: an utterance waiting for a model replica gets analysis_timeout after this
OUTAGE_S = 15.0  # how long the model node stays down before a new one starts
SPEED = 2.0  # the clients send audio at twice real time
REPORTED = ("analysis_failed", "analysis_timeout", "invalid_analysis")  # a failed utterance, with its span

# The head's GCS health checks of the nodes: a killed node is declared dead after about 3 s, not 15 s.
_FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", **extra}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


class _Node:
    """``ray start --block`` in its own process group: killing the group kills the node (its raylet, its workers)."""

    def __init__(self, tmp: Path, name: str, args: list[str], env: dict[str, str]):
        self.log = tmp / f"{name}.log"
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([shutil.which("ray") or "ray", "start", "--block", "--disable-usage-stats",
                                          "--node-ip-address", "127.0.0.1", *args],
                                         stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                         start_new_session=True)

    def processes(self) -> list:
        """``ray start`` and what it started: the raylet, its workers (and on the head the GCS)."""
        import psutil

        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """``sig`` to the process group, then SIGKILL to whatever of the node is left after 20 s."""
        import psutil

        procs = self.processes()
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        _, left = psutil.wait_procs(procs, timeout=20 if sig != signal.SIGKILL else 5)
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(10)


def _model_node(tmp: Path, name: str, min_port: int) -> _Node:
    return _Node(tmp, name, ["--address", f"127.0.0.1:{GCS_PORT}", "--num-cpus", "1",
                             "--resources", json.dumps({"model_node": 1}),
                             "--min-worker-port", str(min_port), "--max-worker-port", str(min_port + 499),
                             "--dashboard-agent-listen-port", str(min_port + 500),
                             "--runtime-env-agent-port", str(min_port + 501),
                             "--metrics-export-port", str(min_port + 502)], _env())


def _config(tmp: Path) -> Path:
    """``deploy/config.yaml`` with the placement of a two-node cluster: Ingress and ASR on the head, ModelServer on
    a ``model_node`` (one replica per such node); another port; a shorter model call timeout."""
    cfg = yaml.safe_load((ROOT / "deploy" / "config.yaml").read_text())
    cfg["http_options"]["port"] = HTTP_PORT
    app = cfg["applications"][0]
    app["args"]["model_timeout_s"] = MODEL_TIMEOUT_S
    for d in app["deployments"]:
        d["ray_actor_options"]["resources"] = {"model_node": 1} if d["name"] == "ModelServer" else {"head_node": 0.01}
    path = tmp / "two_node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _health() -> dict | None:
    try:
        with urllib.request.urlopen(f"{BASE}/health", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503: a deployment is not healthy; 404: the app is not deployed yet
        return json.loads(e.read()) if e.code == 503 else None
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def _model_healthy() -> bool:
    h = _health()
    return bool(h and h["deployments"]["ModelServer"]["healthy"])


def _wait(cond, timeout: float, what: str, period: float = 0.5) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(period)
    return time.monotonic()


class _Client:
    """One ``ResumingStream`` sending the recording over and over at ``SPEED`` x real time until ``stop``; each
    event is kept with its arrival time."""

    def __init__(self, name: str, x: np.ndarray, refs: list[tuple[float, float]]):
        from deploy.client import FRAME_SAMPLES, ResumingStream

        self.x, self.refs, self.loops = x.astype("<f4"), refs, 0
        self.events: list[tuple[float, object]] = []
        self.stop = threading.Event()
        self.stream = ResumingStream(WS, {"sample_rate": SR, "sample_format": "float32", "language": "en",
                                          "stream_id": name}, lambda ev: self.events.append((time.monotonic(), ev)))
        self.frame = FRAME_SAMPLES
        self.failures: list[str] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _messages(self):
        t0, n = time.monotonic(), 0
        while not self.stop.is_set():
            for i in range(0, len(self.x), self.frame):
                time.sleep(max(0.0, t0 + n * self.frame / SR / SPEED - time.monotonic()))
                n += 1
                yield self.x[i:i + self.frame].tobytes()
            self.loops += 1

    def _run(self) -> None:
        self.failures = self.stream.run(self._messages())

    def sent_spans(self) -> list[tuple[float, float]]:
        dur = len(self.x) / SR
        return [(k * dur + lo, k * dur + hi) for k in range(self.loops) for lo, hi in self.refs]

    def utts(self, after: float = -1.0) -> list[UtteranceEvent]:
        return [e for t, e in self.events if isinstance(e, UtteranceEvent) and t > after]

    def errors(self, after: float = -1.0) -> list[tuple[float, ErrorEvent]]:
        return [(t, e) for t, e in self.events if isinstance(e, ErrorEvent) and t > after]


def _reported_spans(client: _Client) -> list[tuple[float, float]]:
    spans = [(u.start, u.end) for u in client.utts()]
    for _, e in client.errors():
        if e.code in REPORTED:
            assert e.start is not None, e
            spans.append((e.start, e.end))
    return sorted(spans)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown"


def test_model_node_killed_mid_stream(recording):  # noqa: F811
    import psutil
    import ray

    x, refs = recording
    tmp = Path(tempfile.mkdtemp(prefix="egmf2n"))  # short: Ray's socket paths live under it
    nodes: list[_Node] = []
    clients: list[_Client] = []
    t = {"start": time.monotonic()}
    try:
        head = _Node(tmp, "head", ["--head", "--port", str(GCS_PORT), "--num-cpus", "2",
                                   "--resources", json.dumps({"head_node": 1}), "--temp-dir", str(tmp),
                                   "--include-dashboard", "false", "--ray-client-server-port", "10391",
                                   "--min-worker-port", "22000", "--max-worker-port", "22499",
                                   "--dashboard-agent-listen-port", "22500", "--runtime-env-agent-port", "22501",
                                   "--metrics-export-port", "22502"], _env(**_FAST_NODE_DEATH))
        nodes.append(head)
        _wait(lambda: "Ray runtime started" in head.log.read_text(errors="replace") or head.proc.poll() is not None,
              120, "the head node")
        assert head.proc.poll() is None, head.log.read_text(errors="replace")
        nodes.append(_model_node(tmp, "model1", 23000))
        ray.init(address=f"127.0.0.1:{GCS_PORT}", log_to_driver=False, namespace="egmf-two-node-test")
        _wait(lambda: ray.cluster_resources().get("model_node") == 1, 120, "the model node to join")

        cfg = _config(tmp)
        deploy = subprocess.run([shutil.which("serve") or "serve", "run", "--non-blocking", "--address",
                                 f"127.0.0.1:{GCS_PORT}", str(cfg)], env=_env(), cwd=ROOT, capture_output=True,
                                text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        t["healthy"] = _wait(lambda: (_health() or {}).get("status") == "ok", 300, "the app to be healthy", 1.0)
        # the model replica holds the model node's one model_node: it runs there
        assert ray.available_resources().get("model_node", 0) == 0, ray.available_resources()
        model_procs = [p for p in nodes[1].processes() if "ModelServer" in " ".join(p.cmdline())]
        assert model_procs, [p.cmdline() for p in nodes[1].processes()]

        clients = [_Client(f"two-node-{i}", x, refs) for i in range(2)]
        _wait(lambda: all(len(c.utts()) >= 2 for c in clients), 180, "2 events per client before the kill")

        t["kill"] = time.monotonic()
        nodes[1].kill()  # SIGKILL to the node's process group: raylet, workers, ray start
        assert not psutil.wait_procs(model_procs, timeout=10)[1]  # the model replica's process is gone
        alive = lambda: sum(n["Alive"] for n in ray.nodes())  # noqa: E731
        t["node_dead"] = _wait(lambda: alive() == 1, 60, "the GCS to declare the node dead", 0.2)
        _wait(lambda: not _model_healthy(), 60, "/health to report the model deployment unhealthy", 0.5)
        t["health_degraded"] = time.monotonic()
        time.sleep(max(0.0, t["kill"] + OUTAGE_S - time.monotonic()))

        t["restart"] = time.monotonic()
        nodes.append(_model_node(tmp, "model2", 24000))
        t["node_joined"] = _wait(lambda: alive() == 2, 120, "the new model node to join", 0.2)
        t["replica_healthy"] = _wait(_model_healthy, 300, "a new model replica to be healthy", 0.5)
        _wait(lambda: all(len(c.utts(after=t["replica_healthy"])) >= 2 for c in clients), 240,
              "2 events per client after the new replica is healthy")
        for c in clients:
            c.stop.set()
        for c in clients:
            c.thread.join(240)
            assert not c.thread.is_alive(), f"{c.stream.stream_id}: did not end"
        t["end"] = time.monotonic()

        # -- what the clients got
        rows = []
        for c in clients:
            sid = c.stream.stream_id
            assert c.failures == [], (sid, c.failures)
            codes = [e.code for _, e in c.errors()]
            assert "stream_failed" not in codes, (sid, codes)
            assert set(codes) <= set(REPORTED), (sid, codes)  # nothing else went wrong
            ids = [u.utterance_id for u in c.utts()]
            assert ids == list(range(len(ids))), (sid, ids)  # each id once, none skipped, none reused
            sent, got = c.sent_spans(), _reported_spans(c)
            assert len(got) == len(sent), (sid, sent, got)  # every utterance sent is reported once...
            for (lo, hi), (a, b) in zip(sent, got):  # ...as itself: nothing lost, nothing reported twice
                assert a < hi and b > lo, (sid, sent, got)
            post = c.errors(after=t["kill"])
            assert post, (sid, "no error event after the kill")
            assert not c.errors(after=t["replica_healthy"] + MODEL_TIMEOUT_S), (sid, c.errors(t["replica_healthy"]))
            rows.append({"stream": sid, "sent": len(sent), "events": len(c.utts()),
                         "errors": {k: codes.count(k) for k in sorted(set(codes))},
                         "first_error_s": post[0][0] - t["kill"],
                         "last_error_s": max(tt for tt, _ in post) - t["kill"],
                         "first_event_after_s": min(tt for tt, e in c.events
                                                    if isinstance(e, UtteranceEvent) and tt > t["restart"])
                         - t["kill"],
                         "connections": c.stream.connections})

        # a new stream is analyzed normally
        events, code = _session({"sample_rate": SR, "language": "en"}, _one_utterance(recording), url=WS)
        assert code == 1000 and len(_utts(events)) == 1 and not _errors(events), events
        assert ray.available_resources().get("model_node", 0) == 0  # the new replica is on the new model node
    finally:
        for c in clients:
            c.stop.set()
        if ray.is_initialized():
            ray.shutdown()
        for n in reversed(nodes):
            n.kill(signal.SIGTERM)
        shutil.rmtree(tmp, ignore_errors=True)

    report = _report(t, rows)
    print("\n" + report)
    if os.environ.get("TWO_NODE_RESULTS"):
        Path(os.environ["TWO_NODE_RESULTS"]).write_text(report)


def _report(t: dict[str, float], rows: list[dict]) -> str:
    k = t["kill"]
    lines = [
        "# Two Ray nodes: the model node killed mid-stream",
        "",
        "`TWO_NODE_RESULTS=benchmarks/results/two_node_failover.md pytest -m slow tests/test_deploy_two_node.py`; "
        f"{time.strftime('%Y-%m-%d')}, "
        f"{_cpu_model()}, {os.cpu_count()} cores (both nodes on this machine), Python {sys.version.split()[0]}, "
        f"Ray {__import__('ray').__version__}.",
        "",
        "Head: `ray start --head --num-cpus 2 --resources '{\"head_node\": 1}'` (Serve controller, proxy, Ingress, "
        f"ASR), GCS node health checks {_FAST_NODE_DEATH['RAY_health_check_period_ms']} ms x "
        f"{_FAST_NODE_DEATH['RAY_health_check_failure_threshold']}. Model node: `ray start --address ... --num-cpus 1 "
        "--resources '{\"model_node\": 1}'` (ModelServer, `ray_actor_options.resources: {model_node: 1}`), killed "
        f"with SIGKILL to its process group; a new one started {OUTAGE_S:g} s later. `model_timeout_s: "
        f"{MODEL_TIMEOUT_S:g}`; everything else as in `deploy/config.yaml`. Two clients (`deploy.client."
        f"ResumingStream`), 3 RAVDESS clips looped at {SPEED:g} x real time.",
        "",
        "| time from the kill | what happened |",
        "|---|---|",
        f"| -{k - t['healthy']:.1f} s | app healthy ({t['healthy'] - t['start']:.0f} s after `ray start --head`) |",
        "| 0 | model node's process group killed |",
    ]
    marks = [(t["node_dead"] - k, "GCS declares the node dead"),
             (t["health_degraded"] - k, "`GET /health`: ModelServer not healthy (503)"),
             (t["restart"] - k, "new model node started"),
             (t["node_joined"] - k, "new node joined"),
             (t["replica_healthy"] - k, "new ModelServer replica healthy on it (`/health` 200)")]
    for r in rows:
        marks += [(r["first_error_s"], f"{r['stream']}: first error event"),
                  (r["last_error_s"], f"{r['stream']}: last error event"),
                  (r["first_event_after_s"], f"{r['stream']}: first utterance event after the restart")]
    lines += [f"| {s:.1f} s | {what} |" for s, what in sorted(marks)]
    lines += ["", "| stream | utterances sent | events | error events | connections |", "|---|---|---|---|---|"]
    lines += [f"| {r['stream']} | {r['sent']} | {r['events']} | "
              f"{', '.join(f'{n} {c}' for c, n in r['errors'].items()) or '0'} | {r['connections']} |" for r in rows]
    lines += ["", "Every utterance sent was reported once, as an event or an error event with its span (0 silently "
              "lost); utterance ids consecutive from 0; no `stream_failed`; the WebSockets stayed open (the ingress "
              "is on the head). A new stream after the recovery got its event.", ""]
    return "\n".join(lines)

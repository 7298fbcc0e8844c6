"""Concurrent real-time streams against the Ray Serve application: end-of-speech -> event latency, lost utterances,
startup time to healthy, memory.

    python benchmarks/bench_serve_streams.py                 # starts `serve run deploy/config.yaml` itself
    python benchmarks/bench_serve_streams.py --url ws://host:8000/v1/stream   # an already running service
    python benchmarks/bench_serve_streams.py --ingress proxy,direct   # through Serve's proxy, then direct ingress

Writes benchmarks/results/serve_streams.{json,md}. Each stream sends the same real recording (RAVDESS clips from
different actors joined with 0.8 s pauses, int16 16 kHz, 100 ms frames unless --frame-ms) at real-time pace.
``--offsets burst`` (default) starts the streams of a level 0.25 s apart, so their utterances end almost together:
the worst case, every stream wanting the models at once. ``--offsets spread`` starts them evenly over one utterance
cycle (recording length / utterances), as independent calls would arrive; ``--offsets burst,spread`` runs both.
Latency is measured on the client: wall time the event arrived minus wall time the frame holding the reference end of
speech of that utterance was sent (so it includes the VAD's end-of-speech hangover, recognition, batching and the
model); ``latency_ms`` as reported by the server (from the arrival of the utterance's last segment sample) is
recorded too. The CPU time of each process role (ASR, ModelServer, Ingress, Serve's proxy, Ray's own processes, this
client) over each level is recorded per utterance, so that where the cores go is visible next to the latency.
``--ingress direct`` starts the service with Ray Serve's direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``)
and streams to the Ingress replica's own port, bypassing the proxy (deploy/README.md, "More streams per machine");
``proxy,direct`` runs both, each with its own service start, side by side in one results file.
An utterance is lost when a reference clip gets no utterance event overlapping it. The machine's load average is
recorded: other processes on a 2-core machine skew it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import cpu_flag_table, cpu_model, percentile  # noqa: E402  (benchmarks/ is on the path above)

SR = 16000
FRAME = 1600  # samples per binary message (100 ms); --frame-ms changes it


def recording(n_clips: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    from test_streaming_support import join_with_silence, ravdess_clips

    return join_with_silence(ravdess_clips(n_clips, seed=11), gap_s=0.8)


#: Pieces of the command lines of the service's processes: Ray's own, Serve's actors (`ray::...`) and `serve run`.
SERVICE_PROCESS_KEYS = ("ray::", "raylet", "gcs_server", "serve run", "ray/_private", "default_worker", "dashboard")


def cluster_pss_gib() -> float:
    import psutil

    total = 0
    for p in psutil.process_iter(["cmdline"]):
        cl = " ".join(p.info["cmdline"] or [])
        if any(k in cl for k in SERVICE_PROCESS_KEYS):
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, OSError):
                pass
    return total / 2**30


#: Process roles for the CPU accounting, by pieces of the process's command line (first match wins; "ray": every
#: other process of the service).
CPU_ROLES = (("ASR", ("ServeReplica:egmf:ASR",)), ("ModelServer", ("ServeReplica:egmf:ModelServer",)),
             ("Ingress", ("ServeReplica:egmf:Ingress",)), ("proxy", ("ProxyActor",)), ("ray", SERVICE_PROCESS_KEYS))


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) each role's processes have used so far, and this benchmark's own ("client")."""
    import psutil

    out = {role: 0.0 for role, _ in CPU_ROLES}
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        cl = " ".join(p.info["cmdline"] or [])
        t = p.info["cpu_times"]
        if t is None:
            continue
        for role, keys in CPU_ROLES:
            if any(k in cl for k in keys):
                out[role] += t.user + t.system
                break
    own = psutil.Process().cpu_times()
    out["client"] = own.user + own.system
    return out


def health(base: str) -> dict | None:
    """The service's /health answer, or None when nothing answers at `base`."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def wait_until_gone(base: str, timeout_s: float = 60.0) -> None:
    """Block until nothing answers at `base`. A stopped `serve run` leaves its Ray proxy up for a few seconds; a
    benchmark started in that window would take the dying service for its own and lose every stream."""
    t0 = time.monotonic()
    while health(base) is not None:
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"a service still answers at {base}/health after {timeout_s:.0f} s; stop it, or pass "
                               "--url to benchmark it")
        time.sleep(0.5)


#: Where the streams connect, by ``--ingress``: through Serve's proxy (port 8000, `deploy/config.yaml`), or to the
#: Ingress replica's own HTTP server that Ray Serve's direct ingress starts (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``;
#: the first port of its range, ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT``, default 30000, for the one replica).
INGRESS_PORTS = {"proxy": 8000, "direct": 30000}


def start_service(config: str, base: str, ingress: str = "proxy") -> tuple[subprocess.Popen, float, dict]:
    """Start `serve run config` (with Serve's direct ingress for ``ingress`` "direct") and wait until it is healthy
    at `base`: (process, seconds to healthy, its /health answer)."""
    wait_until_gone("http://127.0.0.1:8000")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               RAY_SERVE_ENABLE_DIRECT_INGRESS="1" if ingress == "direct" else "0")
    t0 = time.monotonic()
    proc = subprocess.Popen(["serve", "run", config], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while time.monotonic() - t0 < 300:
        answer = health(base)
        if answer is not None:
            return proc, time.monotonic() - t0, answer
        if proc.poll() is not None:
            raise RuntimeError("serve run exited before the service became healthy")
        time.sleep(0.25)
    raise RuntimeError("service not healthy after 300 s")


async def one_stream(url: str, pcm: bytes, refs: list[tuple[float, float]], delay: float,
                     frame: int = FRAME) -> dict:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    sent_at: list[float] = []  # wall time each frame was sent
    arrivals: list[tuple[float, dict]] = []
    nbytes = frame * 2
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SR, "sample_format": "int16", "language": "en"}))

        async def receive() -> None:
            async for msg in ws:
                arrivals.append((time.monotonic(), json.loads(msg)))

        rx = asyncio.create_task(receive())
        t0 = time.monotonic()
        for i in range(0, len(pcm), nbytes):
            due = t0 + (i // 2) / SR
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await ws.send(pcm[i:i + nbytes])
            sent_at.append(time.monotonic())
        await ws.send(json.dumps({"type": "end"}))
        await rx
    utts = [(t, e) for t, e in arrivals if e["type"] == "utterance"]
    errors = [e for _, e in arrivals if e["type"] == "error"]
    latencies, server_lat, lost = [], [], 0
    for lo, hi in refs:
        match = [(t, e) for t, e in utts if e["start"] < hi and e["end"] > lo]
        if not match:
            lost += 1
            continue
        t, e = match[-1]
        i = min(int(hi * SR) // frame, len(sent_at) - 1)
        latencies.append((t - sent_at[i]) * 1000)
        server_lat.append(e["latency_ms"])
    return {"latencies_ms": latencies, "server_latency_ms": server_lat, "lost": lost, "events": len(utts),
            "errors": errors}


def stream_offsets(kind: str, n: int, recording_s: float, utterances: int) -> list[float]:
    """Start delays of a level's ``n`` streams (see the module docstring)."""
    if kind == "burst":
        return [0.25 * k for k in range(n)]
    if kind == "spread":
        return [k * recording_s / utterances / n for k in range(n)]
    raise ValueError(f"--offsets: expected burst or spread, got {kind!r}")


async def level(url: str, n: int, pcm: bytes, refs, offsets: list[float], kind: str, frame: int = FRAME) -> dict:
    cpu0, t0 = cpu_by_role(), time.monotonic()
    res = await asyncio.gather(*(one_stream(url, pcm, refs, d, frame) for d in offsets))
    cpu1, wall = cpu_by_role(), time.monotonic() - t0
    lat = np.array([x for r in res for x in r["latencies_ms"]])
    srv = np.array([x for r in res for x in r["server_latency_ms"]])
    return {"streams": n, "offsets": kind, "offsets_s": [round(d, 2) for d in offsets],
            "utterances": n * len(refs), "lost": sum(r["lost"] for r in res),
            "latencies_ms": [round(float(x), 1) for x in lat],  # every utterance's: runs can be pooled
            "errors": [e for r in res for e in r["errors"]],
            "p50_ms": percentile(lat, 50, nd=None), "p95_ms": percentile(lat, 95, nd=None),
            "max_ms": float(lat.max()) if len(lat) else None,
            "server_p50_ms": percentile(srv, 50, nd=None), "server_p95_ms": percentile(srv, 95, nd=None),
            "loadavg_after": os.getloadavg()[0],
            # CPU seconds per utterance by role, and the cores each kept busy on average during the level
            "cpu_ms_per_utterance": {k: round((cpu1[k] - cpu0[k]) * 1000 / max(1, n * len(refs)), 1) for k in cpu1},
            "cores": {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in cpu1}}


def run_ingress(a: argparse.Namespace, ingress: str, x: np.ndarray, refs: list, pcm: bytes, result: dict) -> None:
    """Every level of ``--streams`` x ``--offsets`` against one service (started here unless ``--url``), its
    connections through ``ingress``; appends them to ``result["levels"]``."""
    proc = None
    base = f"http://127.0.0.1:{INGRESS_PORTS[ingress]}"
    url = a.url or f"ws://127.0.0.1:{INGRESS_PORTS[ingress]}/v1/stream"
    try:
        if a.url is None:
            proc, startup, answer = start_service(a.config, base, ingress)
            result.setdefault("startup_to_healthy_s", {})[ingress] = round(startup, 1)
            result["model_version"] = answer.get("model_version")
            result["llm_precision"] = answer.get("deployments", {}).get("ModelServer", {}).get("llm_precision")
            result.setdefault("pss_idle_gib", {})[ingress] = round(cluster_pss_gib(), 2)
        for kind in a.offsets.split(","):
            for n in (int(s) for s in a.streams.split(",")):
                offsets = stream_offsets(kind, n, len(x) / SR, len(refs))
                r = asyncio.run(level(url, n, pcm, refs, offsets, kind, a.frame_ms * SR // 1000))
                r["ingress"] = ingress
                print(json.dumps(r), flush=True)
                result["levels"].append(r)
        if proc is not None:
            result.setdefault("pss_after_gib", {})[ingress] = round(cluster_pss_gib(), 2)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            wait_until_gone("http://127.0.0.1:8000")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="WebSocket URL of a running service (default: start deploy/config.yaml)")
    ap.add_argument("--config", default="deploy/config.yaml")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--clips", type=int, default=4, help="RAVDESS clips per recording")
    ap.add_argument("--offsets", default="burst", help="burst, spread or burst,spread (see the module docstring)")
    ap.add_argument("--frame-ms", type=int, default=FRAME * 1000 // SR,
                    help="audio per binary message (default 100 ms); each message costs the service a hop through "
                         "Ray Serve's proxy, so this moves the CPU per utterance")
    ap.add_argument("--ingress", default="proxy",
                    help="proxy, direct or proxy,direct: streams through Serve's proxy (port 8000), or to the Ingress "
                         "replica's own port under Ray Serve's direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1, "
                         "port 30000; deploy/README.md, 'More streams per machine'); each its own service start")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_streams"))
    a = ap.parse_args()
    if a.url and "," in a.ingress:
        ap.error("--ingress with several values starts the service itself: leave out --url")

    x, refs = recording(a.clips)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    result: dict = {"machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "cpu_flags": cpu_flag_table(),
                    "loadavg_before": os.getloadavg()[0],
                    "recording_s": round(len(x) / SR, 2), "utterances_per_stream": len(refs), "config": a.config,
                    "frame_ms": a.frame_ms,
                    "command": " ".join(["python benchmarks/bench_serve_streams.py", *sys.argv[1:]])}
    result["levels"] = []
    for ingress in a.ingress.split(","):
        if ingress not in INGRESS_PORTS:
            ap.error(f"--ingress: expected proxy or direct, got {ingress!r}")
        run_ingress(a, ingress, x, refs, pcm, result)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| ingress | streams | offsets | utterances | lost | p50 ms | p95 ms | max ms | server p95 ms "
            "| load after |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["levels"]:
        f = (lambda v: "-" if v is None else f"{v:.0f}")
        rows.append(f"| {r['ingress']} | {r['streams']} | {r['offsets']} | {r['utterances']} | {r['lost']} | "
                    f"{f(r['p50_ms'])} | "
                    f"{f(r['p95_ms'])} | "
                    f"{f(r['max_ms'])} | {f(r['server_p95_ms'])} | {r['loadavg_after']:.1f} |")
    roles = list(result["levels"][0]["cpu_ms_per_utterance"]) if result["levels"] else []
    rows += ["", "CPU per utterance by process (ms of CPU time, user + system; in brackets the cores kept busy on "
             "average during the level; 'ray' = Ray's own processes and the controller, 'client' = this benchmark):",
             "", "| ingress | streams | offsets | " + " | ".join(roles) + " | total |",
             "|---|---|---|" + "---|" * (len(roles) + 1)]
    for r in result["levels"]:
        c, k = r["cpu_ms_per_utterance"], r["cores"]
        rows.append(f"| {r['ingress']} | {r['streams']} | {r['offsets']} | "
                    + " | ".join(f"{c[x]:.0f} ({k[x]:.2f})" for x in roles)
                    + f" | {sum(c.values()):.0f} ({sum(k.values()):.2f}) |")
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in result["cpu_flags"].items())

    def per_ingress(key: str) -> str:  # "proxy 43.8, direct 41.2", or "-" for a service started elsewhere
        return ", ".join(f"{k} {v}" for k, v in result.get(key, {}).items()) or "-"

    head = (f"Serve streams benchmark ({result['machine']}: {flags}; load before {result['loadavg_before']:.1f}); "
            f"model {result.get('model_version', '-')}, LLM projections {result.get('llm_precision', '-')}; "
            f"recording {result['recording_s']} s with {len(refs)} "
            f"utterances per stream, real-time pace, {a.frame_ms} ms of audio per message. "
            f"Startup to healthy: {per_ingress('startup_to_healthy_s')} s; cluster PSS idle "
            f"{per_ingress('pss_idle_gib')} GiB, after {per_ingress('pss_after_gib')} GiB. Ingress: 'proxy' = "
            f"through Serve's proxy (port 8000), 'direct' = to the Ingress replica's own port under Ray Serve's direct "
            f"ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1, port 30000). Latency: client "
            f"side, end of speech -> event; 'server' = the events' latency_ms, counted from when the stream's worker "
            f"took the utterance's last sample off its input queue (it excludes time queued behind the stream's "
            f"earlier utterances, so it understates the delay once the service falls behind). Offsets: 'burst' = "
            f"streams 0.25 s apart (their utterances end together: the worst case); 'spread' = evenly over one "
            f"utterance cycle, as independent calls arrive. Command: `{result['command']}`.\n\n")
    out.with_suffix(".md").write_text(head + "\n".join(rows) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

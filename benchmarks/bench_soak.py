"""Soak test of the Ray Serve application: N streams at real-time pace for M minutes, a model replica killed once in
the middle; nothing may be lost silently and memory must stay flat.

    python benchmarks/bench_soak.py                                  # quick: 2 streams x 2 min, 1-min windows
    python benchmarks/bench_soak.py --streams 8 --minutes 30 --window-min 5 --out benchmarks/results/soak_8x30

Starts ``serve run deploy/config.yaml`` itself (the service's real models), joins its Ray cluster to kill the
``ModelServer`` replica (``ray.kill``) at half time, and writes ``<out>.json`` and ``<out>.md`` (default
``benchmarks/results/soak``). Each stream is one long call: real RAVDESS speech (clips of different actors joined
with 0.8 s pauses, int16 16 kHz, 100 ms frames) looped at real-time pace, the streams started 1.3 s apart.

Per reference utterance sent (its clip fully sent before the end): received (an utterance event overlapping it),
failed (an ``analysis_*`` error event naming a span that overlaps it: reported, not lost) or lost (neither). Per
window of stream time: utterances, latency p50/p95 (client side: event arrival minus the send time of the frame
holding the end of speech), and the largest PSS of the ingress, ASR and ModelServer replica processes (sampled every
10 s). Memory is flat when each process's last window is within 5 % of its first window after warm-up (the second
window; the killed model replica is compared from its replacement's first full window on).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_serve_streams import FRAME, SR, recording, start_service  # noqa: E402  (benchmarks/ is on the path above)
from bench_support import cpu_model  # noqa: E402

DEPLOYMENTS = ("Ingress", "ASR", "ModelServer")
_SPAN = re.compile(r"^utterance (-?[0-9.]+)-(-?[0-9.]+) s")
FLAT_TOLERANCE = 0.05


def replica_pss_mib() -> dict[str, float]:
    """PSS of each deployment's replica processes (Ray titles them ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    out = dict.fromkeys(DEPLOYMENTS, 0.0)
    for p in psutil.process_iter(["cmdline"]):
        cl = " ".join(p.info["cmdline"] or [])
        for d in DEPLOYMENTS:
            if f"ServeReplica:egmf:{d}" in cl:
                try:
                    out[d] += p.memory_full_info().pss / 2**20
                except (psutil.Error, OSError):
                    pass
    return out


def kill_model_replica() -> list[str]:
    """``ray.kill`` the ModelServer replica actors of the running service; their names."""
    import ray

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False)
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::egmf#ModelServer#")]
    for a in names:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
    return [a["name"] for a in names]


def frame_holding(frame_ends: list[int], sample: int) -> int:
    """The index of the sent frame that holds the stream's sample ``sample``; ``frame_ends[i]``: the samples sent up to
    and including frame i. Counted, not computed as ``sample // FRAME``: the last frame of each loop of the recording is
    shorter (301,037 samples = 188 frames + 237 samples), and that division drifted ~85 ms per loop, which showed as a
    latency growing ~0.27 s a minute in the soaks before 2026-12-07."""
    return min(bisect.bisect_right(frame_ends, sample), len(frame_ends) - 1)


async def one_stream(url: str, k: int, pcm: bytes, refs: list[tuple[float, float]], loops: int,
                     delay: float) -> dict:
    """One call of ``loops`` repetitions of the recording; returns per reference utterance its outcome."""
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    rec_s = len(pcm) / 2 / SR
    allrefs = [(lo + i * rec_s, hi + i * rec_s) for i in range(loops) for lo, hi in refs]
    sent_at: list[float] = []
    frame_ends: list[int] = []  # samples sent up to and including each frame
    arrivals: list[tuple[float, dict]] = []
    nbytes = FRAME * 2
    async with connect(url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SR, "sample_format": "int16", "language": "en",
                                  "stream_id": f"soak-{k}"}))

        async def receive() -> None:
            async for msg in ws:
                arrivals.append((time.monotonic(), json.loads(msg)))

        rx = asyncio.create_task(receive())
        t0 = time.monotonic()
        sent = 0  # samples
        for _ in range(loops):
            for i in range(0, len(pcm), nbytes):
                await asyncio.sleep(max(0.0, t0 + sent / SR - time.monotonic()))  # real time: each frame when due
                frame = pcm[i:i + nbytes]
                await ws.send(frame)
                sent += len(frame) // 2
                sent_at.append(time.monotonic())
                frame_ends.append(sent)
        await ws.send(json.dumps({"type": "end"}))
        await rx
        close_code = ws.close_code
    utts = [(t, e) for t, e in arrivals if e["type"] == "utterance"]
    failures = []
    for _, e in arrivals:
        m = _SPAN.match(e.get("message", "")) if e["type"] == "error" else None
        if m:
            failures.append((float(m.group(1)), float(m.group(2)), e["code"]))
    outcomes = []
    for lo, hi in allrefs:
        match = [(t, e) for t, e in utts if e["start"] < hi and e["end"] > lo]
        failed = [c for a, b, c in failures if a < hi and b > lo]
        if match:
            t, _ = match[-1]
            frame = frame_holding(frame_ends, int(hi * SR))
            outcomes.append({"end_s": hi, "status": "received", "latency_ms": (t - sent_at[frame]) * 1000})
        else:
            outcomes.append({"end_s": hi, "status": failed[0] if failed else "lost"})
    other_errors = [e for _, e in arrivals if e["type"] == "error" and not _SPAN.match(e.get("message", ""))]
    return {"stream": k, "close_code": close_code, "outcomes": outcomes, "other_errors": other_errors,
            "events": len(arrivals)}


async def soak(url: str, streams: int, pcm: bytes, refs, loops: int, kill_at_s: float, samples: list) -> dict:
    t0 = time.monotonic()
    killed: dict = {}

    async def monitor(done: asyncio.Event) -> None:
        while not done.is_set():
            t = time.monotonic() - t0
            samples.append({"t_s": round(t, 1), **{d: round(v, 1) for d, v in replica_pss_mib().items()},
                            "loadavg": os.getloadavg()[0]})
            if not killed and t >= kill_at_s:
                killed["at_s"] = round(t, 1)
                killed["actors"] = await asyncio.to_thread(kill_model_replica)
                print(f"killed {killed['actors']} at {t:.0f} s", flush=True)
            try:
                await asyncio.wait_for(done.wait(), 10)
            except TimeoutError:
                pass

    done = asyncio.Event()
    mon = asyncio.create_task(monitor(done))
    res = await asyncio.gather(*(one_stream(url, k, pcm, refs, loops, 1.3 * k) for k in range(streams)))
    done.set()
    await mon
    return {"streams": res, "killed": killed}


def windows(result: dict, samples: list[dict], window_s: float) -> list[dict]:
    outcomes = [o for s in result["streams"] for o in s["outcomes"]]
    n = int(np.ceil(max(o["end_s"] for o in outcomes) / window_s))
    rows = []
    for w in range(n):
        lo, hi = w * window_s, (w + 1) * window_s
        os_ = [o for o in outcomes if lo <= o["end_s"] < hi]
        lat = np.array([o["latency_ms"] for o in os_ if o["status"] == "received"])
        mem = [s for s in samples if lo <= s["t_s"] < hi]
        rows.append({"window": f"{lo / 60:g}-{hi / 60:g} min", "sent": len(os_),
                     "received": sum(o["status"] == "received" for o in os_),
                     "failed_reported": sum(o["status"] not in ("received", "lost") for o in os_),
                     "lost": sum(o["status"] == "lost" for o in os_),
                     "p50_ms": round(float(np.percentile(lat, 50))) if len(lat) else None,
                     "p95_ms": round(float(np.percentile(lat, 95))) if len(lat) else None,
                     **{f"{d}_mib": round(max(s[d] for s in mem), 1) if mem else None for d in DEPLOYMENTS}})
    return rows


def flatness(rows: list[dict], killed_window: int | None) -> dict:
    """Growth of each process's memory from its first window after warm-up to the last window."""
    out = {}
    for d in DEPLOYMENTS:
        first = 1 if len(rows) > 2 else 0
        if d == "ModelServer" and killed_window is not None:
            first = max(first, killed_window + 1)  # the replacement replica, from its first full window
        vals = [r[f"{d}_mib"] for r in rows[first:] if r[f"{d}_mib"]]
        if len(vals) >= 2:
            growth = vals[-1] / vals[0] - 1
            out[d] = {"from_mib": vals[0], "to_mib": vals[-1], "growth": round(growth, 4),
                      "flat": growth <= FLAT_TOLERANCE}
    return out


def write_md(path: Path, r: dict) -> None:
    lines = [f"# Soak: {r['streams']} streams x {r['minutes']} min at real-time pace, model replica killed once",
             "", f"`{r['command']}` on {r['machine']} (load average before: {r['loadavg_before']:.2f}); "
             f"model {r.get('model_version')}; {r['date']}.", "",
             f"Sent {r['totals']['sent']} utterances: received {r['totals']['received']}, failed and reported "
             f"{r['totals']['failed_reported']}, **lost {r['totals']['lost']}**. ModelServer replica killed at "
             f"{r['killed'].get('at_s')} s. Close codes: {r['close_codes']}; other error events: "
             f"{r['other_errors']}.", "",
             "| window | sent | received | failed (reported) | lost | p50 ms | p95 ms | Ingress MiB | ASR MiB | "
             "ModelServer MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for w in r["windows"]:
        lines.append(f"| {w['window']} | {w['sent']} | {w['received']} | {w['failed_reported']} | {w['lost']} | "
                     f"{w['p50_ms']} | {w['p95_ms']} | {w['Ingress_mib']} | {w['ASR_mib']} | {w['ModelServer_mib']} |")
    lines += ["", "Memory growth after warm-up (PSS, largest sample per window; flat = at most +5 %): "
              + ", ".join(f"{d} {v['from_mib']} -> {v['to_mib']} MiB ({v['growth']:+.1%}, "
                          f"{'flat' if v['flat'] else 'NOT flat'})" for d, v in r["flatness"].items()) + ".", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--window-min", type=float, default=1.0, help="report window, minutes of stream time")
    ap.add_argument("--clips", type=int, default=4, help="RAVDESS clips per loop of the recording")
    ap.add_argument("--config", default="deploy/config.yaml")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak"))
    a = ap.parse_args()

    x, refs = recording(a.clips)
    x = np.concatenate([x, np.zeros(int(0.8 * SR), x.dtype)])  # the loops' pause, as between the clips
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    loops = max(1, round(a.minutes * 60 / (len(x) / SR)))
    result: dict = {"streams": a.streams, "minutes": round(loops * len(x) / SR / 60, 2),
                    "machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "loadavg_before": os.getloadavg()[0],
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "config": a.config,
                    "command": " ".join(["python benchmarks/bench_soak.py", *sys.argv[1:]])}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    proc, startup, answer = start_service(a.config, "http://127.0.0.1:8000")
    samples: list[dict] = []
    try:
        result["startup_to_healthy_s"] = round(startup, 1)
        result["model_version"] = answer.get("model_version")
        run = asyncio.run(soak("ws://127.0.0.1:8000/v1/stream", a.streams, pcm, refs, loops,
                               loops * len(x) / SR / 2, samples))
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    window_s = a.window_min * 60
    rows = windows(run, samples, window_s)
    killed_at = run["killed"].get("at_s")
    outcomes = [o for s in run["streams"] for o in s["outcomes"]]
    result.update({
        "killed": run["killed"], "windows": rows, "samples": samples,
        "flatness": flatness(rows, int(killed_at // window_s) if killed_at is not None else None),
        "close_codes": sorted({s["close_code"] for s in run["streams"]}),
        "other_errors": [e for s in run["streams"] for e in s["other_errors"]],
        "totals": {"sent": len(outcomes), "received": sum(o["status"] == "received" for o in outcomes),
                   "failed_reported": sum(o["status"] not in ("received", "lost") for o in outcomes),
                   "lost": sum(o["status"] == "lost" for o in outcomes),
                   "failures_by_code": {c: sum(o["status"] == c for o in outcomes)
                                        for c in {o["status"] for o in outcomes} - {"received", "lost"}}},
        "outcomes": [s["outcomes"] for s in run["streams"]],
    })
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    write_md(out.with_suffix(".md"), result)
    print(out.with_suffix(".md").read_text())
    return 0 if result["totals"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""End-of-speech -> event latency, real-time factor and the cost of context of the live pipeline, on this CPU.

    python benchmarks/bench_streaming_latency.py            # 50 utterances, ~5 min -> benchmarks/results/
    python benchmarks/bench_streaming_latency.py --quick    # 5 utterances, < 2 min -> a temporary folder
    python benchmarks/bench_streaming_latency.py --wait-idle 1800   # shared machine: wait for other work to stop
    python benchmarks/bench_streaming_latency.py --speculation on --checkpoint default runs/x/best.safetensors
                                                            # two checkpoints side by side, A / B / B / A
    python benchmarks/bench_streaming_latency.py --speculation on --folded-answers 0 2
                                                            # answer trees folded into the prompt pass or not
    python benchmarks/bench_streaming_latency.py --speculation on --asr-threads 1 2
                                                            # the recognizer on 1 or 2 CPU threads

Results: ``benchmarks/results/streaming_latency.json`` (every utterance's row) and ``.md`` (the summary).

What runs: the shipped checkpoint (``egmf_core/checkpoints/default.safetensors``) on CPU behind the same
:class:`streaming.pipeline.StreamAnalyzer` + :class:`streaming.analyzer.EGMFUtteranceAnalyzer` that ``python -m
streaming`` and the service use (webrtcvad segmenter, faster-whisper tiny.en with its one encoder pass, the EGMF
fusion stack and the LoRA LLM), with the CLI's default settings. The audio is real speech: RAVDESS clips from
``../shared/data/ravdess`` (one sentence each, ~1.5-2.5 s) and espeak-ng sentences of 2-7.5 s, each trimmed to its
speech +-0.15 s and separated by 1 s of silence with a -70 dBFS noise floor, pushed into a
:class:`~streaming.sources.PushSource` in 30 ms blocks (the microphone's block size) at real-time pace by a feeder
thread, while the main thread iterates the stream as the CLI does.

Measured per utterance:

* **latency**: wall time the utterance event came out of the stream minus wall time the block holding the
  utterance's reference end of speech (energy-based, independent of the VAD) was pushed. It includes the VAD's
  end-of-speech hangover (300 ms), recognition, the model, and any time the utterance waited behind the previous
  one. The events' own ``latency_ms`` (from the dequeuing of the VAD's end) is recorded too.
* **real-time factor**: analysis wall time (recognizer + model) / the utterance's speech duration (VAD span);
  ``overall`` = sum of analysis times / sum of durations. The VAD's cost is measured over the whole stream.
* **stages** (from ``AnalysisResult.timings_ms``): ``asr_encoder`` (log-mel + the Whisper encoder, which runs
  over its whole padded window, 10 s live by default, whatever the utterance's length), ``asr_decode``, ``predict``
  (the whole EGMF predictor call) and its parts ``fusion``, ``llm_prefill`` (prompt assembly + the LLM pass over the
  prompt ids the model's KV cache does not hold: after the template prefix, and with a "context_first" checkpoint
  after the question and the conversation so far; ``prompt_pass_tokens`` counts them; the pass also carries the answer
  trees of the auxiliary head's likeliest labels, ``EGMFModel.folded_answers``) and ``llm_answer`` (the walk through
  the answer tree, plus a pass over it on the KV cache when the prompt pass did not carry it: ``answer_pass`` counts
  the utterances that needed one).
* **cost of context**: the 50 utterances are ONE conversation (one stream). Utterances 1-5 and 46-50 are the same
  five recordings (46-50 = 2, 3, 4, 5, 1), so utterance 1 and 50 are the same audio with an empty vs a full context
  window; with every context turn tokenized once and the window bounded (3 turns), model time must stay flat. An
  offline check then scores utterance 50's inputs with an empty and with its real context, interleaved, to isolate
  the model's cost of the context from the noise of the live run.

The machine: CPU model, ``os.getloadavg()`` before and after, and the CPU time other processes used during the
run (from /proc/stat): on a shared 2-core machine another busy process slows every stage, so read the numbers with
it. The targets (p95 latency <= 1.0 s for utterances up to 8 s, overall real-time factor <= 0.25) are reported as
met or not met.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SR = 16000
BLOCK = 480  # 30 ms pushed at a time, as the microphone source delivers
GAP_S = 1.0  # silence between utterances
TRIM_PAD_S = 0.15  # audio kept around each piece's speech span
TARGET_P95_MS = 1000.0
TARGET_RTF = 0.25
MAX_UTTERANCE_S = 8.0
LENGTH_BINS = (0.0, 2.0, 4.0, 6.0, 8.0)

# espeak-ng sentences, 2 s to 7.5 s at 160 words per minute; emotional content varies.
SENTENCES = (
    "I am really worried that something happened to her on the way home last night.",
    "I can't believe you did that.",
    "The meeting has been moved to Thursday afternoon because the manager is still travelling and cannot join us "
    "before then.",
    "Oh wow, that is amazing news!",
    "Honestly this is the best news I have heard all week.",
    "We waited for two hours and nobody even bothered to call us back.",
    "Please stop calling me about this because I already told you no.",
    "Thank you so much for helping me move all of these heavy boxes up the stairs this morning.",
    "This is the third time this month that my order arrived broken and frankly I am completely done with your "
    "company and I want my money back.",
    "I am so sorry for your loss. He was a wonderful man.",
    "When I opened the door and saw everyone standing there with the cake I honestly could not stop smiling for the "
    "rest of the evening.",
    "Get out of my office right now.",
)
VOICES = ("en-us", "en-gb+f3")


# ------------------------------------------------------------------------------------------------------ inputs


@dataclass(eq=False)
class Piece:
    name: str
    source: str  # "ravdess" or "espeak-ng"
    audio: np.ndarray  # trimmed to the speech +- TRIM_PAD_S
    bounds: tuple[float, float]  # reference speech span inside `audio`
    script: str | None = None  # what was said (espeak-ng), or the RAVDESS emotion label

    @property
    def speech_s(self) -> float:
        return self.bounds[1] - self.bounds[0]


def _trim(name: str, source: str, x: np.ndarray, script: str | None) -> Piece:
    from test_streaming_support import speech_bounds

    b0, b1 = speech_bounds(x)
    lo, hi = max(0, int((b0 - TRIM_PAD_S) * SR)), min(len(x), int(np.ceil((b1 + TRIM_PAD_S) * SR)))
    return Piece(name, source, np.ascontiguousarray(x[lo:hi], np.float32), (b0 - lo / SR, b1 - lo / SR), script)


def espeak_pieces(tmp: Path, sentences: tuple[str, ...] = SENTENCES) -> list[Piece]:
    from test_streaming_support import load_audio

    out = []
    for i, text in enumerate(sentences):
        wav = tmp / f"espeak_{i}.wav"
        subprocess.run(["espeak-ng", "-v", VOICES[i % 2], "-s", "160", "-w", str(wav), text], check=True,
                       capture_output=True)
        out.append(_trim(f"espeak{i:02d}", "espeak-ng", load_audio(wav), text))  # PyAV resamples to 16 kHz
    return out


def ravdess_pieces(n: int, seed: int = 5) -> list[Piece]:
    from test_streaming_support import ravdess_clips

    return [_trim(Path(c.file).stem, "ravdess", c.audio, c.emotion) for c in ravdess_clips(n, seed=seed)]


def make_pool(tmp: Path, n_ravdess: int, n_espeak: int) -> list[Piece]:
    """Alternating espeak-ng / RAVDESS pieces (espeak-ng first), so any prefix mixes long and short utterances."""
    es = espeak_pieces(tmp, SENTENCES[:n_espeak]) if n_espeak and shutil.which("espeak-ng") else []
    rv = ravdess_pieces(n_ravdess) if n_ravdess else []
    pool = [p for pair in zip(es, rv) for p in pair] + es[len(rv):] + rv[len(es):]
    too_long = [p.name for p in pool if p.speech_s > MAX_UTTERANCE_S - 0.3]
    if too_long:
        raise RuntimeError(f"pieces longer than {MAX_UTTERANCE_S} s would be split by the VAD: {too_long}")
    return pool


def conversation_order(pool: list[Piece], n: int) -> list[Piece]:
    """n utterances; the last ones repeat the first ones' audio so that first and last compare cleanly.

    n >= 10: [A B C D E] + (n - 10 from the rest of the pool, cycling) + [B C D E A]; smaller n: [A B ... A]."""
    if n < 2:
        raise ValueError("need at least 2 utterances")
    if n < 10:
        return pool[: n - 1] + pool[:1]
    head = pool[:5]
    rest = pool[5:] or pool
    middle = [rest[i % len(rest)] for i in range(n - 10)]
    return head + middle + head[1:] + head[:1]


def build_stream(seq: list[Piece], gap_s: float = GAP_S, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The pieces separated by silence with a faint noise floor; returns the signal and the reference speech spans
    in stream seconds. Starts with `gap_s` of silence and ends with `gap_s` + 0.5 s (the VAD closes the last one
    itself)."""
    from test_streaming_support import join_with_silence

    return join_with_silence(seq, gap_s, seed=seed, tail_s=0.5)


# ------------------------------------------------------------------------------------------------------ machine


def write_table_report(out: Path, result: dict, markdown: Any, script: str, argv: list[str] | None) -> None:
    """Record the command that made `result`, write `out`.json and `out`.md (`markdown(result)`) and print the
    Markdown: the closing steps of the benchmarks that report one table."""
    result["command"] = " ".join([f"python benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)


def _speculation_lead_ms() -> float:
    """How much sooner a speculative analysis starts: the VAD's hangover less the post-roll (live defaults)."""
    from egmf_core.features.segmenter import SegmenterConfig

    c = SegmenterConfig()
    return float(c.hangover_ms - c.post_roll_ms)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _proc_stat_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores; idle and iowait excluded)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_idle(timeout_s: float, say=print, window_s: float = 10.0, max_other_cores: float = 0.2) -> dict:
    """Wait (up to ``timeout_s``) until other processes used less than ``max_other_cores`` over ``window_s``."""
    t0 = time.monotonic()
    while True:
        a = (time.monotonic(), _proc_stat_busy_s(), time.process_time())
        time.sleep(window_s)
        other = _other_cores(a, (time.monotonic(), _proc_stat_busy_s(), time.process_time()))
        waited = time.monotonic() - t0
        if other is None or other < max_other_cores:
            return {"waited_s": round(waited, 1), "idle_reached": other is not None, "other_cores_last_window": other}
        if waited >= timeout_s:
            return {"waited_s": round(waited, 1), "idle_reached": False, "other_cores_last_window": other}
        say(f"machine busy (other processes {other:.2f} cores over {window_s:.0f} s), waiting ...")


class MachineLoad:
    """Load average and the CPU time of OTHER processes over an interval (this process's own time subtracted)."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        self._busy0, self._own0, self._wall0 = _proc_stat_busy_s(), time.process_time(), time.monotonic()

    def finish(self) -> dict[str, Any]:
        busy1, own1, wall1 = _proc_stat_busy_s(), time.process_time(), time.monotonic()
        wall = wall1 - self._wall0
        d: dict[str, Any] = {"load_average_before": [round(v, 2) for v in self.load_before],
                             "load_average_after": [round(v, 2) for v in os.getloadavg()],
                             "interval_s": round(wall, 1), "this_process_cores": round((own1 - self._own0) / wall, 2)}
        if busy1 is not None and self._busy0 is not None:
            d["other_processes_cores"] = round(max(0.0, (busy1 - self._busy0) - (own1 - self._own0)) / wall, 2)
        return d


# ------------------------------------------------------------------------------------------------------ the run


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
    cpu = [(start, _proc_stat_busy_s(), time.process_time())]  # [0]: stream start, then one per event
    th.start()
    events = []
    for ev in sa.run(src):
        now = time.monotonic()
        events.append((now, ev))
        cpu.append((now, _proc_stat_busy_s(), time.process_time()))
    th.join()
    if errors:
        raise errors[0]
    return {"events": events, "pushed": pushed, "wall_s": time.monotonic() - start, "segmenter_ms": sa.segmenter_ms,
            "stream_s": len(x) / SR, "cpu": cpu, "speculation": dict(sa.speculation)}


def analysis_intervals(intervals: list[tuple[float, float, bool]]) -> dict[str, Any]:
    """How many analyses ran (cancelled speculations included) and how many overlapped another in wall time."""
    spans = sorted(intervals)
    overlapping: set[int] = set()
    for i, (a0, a1, _) in enumerate(spans):
        for j in range(i + 1, len(spans)):
            if spans[j][0] >= a1:
                break
            overlapping.update((i, j))
    cancelled = [(b - a) * 1000.0 for a, b, done in spans if not done]
    return {"n": len(spans), "overlapping": len(overlapping), "cancelled": len(cancelled),
            "cancelled_ms_p50": round(float(np.median(cancelled)), 1) if cancelled else None}


def _other_cores(a: tuple, b: tuple) -> float | None:
    """Cores other processes kept busy on average between two (wall, machine busy s, own CPU s) samples."""
    if a[1] is None or b[1] is None or b[0] <= a[0]:
        return None
    return round(max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]), 2)


def block_wall(pushed: np.ndarray, t: float) -> float:
    """Wall time the block holding stream time ``t`` was pushed."""
    k = min(len(pushed) - 1, max(0, int(np.ceil(t * SR / BLOCK)) - 1))
    return float(pushed[k])


def _pct(a: list[float] | np.ndarray, q: float) -> float | None:
    a = np.asarray(a, float)
    return round(float(np.percentile(a, q)), 1) if len(a) else None


def latency_stats(a: list[float] | np.ndarray, nd: int = 1) -> dict[str, Any]:
    a = np.asarray(a, float)
    if not len(a):
        return {"n": 0}
    return {"n": len(a), "p50": round(float(np.median(a)), nd), "p95": round(float(np.percentile(a, 95)), nd),
            "mean": round(float(a.mean()), nd), "min": round(float(a.min()), nd), "max": round(float(a.max()), nd)}


def _mean_or_none(a: list[float]) -> float | None:
    return round(float(np.mean(a)), 2) if a else None


def _per(num: float | None, den: float | None, nd: int = 2) -> float | None:
    return round(num / den, nd) if num is not None and den else None


def prompt_tokens(model: Any, context: tuple, speaker: str, text: str) -> tuple[int, Any]:
    turn = model.prompts.make_turn(speaker, text)
    p = model.prompts.build(context, turn)
    return len(p.before) + model.cfg.fusion.pseudo_tokens + len(p.after), turn


def offline_context_check(analyzer: Any, rec: dict[str, Any], text: str, speaker: str, reps: int) -> dict[str, Any]:
    """The model alone on one utterance's real inputs: empty context vs the context it had in the stream,
    ``reps`` interleaved calls each (model.score, what predictor.predict runs, without appending a turn)."""
    from egmf_core.model_io import ModelInput

    model = analyzer.predictor.model
    asr = analyzer.frontend.process(np.ascontiguousarray(rec["segment"].audio, np.float32))
    ctx_full = rec["context"]
    n_full, turn = prompt_tokens(model, ctx_full, speaker, text)
    n_empty, _ = prompt_tokens(model, (), speaker, text)
    inputs = {"empty": ModelInput(context=(), current=turn, audio=asr.encoder_states),
              "stream": ModelInput(context=ctx_full, current=turn, audio=asr.encoder_states)}
    times: dict[str, list[float]] = {"empty": [], "stream": []}
    parts: dict[str, list[dict]] = {"empty": [], "stream": []}
    answers = {}
    for name in inputs:  # one untimed call each
        pred = model.score([inputs[name]])[0]
        answers[name] = (pred.emotion, float(pred.sentiment_score), (pred.prompt_tokens or {}).get("answer_pass"))
    for i in range(reps):
        for name in (("empty", "stream") if i % 2 == 0 else ("stream", "empty")):
            t0 = time.perf_counter()
            pred = model.score([inputs[name]])[0]
            times[name].append((time.perf_counter() - t0) * 1000.0)
            parts[name].append({**(pred.timings_ms or {}), "encoded": (pred.prompt_tokens or {}).get("encoded")})
    out: dict[str, Any] = {"reps": reps, "context_turns_stream": len(ctx_full)}
    for name, n_tok in (("empty", n_empty), ("stream", n_full)):
        encoded = [p["encoded"] for p in parts[name] if p.get("encoded") is not None]
        n_pass = int(np.median(encoded)) if encoded else n_tok  # the rest came from the model's KV cache
        out[name] = {"prompt_tokens": n_tok, "prompt_pass_tokens": n_pass, "score_ms": latency_stats(times[name]),
                     **{f"{k}_ms_p50": round(float(np.median([p.get(k, np.nan) for p in parts[name]])), 1)
                        for k in ("fusion", "llm_prefill", "llm_answer")},
                     "answer": f"{answers[name][0]} {answers[name][1]:+.1f}",
                     "answer_tokens": answers[name][2]}
        out[name]["llm_prefill_ms_per_token"] = _per(out[name]["llm_prefill_ms_p50"], n_pass)
        out[name]["llm_answer_ms_per_token"] = _per(out[name]["llm_answer_ms_p50"], out[name]["answer_tokens"], 1)
    out["ratio_stream_over_empty_p50"] = round(out["stream"]["score_ms"]["p50"] / out["empty"]["score_ms"]["p50"], 3)
    return out


def load_analyzer(say=print, checkpoint: str = "default") -> tuple[Any, float]:
    """The analyzer `python -m streaming` builds (CLI defaults; the shipped checkpoint unless told) and its load time
    in seconds."""
    from streaming.analyzer import EGMFAnalyzerConfig, EGMFUtteranceAnalyzer

    t_load = time.monotonic()
    inner = EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(checkpoint=checkpoint))
    load_s = time.monotonic() - t_load
    say(f"model loaded in {load_s:.1f} s: {inner.version}")
    return inner, load_s


def recognizer(inner: Any, cpu_threads: int) -> Any:
    """`inner`'s recognizer on `cpu_threads` threads: the same one when it already runs so, else a second instance of
    the same model and settings (warmed up)."""
    from egmf_core.features.audio import WhisperFrontend

    if inner.frontend.config.cpu_threads == cpu_threads:
        return inner.frontend
    frontend = WhisperFrontend(dataclasses.replace(inner.frontend.config, cpu_threads=cpu_threads))
    frontend.warm_up()
    return frontend


def run_benchmark(n_utterances: int = 50, *, n_ravdess: int = 12, n_espeak: int = 12, offline_reps: int = 8,
                  gap_s: float = GAP_S, wait_idle_s: float = 0.0, speculative: bool = True,
                  loaded: tuple[Any, float] | None = None, say=print) -> dict[str, Any]:
    """One paced run of the conversation; ``speculative``: the pipeline's speculative end of utterance (the CLI's
    live default). ``loaded``: an analyzer from :func:`load_analyzer` to reuse (side-by-side runs)."""
    import torch

    from streaming.events import SpeechStartedEvent, UtteranceEvent

    t_setup = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        pool = make_pool(Path(tmp), n_ravdess, n_espeak)
    seq = conversation_order(pool, n_utterances)
    x, refs = build_stream(seq, gap_s)
    say(f"{len(seq)} utterances from {len(pool)} pieces ({sum(p.source == 'ravdess' for p in pool)} RAVDESS, "
        f"{sum(p.source == 'espeak-ng' for p in pool)} espeak-ng), stream {len(x) / SR:.1f} s "
        f"(inputs ready in {time.monotonic() - t_setup:.1f} s)")

    inner, load_s = loaded or load_analyzer(say)
    analyzer = RecordingAnalyzer(inner)

    # Warm-up on two other pieces (first calls pay for lazy initialisation), not paced, own conversation.
    warm_pieces = [p for p in pool if all(p is not q for q in seq[:5])][:2] or pool[:2]
    xw, _ = build_stream(warm_pieces, 0.8, seed=1)
    run_stream(analyzer, xw, "warmup", paced=False, speculative=speculative)
    analyzer.records.clear()
    analyzer.intervals.clear()

    idle_wait = wait_for_idle(wait_idle_s, say) if wait_idle_s > 0 else None
    load = MachineLoad()
    say(f"load average before: {' '.join(f'{v:.2f}' for v in load.load_before)}; streaming at real-time pace "
        f"(speculative end of utterance {'on' if speculative else 'off'}) ...")
    r = run_stream(analyzer, x, "bench", speculative=speculative)
    machine_load = load.finish()
    # "shared": other processes kept at least a quarter of a core busy on average while the stream ran
    machine_load["shared"] = machine_load.get("other_processes_cores", 0.0) >= 0.25
    if idle_wait is not None:
        machine_load["wait_for_idle"] = idle_wait

    utts = [(t, e) for t, e in r["events"] if isinstance(e, UtteranceEvent)]
    # other processes' CPU use between consecutive utterance events (the first: since the stream started)
    ev_cpu = [c for (_, e), c in zip(r["events"], r["cpu"][1:]) if isinstance(e, UtteranceEvent)]
    other_by_event = [_other_cores(a, b) for a, b in zip([r["cpu"][0]] + ev_cpu[:-1], ev_cpu)]
    starts = [(t, e) for t, e in r["events"] if isinstance(e, SpeechStartedEvent)]
    errors = [e.to_dict() for _, e in r["events"] if e.type == "error"]
    recs = {(rec["start"], rec["end"]): rec for rec in analyzer.records}
    model = inner.predictor.model

    rows: list[dict[str, Any]] = []
    unmatched_refs = 0
    used: set[int] = set()
    for i, ((lo, hi), piece) in enumerate(zip(refs, seq)):
        match = [(j, t, e) for j, (t, e) in enumerate(utts) if e.start < hi and e.end > lo]
        if not match:
            unmatched_refs += 1
            continue
        j, t_ev, ev = match[-1]
        used.update(m[0] for m in match)
        rec = recs.get((round(ev.start, 6), round(ev.end, 6)), {})
        ss = [t for t, s in starts if abs(s.start - ev.start) < 1e-6]
        n_tok = prompt_tokens(model, rec.get("context", ()), ev.speaker, ev.text)[0] if rec else None
        n_pass = rec.get("prompt_tokens", {}).get("encoded", n_tok)  # the rest came from the model's KV cache
        n_answer = rec.get("prompt_tokens", {}).get("answer_pass")  # 0: the prompt pass carried the answer's tree
        tm = rec.get("timings_ms", {})
        dur = ev.end - ev.start
        rows.append({
            "index": i + 1, "piece": piece.name, "source": piece.source, "script": piece.script,
            "ref_start_s": round(lo, 3), "ref_end_s": round(hi, 3), "ref_speech_s": round(hi - lo, 3),
            "vad_start_s": ev.start, "vad_end_s": ev.end, "vad_speech_s": round(dur, 3),
            "text": ev.text, "emotion": ev.emotion.label, "sentiment": ev.sentiment.score,
            "latency_ms": round((t_ev - block_wall(r["pushed"], hi)) * 1000.0, 1),
            "event_latency_ms": ev.latency_ms,
            "speech_started_latency_ms": round((ss[0] - block_wall(r["pushed"], lo)) * 1000.0, 1) if ss else None,
            "analyze_ms": round(rec.get("analyze_ms", float("nan")), 1),
            "speculative": bool(rec.get("speculative", False)),  # the event used the speculative analysis
            "rtf": round(rec.get("analyze_ms", float("nan")) / 1000.0 / dur, 3) if dur > 0 else None,
            "stages_ms": {k: round(v, 1) for k, v in tm.items()},
            "context_turns": len(rec.get("context", ())), "prompt_tokens": n_tok, "prompt_pass_tokens": n_pass,
            "folded_tokens": rec.get("prompt_tokens", {}).get("folded"), "answer_tokens": n_answer,
            "llm_prefill_ms_per_token": _per(tm.get("llm_prefill"), n_pass, 3),
            "llm_answer_ms_per_token": _per(tm.get("llm_answer"), n_answer, 1),
            "other_processes_cores": other_by_event[j],
            "events_for_this_utterance": len(match),
        })
    extra_events = len(utts) - len(used)

    def col(key: str, subset: list[dict] | None = None) -> list[float]:
        return [row[key] for row in (rows if subset is None else subset) if row.get(key) is not None]

    def stage(name: str, subset: list[dict] | None = None) -> list[float]:
        return [row["stages_ms"][name] for row in (rows if subset is None else subset) if name in row["stages_ms"]]

    durs = col("vad_speech_s")
    within = [row for row in rows if row["vad_speech_s"] <= MAX_UTTERANCE_S + 1e-6]
    lat = col("latency_ms", within)
    analyze_total = sum(col("analyze_ms"))
    overall_rtf = analyze_total / 1000.0 / sum(durs) if durs else None
    hist = np.histogram(durs, bins=LENGTH_BINS)[0].tolist() if durs else []
    by_length = []
    for lo_b, hi_b in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
        sub = [row for row in rows if lo_b <= row["vad_speech_s"] < hi_b or (hi_b == LENGTH_BINS[-1] and
                                                                             row["vad_speech_s"] == hi_b)]
        rtf_sub = col("rtf", sub)
        by_length.append({"speech_s": f"{lo_b:g}-{hi_b:g}", "n": len(sub),
                          "latency_ms_p50": _pct(col("latency_ms", sub), 50),
                          "analyze_ms_p50": _pct(col("analyze_ms", sub), 50),
                          "rtf_p50": round(float(np.median(rtf_sub)), 3) if rtf_sub else None})

    stage_names = ["asr_encoder", "asr_decode", "predict", "fusion", "llm_prefill", "llm_answer", "face"]
    stages = {s: latency_stats(stage(s)) for s in stage_names if stage(s)}
    stages["analyze"] = latency_stats(col("analyze_ms"))
    stages["wait_before_analysis"] = latency_stats([row["latency_ms"] - row["analyze_ms"] for row in rows])
    shares = {s: round(sum(stage(s)) / analyze_total, 3) for s in ("asr_encoder", "asr_decode", "fusion",
                                                                  "llm_prefill", "llm_answer") if stage(s)}

    # Cost of context: same audio at the start and the end of the conversation.
    by_index = {row["index"]: row for row in rows}
    n = len(seq)
    first, last = by_index.get(1), by_index.get(n)
    # conversation_order: with >= 10 utterances the last five are the first five recordings (rotated by one)
    head_idx, tail_idx = (list(range(1, 6)), list(range(n - 4, n + 1))) if n >= 10 else ([], [])
    context: dict[str, Any] = {"same_audio_first_and_last": seq[0] is seq[-1],
                               "max_context_turns": model.cfg.prompt.max_context_turns}
    # asr_encoder does not depend on the context at all (fixed encoder window): its ratio is the control for drift in
    # machine load between the start and the end of the conversation.
    for key in ("predict", "llm_prefill", "llm_answer", "fusion", "asr_encoder"):
        if first and last and key in first["stages_ms"] and key in last["stages_ms"]:
            context[f"{key}_ms_first"] = first["stages_ms"][key]
            context[f"{key}_ms_last"] = last["stages_ms"][key]
            context[f"{key}_ratio_last_over_first"] = (  # none when the first took no time (an answer folded away)
                round(last["stages_ms"][key] / first["stages_ms"][key], 3) if first["stages_ms"][key] else None)
    for key in ("answer_tokens", "prompt_pass_tokens", "llm_prefill_ms_per_token", "llm_answer_ms_per_token"):
        if first and last:
            context[f"{key}_first"], context[f"{key}_last"] = first[key], last[key]
    if first and last:
        context.update({"utterance_first": 1, "utterance_last": n, "latency_ms_first": first["latency_ms"],
                        "other_processes_cores_first": first["other_processes_cores"],
                        "other_processes_cores_last": last["other_processes_cores"],
                        "latency_ms_last": last["latency_ms"], "context_turns_first": first["context_turns"],
                        "context_turns_last": last["context_turns"], "prompt_tokens_first": first["prompt_tokens"],
                        "prompt_tokens_last": last["prompt_tokens"],
                        "same_transcript_first_and_last": first["text"] == last["text"]})
    head = [by_index[i] for i in head_idx if i in by_index]
    tail = [by_index[i] for i in tail_idx if i in by_index]
    if head and tail:
        mp_head, mp_tail = float(np.mean(stage("predict", head))), float(np.mean(stage("predict", tail)))
        enc_head, enc_tail = float(np.mean(stage("asr_encoder", head))), float(np.mean(stage("asr_encoder", tail)))
        context.update({"head": f"{head_idx[0]}-{head_idx[-1]}", "tail": f"{tail_idx[0]}-{tail_idx[-1]}",
                        "predict_ms_mean_head": round(mp_head, 1), "predict_ms_mean_tail": round(mp_tail, 1),
                        "predict_ratio_tail_over_head": round(mp_tail / mp_head, 3),
                        "asr_encoder_ratio_tail_over_head": round(enc_tail / enc_head, 3),
                        "llm_prefill_ms_per_token_head": _mean_or_none(col("llm_prefill_ms_per_token", head)),
                        "llm_prefill_ms_per_token_tail": _mean_or_none(col("llm_prefill_ms_per_token", tail)),
                        "llm_answer_ms_per_token_head": _mean_or_none(col("llm_answer_ms_per_token", head)),
                        "llm_answer_ms_per_token_tail": _mean_or_none(col("llm_answer_ms_per_token", tail)),
                        "latency_ms_mean_head": round(float(np.mean(col("latency_ms", head))), 1),
                        "latency_ms_mean_tail": round(float(np.mean(col("latency_ms", tail))), 1),
                        "other_processes_cores_head": _mean_or_none(col("other_processes_cores", head)),
                        "other_processes_cores_tail": _mean_or_none(col("other_processes_cores", tail))})
    full = [row for row in rows if row["context_turns"] >= model.cfg.prompt.max_context_turns]
    if len(full) >= 5:
        xs = np.array([row["index"] for row in full], float)
        pm = np.array([row["stages_ms"].get("predict", np.nan) for row in full], float)
        tok = np.array([row["prompt_tokens"] for row in full], float)
        slope = np.polyfit(xs, pm, 1)[0]

        def rel_slope(key: str) -> float | None:
            """Least-squares change per utterance, as a fraction of the mean (0.001 = +0.1 % per utterance)."""
            ok = [(row["index"], row.get(key, row["stages_ms"].get(key))) for row in full]
            ok = [(i, v) for i, v in ok if v is not None]
            if len(ok) < 5:
                return None
            a = np.array(ok, float)
            return round(float(np.polyfit(a[:, 0], a[:, 1], 1)[0] / a[:, 1].mean()), 5)

        context.update({"full_window_utterances": len(full),
                        "predict_ms_slope_per_utterance": round(float(slope), 2),
                        "llm_prefill_ms_per_token_relative_slope": rel_slope("llm_prefill_ms_per_token"),
                        "llm_answer_ms_per_token_relative_slope": rel_slope("llm_answer_ms_per_token"),
                        "asr_encoder_ms_relative_slope": rel_slope("asr_encoder"),
                        "prompt_tokens_full_window": latency_stats(tok, 0)})
    if last is not None:
        say(f"offline check: the model on utterance {n}'s inputs, empty vs its stream context ...")
        rec_last = recs.get((round(last["vad_start_s"], 6), round(last["vad_end_s"], 6)))
        if rec_last is not None and offline_reps > 0:
            context["offline"] = offline_context_check(inner, rec_last, last["text"], "Speaker", offline_reps)

    p95 = _pct(lat, 95)
    result = {
        "benchmark": "streaming pipeline: end of speech -> event latency, real-time factor, cost of context",
        "command": "python benchmarks/bench_streaming_latency.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), **machine_load},
        "versions": _versions(torch),
        "model_version": inner.version, "model_load_s": round(load_s, 1),
        "threads": {"torch": torch.get_num_threads(), "whisper_cpu_threads": inner.frontend.config.cpu_threads},
        "asr_window_s": inner.frontend.config.window_s,
        "speculative": speculative, "speculation": r["speculation"], "analyses": analysis_intervals(analyzer.intervals),
        "setup": {"utterances": n, "pool": [{"name": p.name, "source": p.source, "speech_s": round(p.speech_s, 2),
                                              "script": p.script} for p in pool],
                  "gap_s": gap_s, "block_ms": BLOCK * 1000 // SR, "paced": "real time",
                  "stream_s": round(r["stream_s"], 1), "wall_s": round(r["wall_s"], 1)},
        "counts": {"utterance_events": len(utts), "references": len(refs), "unmatched_references": unmatched_refs,
                   "extra_events": extra_events, "errors": errors},
        "lengths_s": {**latency_stats(durs, 2), "histogram_bins_s": list(LENGTH_BINS), "histogram": hist},
        "latency_ms": {**latency_stats(lat), "utterances_up_to_8s": len(within)},
        "event_latency_ms": latency_stats(col("event_latency_ms")),
        "speech_started_latency_ms": latency_stats(col("speech_started_latency_ms")),
        "rtf": {**latency_stats(col("rtf"), 3), "overall": round(overall_rtf, 3) if overall_rtf is not None else None,
                "whole_stream_incl_vad": round((analyze_total + r["segmenter_ms"]) / 1000.0 / r["stream_s"], 3)},
        "vad": {"segmenter_ms_total": round(r["segmenter_ms"], 1),
                "rtf": round(r["segmenter_ms"] / 1000.0 / r["stream_s"], 4),
                "ms_per_30ms_block": round(r["segmenter_ms"] / max(1, len(r["pushed"])), 3)},
        "stages_ms": stages, "stage_share_of_analysis": shares,
        "by_length": by_length,
        "context": context,
        "targets": {"p95_latency_ms": TARGET_P95_MS, "p95_latency_met": p95 is not None and p95 <= TARGET_P95_MS,
                    "rtf": TARGET_RTF, "rtf_met": overall_rtf is not None and overall_rtf <= TARGET_RTF},
        "utterances": rows,
    }
    return result


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a run, for a side-by-side comparison inside another run's report."""
    return {"label": res.get("label"), "speculative": res["speculative"], "latency_ms": res["latency_ms"],
            "rtf_overall": res["rtf"]["overall"], "analyze_ms": res["stages_ms"]["analyze"],
            "wait_before_analysis_ms": res["stages_ms"]["wait_before_analysis"],
            "machine": {k: res["machine"].get(k) for k in ("other_processes_cores", "shared", "load_average_before")},
            "counts": {k: v for k, v in res["counts"].items() if k != "errors"}, "speculation": res["speculation"],
            "analyses": res.get("analyses")}


def speculation_label(res: dict[str, Any]) -> str:
    return "on" if res["speculative"] else "off"


def side_by_side(runs: list[dict[str, Any]], label=speculation_label) -> dict[str, Any]:
    """Several runs of the same conversation pooled by `label` (default: speculation off vs on): every utterance (up to
    8 s) of a label's runs. Latency = wait + analysis: speculation shortens the wait; a checkpoint whose prompt pass
    is shorter shortens the analysis; the analysis time also moves with the machine. With two labels, `ratio` is the
    second seen over the first (on over off in the default order)."""
    labels = list(dict.fromkeys(label(r) for r in runs))
    out: dict[str, Any] = {"order": [label(r) for r in runs], "labels": labels, "runs": [compact(r) for r in runs]}
    for lab in labels:
        mine = [r for r in runs if label(r) == lab]
        rows = [row for r in mine for row in r["utterances"] if row["vad_speech_s"] <= MAX_UTTERANCE_S + 1e-6]
        out[lab] = {
            "latency_ms": latency_stats([row["latency_ms"] for row in rows]),
            "analyze_ms": latency_stats([row["analyze_ms"] for row in rows]),
            "wait_ms": latency_stats([row["latency_ms"] - row["analyze_ms"] for row in rows]),
            "asr_ms": latency_stats([row["stages_ms"]["asr_encoder"] + row["stages_ms"]["asr_decode"] for row in rows
                             if "asr_decode" in row["stages_ms"]]),
            "llm_prefill_ms": latency_stats([row["stages_ms"]["llm_prefill"] for row in rows if "llm_prefill" in row["stages_ms"]]),
            "prompt_pass_tokens": latency_stats([row["prompt_pass_tokens"] for row in rows
                                         if row.get("prompt_pass_tokens") is not None], 0),
            "llm_answer_ms": latency_stats([row["stages_ms"]["llm_answer"] for row in rows if "llm_answer" in row["stages_ms"]]),
            "answer_passes": sum(1 for row in rows if row.get("answer_tokens")),
            "rtf_overall": _mean_or_none([r["rtf"]["overall"] for r in mine])}
    if len(labels) == 2:
        a, b = out[labels[0]]["latency_ms"], out[labels[1]]["latency_ms"]
        if a.get("n") and b.get("n"):
            out["ratio"] = {"of": f"{labels[1]} / {labels[0]}", **{q: round(b[q] / a[q], 3) for q in ("p50", "p95")}}
    return out


def _versions(torch: Any) -> dict[str, str]:
    import importlib.metadata as md

    v = {"python": sys.version.split()[0], "torch": torch.__version__}
    for pkg in ("transformers", "peft", "faster-whisper", "ctranslate2", "webrtcvad-wheels"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


# ------------------------------------------------------------------------------------------------------ report


def _pct_str(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.2f} %"


def _speculation_lines(res: dict[str, Any], f) -> list[str]:
    sp = res.get("speculation") or {}
    lines = [f"Speculative end of utterance (analysis starts once the post-roll is in, during the VAD's hangover): "
             f"{'on' if res.get('speculative') else 'off'}"
             + (f"; {sp.get('started', 0)} started, {sp.get('used', 0)} used, {sp.get('discarded', 0)} discarded "
                f"(speech resumed)." if res.get("speculative") else ".")]
    an = res.get("analyses")
    if an:
        lines[0] += (f" Analyses run: {an['n']}, of which {an['cancelled']} cancelled part-way"
                     + (f" (median {an['cancelled_ms_p50']:.0f} ms spent)" if an["cancelled"] else "")
                     + f"; overlapping another analysis: {an['overlapping']}.")
    lines.append("")
    sbs = res.get("side_by_side")
    if sbs:
        by_speculation = set(sbs["labels"]) <= {"on", "off"}
        lines += [
            f"Side by side: the same conversation streamed {len(sbs['order'])} times, in the order "
            f"{' / '.join(sbs['order'])} (balanced against the machine's drift), every utterance of a "
            + (f"mode pooled, with the same loaded model. Latency = wait + analysis: speculation shortens the wait (the "
               f"analysis starts {_speculation_lead_ms():.0f} ms sooner); the analysis is the same work either way."
               if by_speculation else
               f"{'setting' if sbs['labels'][0].startswith(('folded', 'asr')) else 'checkpoint'} pooled (each "
               "checkpoint loaded once; speculation as in the first table). Latency = wait + analysis; the prompt pass encodes what the "
               "model's KV cache does not already hold, plus the answer trees it carries (`folded K`: the auxiliary "
               "head's K likeliest labels'); an answer pass runs when none of them held the answer; `asr threads N`: "
               "the recognizer on N CPU threads."),
            "",
            f"| {'speculation' if by_speculation else 'run'} | utterances | latency p50 | latency p95 | wait p50 | "
            "analysis p50 | analysis p95 | ASR p50 / p95 | LLM prompt pass p50 | prompt-pass tokens p50 | "
            "answer passes | LLM answer p50 | RTF overall (mean of runs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for lab in sbs["labels"]:
            m = sbs[lab]
            lines.append(f"| {lab} | {m['latency_ms'].get('n', 0)} | {f(m['latency_ms'].get('p50'))} | "
                         f"{f(m['latency_ms'].get('p95'))} | {f(m['wait_ms'].get('p50'))} | "
                         f"{f(m['analyze_ms'].get('p50'))} | {f(m['analyze_ms'].get('p95'))} | "
                         f"{f(m['asr_ms'].get('p50'))} / {f(m['asr_ms'].get('p95'))} | "
                         f"{f(m['llm_prefill_ms'].get('p50'))} | {f(m['prompt_pass_tokens'].get('p50'))} | "
                         f"{m['answer_passes']} of {m['latency_ms'].get('n', 0)} | {f(m['llm_answer_ms'].get('p50'))} | "
                         f"{f(m['rtf_overall'], 3)} |")
        if "ratio" in sbs:
            r = sbs["ratio"]
            lines += ["", f"Ratio {r['of']}: latency p50 x{r['p50']:.2f}, p95 x{r['p95']:.2f}. Per run (latency p50 / "
                      f"p95, analysis p50 / p95, other processes' cores, analyses overlapping another): "
                      + "; ".join(f"{c.get('label') or ('on' if c['speculative'] else 'off')} "
                                  f"{f(c['latency_ms'].get('p50'))} / "
                                  f"{f(c['latency_ms'].get('p95'))}, {f(c['analyze_ms'].get('p50'))} / "
                                  f"{f(c['analyze_ms'].get('p95'))}, {f(c['machine'].get('other_processes_cores'), 2)}, "
                                  f"{(c.get('analyses') or {}).get('overlapping', '-')}" for c in sbs["runs"]) + "."]
        lines.append("")
    return lines


def write_report(res: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jpath.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    m, lat, rtf, ctx, st = res["machine"], res["latency_ms"], res["rtf"], res["context"], res["stages_ms"]
    tg = res["targets"]
    yes = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    f = lambda v, nd=0: "-" if v is None else f"{v:.{nd}f}"  # noqa: E731
    other = m.get("other_processes_cores")
    shared = bool(m.get("shared"))
    lines = [
        "# Streaming latency: end of speech -> event, real-time factor, cost of context",
        "",
        f"{res['date']}; {m['cpu']}, {m['cores']} cores{' (shared: other processes were busy)' if shared else ''}; "
        f"load average {m['load_average_before'][0]:.2f} before, {m['load_average_after'][0]:.2f} after "
        f"(1 min); other processes used {f(other, 2)} cores on average during the run, this benchmark "
        f"{f(m.get('this_process_cores'), 2)}"
        + (f" (it first waited {m['wait_for_idle']['waited_s']:.0f} s for the machine to go idle: "
           f"{'reached' if m['wait_for_idle']['idle_reached'] else 'not reached'})" if m.get("wait_for_idle") else "")
        + f". Model `{res['model_version']}` on CPU (torch {res['versions']['torch']}, "
        f"{res['threads']['torch']} threads; faster-whisper tiny.en int8, {res['threads']['whisper_cpu_threads']} "
        f"threads, {res.get('asr_window_s', 30.0):g} s encoder window), the CLI's StreamAnalyzer and defaults.",
        "",
        f"Input: {res['setup']['utterances']} utterances in ONE conversation, real speech (RAVDESS clips and espeak-ng "
        f"sentences), {res['setup']['gap_s']:g} s pauses, {res['setup']['stream_s']} s pushed in "
        f"{res['setup']['block_ms']} ms blocks at real-time pace. Utterance lengths (VAD span): "
        f"{res['lengths_s'].get('min', 0):.2f}-{res['lengths_s'].get('max', 0):.2f} s, median "
        f"{res['lengths_s'].get('p50', 0):.2f} s; per 2 s bin "
        f"({', '.join(f'{a:g}-{b:g} s' for a, b in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]))}): "
        f"{res['lengths_s'].get('histogram')}. Events: {res['counts']['utterance_events']} for "
        f"{res['counts']['references']} utterances ({res['counts']['unmatched_references']} missed, "
        f"{res['counts']['extra_events']} extra, {len(res['counts']['errors'])} errors).",
        "",
        "| measure | p50 | p95 | max | target | |",
        "|---|---|---|---|---|---|",
        f"| end of speech -> event (ms, utterances <= 8 s) | {f(lat.get('p50'))} | {f(lat.get('p95'))} | "
        f"{f(lat.get('max'))} | p95 <= {TARGET_P95_MS:.0f} | {yes(tg['p95_latency_met'])} |",
        f"| events' own latency_ms (from the VAD's end) | {f(res['event_latency_ms'].get('p50'))} | "
        f"{f(res['event_latency_ms'].get('p95'))} | {f(res['event_latency_ms'].get('max'))} | | |",
        f"| real-time factor (analysis / speech duration) | {f(rtf.get('p50'), 3)} | {f(rtf.get('p95'), 3)} | "
        f"{f(rtf.get('max'), 3)} | overall <= {TARGET_RTF} | overall {f(rtf.get('overall'), 3)}: "
        f"{yes(tg['rtf_met'])} |",
        f"| start of speech -> speech_started event (ms) | {f(res['speech_started_latency_ms'].get('p50'))} | "
        f"{f(res['speech_started_latency_ms'].get('p95'))} | {f(res['speech_started_latency_ms'].get('max'))} | | |",
        "",
        *_speculation_lines(res, f),
        "Where the time goes, per utterance (ms; share = of the summed analysis time):",
        "",
        "| stage | p50 | p95 | mean | share |",
        "|---|---|---|---|---|",
    ]
    for s in ("asr_encoder", "asr_decode", "predict", "fusion", "llm_prefill", "llm_answer", "face", "analyze",
              "wait_before_analysis"):
        if s in st and st[s].get("n"):
            share = res["stage_share_of_analysis"].get(s)
            lines.append(f"| {s} | {f(st[s]['p50'])} | {f(st[s]['p95'])} | {f(st[s]['mean'])} | "
                         f"{'-' if share is None else f'{share:.0%}'} |")
    lines += [
        "",
        f"`predict` = the whole EGMF predictor call (`fusion` + `llm_prefill` + `llm_answer` + tokenizing the turn); "
        f"`analyze` = recognizer + predictor; `wait_before_analysis` = latency - analyze (the VAD's 300 ms "
        f"end-of-speech hangover, plus time spent behind the previous utterance when analysis is slower than the "
        f"pause). VAD (webrtcvad segmenter) over the whole stream: {res['vad']['segmenter_ms_total']:.0f} ms for "
        f"{res['setup']['stream_s']} s (real-time factor {res['vad']['rtf']:.4f}).",
        "",
        "By utterance length:",
        "",
        "| speech | n | latency p50 ms | analysis p50 ms | RTF p50 |",
        "|---|---|---|---|---|",
    ]
    for b in res["by_length"]:
        lines.append(f"| {b['speech_s']} s | {b['n']} | {f(b['latency_ms_p50'])} | {f(b['analyze_ms_p50'])} | "
                     f"{f(b['rtf_p50'], 3)} |")
    lines += ["", "Cost of context (one conversation; the first and last utterances are the same recording):", ""]
    if "predict_ms_first" in ctx:
        lines.append(
            f"- utterance 1 vs {ctx['utterance_last']} (same audio, same transcript: "
            f"{ctx.get('same_transcript_first_and_last')}; context {ctx['context_turns_first']} vs "
            f"{ctx['context_turns_last']} turns, prompt {ctx['prompt_tokens_first']} vs {ctx['prompt_tokens_last']} "
            f"tokens, of which the prompt pass encoded {ctx.get('prompt_pass_tokens_first')} vs "
            f"{ctx.get('prompt_pass_tokens_last')}, the rest coming from the model's KV cache): model (predict) {ctx['predict_ms_first']:.0f} vs {ctx['predict_ms_last']:.0f} ms "
            f"(x{ctx['predict_ratio_last_over_first']:.2f}); end-to-end latency {ctx['latency_ms_first']:.0f} vs "
            f"{ctx['latency_ms_last']:.0f} ms; other processes meanwhile {f(ctx['other_processes_cores_first'], 2)} vs "
            f"{f(ctx['other_processes_cores_last'], 2)} cores; control, the recognizer's encoder (independent of the "
            f"context): {ctx['asr_encoder_ms_first']:.0f} vs {ctx['asr_encoder_ms_last']:.0f} ms "
            f"(x{ctx['asr_encoder_ratio_last_over_first']:.2f}). Answers took {ctx.get('answer_tokens_first')} vs "
            f"{ctx.get('answer_tokens_last')} tokens in the answer pass; per unit of work: LLM prompt pass "
            f"{f(ctx.get('llm_prefill_ms_per_token_first'), 2)} vs {f(ctx.get('llm_prefill_ms_per_token_last'), 2)} "
            f"ms per encoded prompt token, answer pass {f(ctx.get('llm_answer_ms_per_token_first'))} vs "
            f"{f(ctx.get('llm_answer_ms_per_token_last'))} ms per answer-pass token.")
    if "predict_ms_mean_head" in ctx:
        lines.append(
            f"- mean of utterances {ctx['head']} vs {ctx['tail']} (same five recordings): model "
            f"{ctx['predict_ms_mean_head']:.0f} vs {ctx['predict_ms_mean_tail']:.0f} ms "
            f"(x{ctx['predict_ratio_tail_over_head']:.2f}); latency {ctx['latency_ms_mean_head']:.0f} vs "
            f"{ctx['latency_ms_mean_tail']:.0f} ms; other processes {f(ctx['other_processes_cores_head'], 2)} vs "
            f"{f(ctx['other_processes_cores_tail'], 2)} cores; control (recognizer's encoder) "
            f"x{ctx['asr_encoder_ratio_tail_over_head']:.2f}; LLM prompt pass "
            f"{f(ctx['llm_prefill_ms_per_token_head'], 2)} vs {f(ctx['llm_prefill_ms_per_token_tail'], 2)} ms per "
            f"token, answer pass {f(ctx['llm_answer_ms_per_token_head'])} vs "
            f"{f(ctx['llm_answer_ms_per_token_tail'])} ms per answer-pass token.")
    if "predict_ms_slope_per_utterance" in ctx:
        lines.append(
            f"- once the window is full ({ctx['max_context_turns']} turns; {ctx['full_window_utterances']} "
            f"utterances): model time changes by {ctx['predict_ms_slope_per_utterance']:+.1f} ms per utterance "
            f"(least-squares slope over the conversation), prompt {ctx['prompt_tokens_full_window'].get('min', 0):.0f}-"
            f"{ctx['prompt_tokens_full_window'].get('max', 0):.0f} tokens; relative change per utterance of the LLM "
            f"prompt pass per token {_pct_str(ctx.get('llm_prefill_ms_per_token_relative_slope'))}, of the answer "
            f"pass per token {_pct_str(ctx.get('llm_answer_ms_per_token_relative_slope'))} (control, the "
            f"recognizer's encoder: {_pct_str(ctx.get('asr_encoder_ms_relative_slope'))}).")
    off = ctx.get("offline")
    if off:
        lines.append(
            f"- offline, the model alone on utterance {ctx.get('utterance_last')}'s inputs, {off['reps']} interleaved "
            f"calls each: empty context ({off['empty']['prompt_tokens']} tokens, {off['empty'].get('prompt_pass_tokens')} "
            f"encoded) {off['empty']['score_ms']['p50']:.0f} ms vs its stream context ({off['context_turns_stream']} "
            f"turns, {off['stream']['prompt_tokens']} tokens, {off['stream'].get('prompt_pass_tokens')} encoded) "
            f"{off['stream']['score_ms']['p50']:.0f} ms median (x{off['ratio_stream_over_empty_p50']:.2f}); LLM "
            f"prompt pass {off['empty']['llm_prefill_ms_p50']:.0f} vs {off['stream']['llm_prefill_ms_p50']:.0f} ms, "
            f"answer pass {off['empty']['llm_answer_ms_p50']:.0f} vs {off['stream']['llm_answer_ms_p50']:.0f} ms "
            f"(answers \"{off['empty'].get('answer')}\" vs \"{off['stream'].get('answer')}\": "
            f"{off['empty'].get('answer_tokens')} vs {off['stream'].get('answer_tokens')} answer-pass tokens; "
            f"{f(off['empty'].get('llm_answer_ms_per_token'))} vs {f(off['stream'].get('llm_answer_ms_per_token'))} ms "
            f"per answer-pass token; prompt pass {f(off['empty'].get('llm_prefill_ms_per_token'), 2)} vs "
            f"{f(off['stream'].get('llm_prefill_ms_per_token'), 2)} ms per encoded token).")
    lines += ["", f"Command: `{res['command']}`; per-utterance rows in `{jpath.name}`.", ""]
    mpath.write_text("\n".join(lines))
    return jpath, mpath


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 utterances (smoke check, < 2 min); writes to a temporary "
                    "folder unless --out is given")
    ap.add_argument("--utterances", type=int, help="utterances in the conversation (default 50, --quick 5)")
    ap.add_argument("--offline-reps", type=int, help="interleaved calls per context in the offline check "
                    "(default 8, --quick 2)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="on a shared machine: wait up to this long for other processes to go idle (< 0.2 cores over "
                         "10 s) before streaming (default: start at once)")
    ap.add_argument("--speculation", choices=("both", "on", "off"), default="both",
                    help="the pipeline's speculative end of utterance: 'both' (default) streams the conversation "
                         "four times with the same loaded model, off / on / on / off (order-balanced against the "
                         "machine's drift), reports the first 'on' run in full and both modes pooled side by side")
    ap.add_argument("--checkpoint", nargs="+", metavar="CKPT",
                    help="checkpoint(s) to stream with (default: the shipped one); two or more are compared side by "
                         "side, streamed in the order A / B / B / A")
    ap.add_argument("--folded-answers", nargs="+", type=int, metavar="K",
                    help="answer trees the prompt pass carries (EGMFModel.folded_answers; default: the model's); two "
                         "or more values are compared side by side on one loaded model, A / B / B / A")
    ap.add_argument("--asr-threads", nargs="+", type=int, metavar="N",
                    help="recognizer CPU threads (EGMFAnalyzerConfig.cpu_threads; default: the CLI's); two or more "
                         "values are compared side by side, one recognizer loaded per value, A / B / B / A")
    ap.add_argument("--out", help="results folder (default benchmarks/results; --quick: a temporary folder)")
    a = ap.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    n = a.utterances or (5 if a.quick else 50)
    reps = a.offline_reps if a.offline_reps is not None else (2 if a.quick else 8)
    t0 = time.monotonic()
    names = a.checkpoint or ["default"]
    folds = a.folded_answers or [None]
    threads = a.asr_threads or [None]
    compared = sum(len(set(v)) > 1 for v in (names, folds, threads)) + (a.speculation == "both")
    if compared > 1:
        ap.error("compare one thing at a time: several --checkpoint, --folded-answers or --asr-threads, or "
                 "--speculation both")
    if any(t < 1 for t in threads if t is not None):
        ap.error(f"--asr-threads: expected thread counts >= 1, got {a.asr_threads}")
    loaded = {name: load_analyzer(checkpoint=name) for name in dict.fromkeys(names)}
    recognizers = {t: recognizer(loaded[names[0]][0], t) for t in dict.fromkeys(threads) if t is not None}
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[a.speculation]
    forward = [(name, m, k, t) for name in loaded for m in modes for k in dict.fromkeys(folds)
               for t in dict.fromkeys(threads)]
    schedule = forward + forward[::-1]  # e.g. off / on / on / off, or A / B / B / A: balanced against drift
    if len(schedule) == 2:  # one setting: a single run
        schedule = schedule[:1]
    # reported in full, with the offline check: the last setting's first run (speculation on, for "both")
    report = schedule.index(forward[-1])
    runs = []
    for i, (name, m, k, t) in enumerate(schedule):
        inner = loaded[name][0]
        model = inner.predictor.model
        if k is not None:
            model.folded_answers = k
        if t is not None:
            inner.frontend = recognizers[t]
        r = run_benchmark(n, offline_reps=reps if i == report else 0, wait_idle_s=a.wait_idle, speculative=m,
                          loaded=loaded[name])
        r["checkpoint"] = name
        r["folded_answers"] = model.folded_answers
        r["label"] = (Path(name).stem if len(loaded) > 1 else f"folded {k}" if len(set(folds)) > 1
                      else f"asr threads {t}" if len(set(threads)) > 1 else speculation_label(r))
        runs.append(r)
    res = runs[report]
    if len(runs) > 1:
        res["side_by_side"] = side_by_side(runs, label=lambda r: r["label"])
    res["command"] = " ".join(["python benchmarks/bench_streaming_latency.py", *(argv if argv is not None else
                                                                                  sys.argv[1:])])
    res["total_wall_s"] = round(time.monotonic() - t0, 1)
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="bench_streaming_")) if a.quick
                                     else ROOT / "benchmarks" / "results")
    jpath, mpath = write_report(res, out, "streaming_latency")
    print(mpath.read_text())
    print(f"wrote {jpath} and {mpath} ({res['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

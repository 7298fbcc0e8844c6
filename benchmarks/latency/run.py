"""One run: build the conversation, load (or reuse) the analyzer the CLI builds, warm it up, stream the conversation
at real-time pace while measuring the machine's load, and turn the events into the run's result (``measure``,
``context_cost``)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_support import MachineLoad, cpu_model, wait_for_idle

from .context_cost import cost_of_context, last_utterance_offline_check
from .inputs import GAP_S, SR, build_stream, conversation_order, make_pool
from .measure import analysis_intervals, summarize, utterance_rows
from .stream import BLOCK, RecordingAnalyzer, run_stream


def load_analyzer(say=print, checkpoint: str = "default", llm_precision: str | None = None) -> tuple[Any, float]:
    """The analyzer `python -m streaming` builds (CLI defaults; the shipped checkpoint and the configuration's LLM
    precision unless told) and its load time in seconds."""
    from streaming.analyzer import EGMFAnalyzerConfig, EGMFUtteranceAnalyzer

    t_load = time.monotonic()
    precision = {} if llm_precision is None else {"llm_precision": llm_precision}
    inner = EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(checkpoint=checkpoint, **precision))
    load_s = time.monotonic() - t_load
    say(f"model loaded in {load_s:.1f} s: {inner.version}")
    return inner, load_s


def library_versions(torch: Any) -> dict[str, str]:
    import importlib.metadata as md

    v = {"python": sys.version.split()[0], "torch": torch.__version__}
    for pkg in ("transformers", "peft", "faster-whisper", "ctranslate2", "webrtcvad-wheels"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


def run_benchmark(n_utterances: int = 50, *, n_ravdess: int = 12, n_espeak: int = 12, offline_reps: int = 8,
                  gap_s: float = GAP_S, wait_idle_s: float = 0.0, speculative: bool = True,
                  loaded: tuple[Any, float] | None = None, say=print) -> dict[str, Any]:
    """One paced run of the conversation; ``speculative``: the pipeline's speculative end of utterance (the CLI's
    live default). ``loaded``: an analyzer from :func:`load_analyzer` to reuse (side-by-side runs)."""
    import torch

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

    model = inner.predictor.model
    rows, counts = utterance_rows(r, refs, seq, analyzer.records, model)
    summary, targets = summarize(rows, r)
    context = cost_of_context(rows, seq, model)
    offline = last_utterance_offline_check(inner, rows, analyzer.records, len(seq), offline_reps, say)
    if offline is not None:
        context["offline"] = offline

    return {
        "benchmark": "streaming pipeline: end of speech -> event latency, real-time factor, cost of context",
        "command": "python benchmarks/bench_streaming_latency.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), **machine_load},
        "versions": library_versions(torch),
        "model_version": inner.version, "model_load_s": round(load_s, 1),
        "llm_precision": inner.predictor.llm_precision,  # what the LLM's projections ran in (auto: as the CPU allows)
        "llm_precision_requested": getattr(getattr(inner, "config", None), "llm_precision", None),
        "threads": {"torch": torch.get_num_threads(), "whisper_cpu_threads": inner.frontend.config.cpu_threads},
        "asr_window_s": inner.frontend.config.window_s,
        "speculative": speculative, "speculation": r["speculation"], "analyses": analysis_intervals(analyzer.intervals),
        "setup": {"utterances": len(seq),
                  "pool": [{"name": p.name, "source": p.source, "speech_s": round(p.speech_s, 2), "script": p.script}
                           for p in pool],
                  "gap_s": gap_s, "block_ms": BLOCK * 1000 // SR, "paced": "real time",
                  "stream_s": round(r["stream_s"], 1), "wall_s": round(r["wall_s"], 1)},
        "counts": counts,
        **summary,
        "context": context,
        "targets": targets,
        "utterances": rows,
    }

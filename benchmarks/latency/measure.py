"""From one stream's events and analysis records to the numbers: one row per reference utterance (end of speech ->
event latency, real-time factor, stage timings, prompt tokens), then the run's latency / RTF / stage / length-bin
statistics and whether the targets are met. The cost of context has its own module (``context_cost``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench_support import latency_stats, other_cores, percentile

from .inputs import MAX_UTTERANCE_S, Piece
from .stream import block_wall

TARGET_P95_MS = 1000.0
TARGET_RTF = 0.25
LENGTH_BINS = (0.0, 2.0, 4.0, 6.0, 8.0)
STAGE_NAMES = ("asr_encoder", "asr_decode", "predict", "fusion", "llm_prefill", "llm_answer", "face")


def mean_or_none(a: list[float]) -> float | None:
    return round(float(np.mean(a)), 2) if a else None


def per_unit(num: float | None, den: float | None, nd: int = 2) -> float | None:
    """``num / den`` rounded, or None when either is missing (or ``den`` is 0)."""
    return round(num / den, nd) if num is not None and den else None


def column(rows: list[dict], key: str) -> list[float]:
    """``key`` of every row that has it."""
    return [row[key] for row in rows if row.get(key) is not None]


def stage_column(rows: list[dict], name: str) -> list[float]:
    """Stage ``name``'s time (ms) of every row that ran it."""
    return [row["stages_ms"][name] for row in rows if name in row["stages_ms"]]


def within_target_length(rows: list[dict]) -> list[dict]:
    """The rows of utterances up to ``MAX_UTTERANCE_S`` (the ones the latency target is for)."""
    return [row for row in rows if row["vad_speech_s"] <= MAX_UTTERANCE_S + 1e-6]


def prompt_tokens(model: Any, context: tuple, speaker: str, text: str) -> tuple[int, Any]:
    """The prompt's length in tokens for this turn after ``context`` (pseudo tokens included), and the turn."""
    turn = model.prompts.make_turn(speaker, text)
    p = model.prompts.build(context, turn)
    return len(p.before) + model.cfg.fusion.pseudo_tokens + len(p.after), turn


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


def utterance_rows(r: dict[str, Any], refs: list[tuple[float, float]], seq: list[Piece],
                   records: list[dict[str, Any]], model: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per reference utterance of the stream ``r`` (:func:`~latency.stream.run_stream`), matched to the last
    utterance event overlapping it and to its analysis record; and the counts (events, references, missed, extra,
    errors)."""
    from streaming.events import SpeechStartedEvent, UtteranceEvent

    utts = [(t, e) for t, e in r["events"] if isinstance(e, UtteranceEvent)]
    # other processes' CPU use between consecutive utterance events (the first: since the stream started)
    ev_cpu = [c for (_, e), c in zip(r["events"], r["cpu"][1:]) if isinstance(e, UtteranceEvent)]
    other_by_event = [other_cores(a, b) for a, b in zip([r["cpu"][0]] + ev_cpu[:-1], ev_cpu)]
    starts = [(t, e) for t, e in r["events"] if isinstance(e, SpeechStartedEvent)]
    errors = [e.to_dict() for _, e in r["events"] if e.type == "error"]
    recs = {(rec["start"], rec["end"]): rec for rec in records}

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
            "llm_prefill_ms_per_token": per_unit(tm.get("llm_prefill"), n_pass, 3),
            "llm_answer_ms_per_token": per_unit(tm.get("llm_answer"), n_answer, 1),
            "other_processes_cores": other_by_event[j],
            "events_for_this_utterance": len(match),
        })
    counts = {"utterance_events": len(utts), "references": len(refs), "unmatched_references": unmatched_refs,
              "extra_events": len(utts) - len(used), "errors": errors}
    return rows, counts


def summarize(rows: list[dict[str, Any]], r: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's statistics over its rows (lengths, latency, event latency, RTF, the VAD's cost over the whole stream
    ``r``, stages and their share of the analysis, by length bin), and the targets met or not."""
    durs = column(rows, "vad_speech_s")
    within = within_target_length(rows)
    lat = column(within, "latency_ms")
    analyze_total = sum(column(rows, "analyze_ms"))
    overall_rtf = analyze_total / 1000.0 / sum(durs) if durs else None
    hist = np.histogram(durs, bins=LENGTH_BINS)[0].tolist() if durs else []
    by_length = []
    for lo_b, hi_b in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
        sub = [row for row in rows if lo_b <= row["vad_speech_s"] < hi_b or (hi_b == LENGTH_BINS[-1] and
                                                                             row["vad_speech_s"] == hi_b)]
        rtf_sub = column(sub, "rtf")
        by_length.append({"speech_s": f"{lo_b:g}-{hi_b:g}", "n": len(sub),
                          "latency_ms_p50": percentile(column(sub, "latency_ms"), 50),
                          "analyze_ms_p50": percentile(column(sub, "analyze_ms"), 50),
                          "rtf_p50": round(float(np.median(rtf_sub)), 3) if rtf_sub else None})

    stages = {s: latency_stats(stage_column(rows, s)) for s in STAGE_NAMES if stage_column(rows, s)}
    stages["analyze"] = latency_stats(column(rows, "analyze_ms"))
    stages["wait_before_analysis"] = latency_stats([row["latency_ms"] - row["analyze_ms"] for row in rows])
    shares = {s: round(sum(stage_column(rows, s)) / analyze_total, 3)
              for s in ("asr_encoder", "asr_decode", "fusion", "llm_prefill", "llm_answer") if stage_column(rows, s)}
    summary = {
        "lengths_s": {**latency_stats(durs, 2), "histogram_bins_s": list(LENGTH_BINS), "histogram": hist},
        "latency_ms": {**latency_stats(lat), "utterances_up_to_8s": len(within)},
        "event_latency_ms": latency_stats(column(rows, "event_latency_ms")),
        "speech_started_latency_ms": latency_stats(column(rows, "speech_started_latency_ms")),
        "rtf": {**latency_stats(column(rows, "rtf"), 3),
                "overall": round(overall_rtf, 3) if overall_rtf is not None else None,
                "whole_stream_incl_vad": round((analyze_total + r["segmenter_ms"]) / 1000.0 / r["stream_s"], 3)},
        "vad": {"segmenter_ms_total": round(r["segmenter_ms"], 1),
                "rtf": round(r["segmenter_ms"] / 1000.0 / r["stream_s"], 4),
                "ms_per_30ms_block": round(r["segmenter_ms"] / max(1, len(r["pushed"])), 3)},
        "stages_ms": stages, "stage_share_of_analysis": shares,
        "by_length": by_length,
    }
    p95 = percentile(lat, 95)
    targets = {"p95_latency_ms": TARGET_P95_MS, "p95_latency_met": p95 is not None and p95 <= TARGET_P95_MS,
               "rtf": TARGET_RTF, "rtf_met": overall_rtf is not None and overall_rtf <= TARGET_RTF}
    return summary, targets

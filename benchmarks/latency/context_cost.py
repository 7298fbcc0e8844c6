"""The cost of context. The conversation's first and last utterances (and, from 10 utterances on, the first and last
five) are the same recordings, heard with an empty and with a full context window: model time should stay flat. The
recognizer's encoder, which does not depend on the context, is the control for the machine's drift. An offline check
then scores the last utterance's inputs with an empty and with its stream context, interleaved, to isolate the
model's cost of the context from the noise of the live run."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench_support import latency_stats

from .inputs import Piece
from .measure import column, mean_or_none, per_unit, prompt_tokens, stage_column


def cost_of_context(rows: list[dict[str, Any]], seq: list[Piece], model: Any) -> dict[str, Any]:
    """Same audio at the start and the end of the conversation: first vs last, head vs tail, the slope once the
    window is full."""
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
        mp_head, mp_tail = float(np.mean(stage_column(head, "predict"))), float(np.mean(stage_column(tail, "predict")))
        enc_head = float(np.mean(stage_column(head, "asr_encoder")))
        enc_tail = float(np.mean(stage_column(tail, "asr_encoder")))
        context.update({"head": f"{head_idx[0]}-{head_idx[-1]}", "tail": f"{tail_idx[0]}-{tail_idx[-1]}",
                        "predict_ms_mean_head": round(mp_head, 1), "predict_ms_mean_tail": round(mp_tail, 1),
                        "predict_ratio_tail_over_head": round(mp_tail / mp_head, 3),
                        "asr_encoder_ratio_tail_over_head": round(enc_tail / enc_head, 3),
                        "llm_prefill_ms_per_token_head": mean_or_none(column(head, "llm_prefill_ms_per_token")),
                        "llm_prefill_ms_per_token_tail": mean_or_none(column(tail, "llm_prefill_ms_per_token")),
                        "llm_answer_ms_per_token_head": mean_or_none(column(head, "llm_answer_ms_per_token")),
                        "llm_answer_ms_per_token_tail": mean_or_none(column(tail, "llm_answer_ms_per_token")),
                        "latency_ms_mean_head": round(float(np.mean(column(head, "latency_ms"))), 1),
                        "latency_ms_mean_tail": round(float(np.mean(column(tail, "latency_ms"))), 1),
                        "other_processes_cores_head": mean_or_none(column(head, "other_processes_cores")),
                        "other_processes_cores_tail": mean_or_none(column(tail, "other_processes_cores"))})
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
    return context


def last_utterance_offline_check(analyzer: Any, rows: list[dict[str, Any]], records: list[dict[str, Any]], n: int,
                                 reps: int, say=print) -> dict[str, Any] | None:
    """:func:`offline_context_check` on utterance ``n`` (the last) when it was matched and ``reps`` > 0."""
    last = next((row for row in rows if row["index"] == n), None)
    if last is None:
        return None
    say(f"offline check: the model on utterance {n}'s inputs, empty vs its stream context ...")
    recs = {(rec["start"], rec["end"]): rec for rec in records}
    rec_last = recs.get((round(last["vad_start_s"], 6), round(last["vad_end_s"], 6)))
    if rec_last is None or reps <= 0:
        return None
    return offline_context_check(analyzer, rec_last, last["text"], "Speaker", reps)


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
        out[name]["llm_prefill_ms_per_token"] = per_unit(out[name]["llm_prefill_ms_p50"], n_pass)
        out[name]["llm_answer_ms_per_token"] = per_unit(out[name]["llm_answer_ms_p50"], out[name]["answer_tokens"], 1)
    out["ratio_stream_over_empty_p50"] = round(out["stream"]["score_ms"]["p50"] / out["empty"]["score_ms"]["p50"], 3)
    return out

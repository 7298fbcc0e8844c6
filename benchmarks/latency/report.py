"""The report: the run's result as JSON (every utterance's row) and its Markdown summary (the targets, where the
time goes, by utterance length, the cost of context, and the side-by-side table when runs were compared)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .measure import LENGTH_BINS, TARGET_P95_MS, TARGET_RTF


def _speculation_lead_ms() -> float:
    """How much sooner a speculative analysis starts: the VAD's hangover less the post-roll (live defaults)."""
    from egmf_core.features.segmenter import SegmenterConfig

    c = SegmenterConfig()
    return float(c.hangover_ms - c.post_roll_ms)


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
            + (f"mode pooled, with the same loaded model. Latency = wait + analysis: speculation shortens the wait "
               f"(the analysis starts {_speculation_lead_ms():.0f} ms sooner); the analysis is the same work either "
               "way."
               if by_speculation else
               f"{'setting' if sbs['labels'][0].startswith(('folded', 'asr', 'llm')) else 'checkpoint'} pooled "
               "(each checkpoint loaded once; speculation as in the first table). Latency = wait + analysis; the "
               "prompt pass encodes what the model's KV cache does not already hold, plus the answer trees it "
               "carries (`folded K`: the K likeliest labels' by the auxiliary head and the prior); an answer pass "
               "runs when none of them held the answer; `asr threads N`: the recognizer on N CPU threads"
               + ("; `llm P`: the LLM's projections in number format P (`auto`: bf16 where the CPU has native "
                  "bfloat16 and a start-up probe finds it faster, else fp32; what it resolved to in brackets), one "
                  "model loaded per format."
                  if sbs["labels"][0].startswith("llm") else ".")),
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
                         f"{m['answer_passes']} of {m['latency_ms'].get('n', 0)} | "
                         f"{f(m['llm_answer_ms'].get('p50'))} | "
                         f"{f(m['rtf_overall'], 3)} |")
        if "ratio" in sbs:
            r = sbs["ratio"]
            lines += ["", f"Ratio {r['of']}: latency p50 x{r['p50']:.2f}, p95 x{r['p95']:.2f}. Per run (latency p50 / "
                      f"p95, analysis p50 / p95, other processes' cores, analyses overlapping another): "
                      + "; ".join(f"{c.get('label') or ('on' if c['speculative'] else 'off')} "
                                  f"{f(c['latency_ms'].get('p50'))} / "
                                  f"{f(c['latency_ms'].get('p95'))}, {f(c['analyze_ms'].get('p50'))} / "
                                  f"{f(c['analyze_ms'].get('p95'))}, "
                                  f"{f(c['machine'].get('other_processes_cores'), 2)}, "
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
        f"{res['threads']['torch']} threads, LLM projections in {res.get('llm_precision') or '-'}; faster-whisper "
        f"tiny.en int8, {res['threads']['whisper_cpu_threads']} "
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
            f"{ctx.get('prompt_pass_tokens_last')}, the rest coming from the model's KV cache): model (predict) "
            f"{ctx['predict_ms_first']:.0f} vs {ctx['predict_ms_last']:.0f} ms "
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
            f"calls each: empty context ({off['empty']['prompt_tokens']} tokens, "
            f"{off['empty'].get('prompt_pass_tokens')} "
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

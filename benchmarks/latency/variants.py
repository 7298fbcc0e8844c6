"""Side-by-side variants: the same conversation streamed several times with the same loaded model(s), one setting
changed (speculative end of utterance off / on, checkpoints, folded answer trees, recognizer threads, the LLM's
number format or its passes' threads), in the order A / B / B / A to balance the machine's drift, and the runs pooled by setting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_support import latency_stats

from .measure import mean_or_none, within_target_length
from .run import load_analyzer, run_benchmark


@dataclass
class Variants:
    """The settings to stream with; a list with two or more distinct values (or ``speculation="both"``) is compared.
    ``None`` in a list: the default (the model's folded answers, the CLI's recognizer threads, the configuration's
    LLM precision, the predictor's threads for its precision)."""

    checkpoints: list[str] = dataclasses.field(default_factory=lambda: ["default"])
    speculation: str = "both"  # "both", "on" or "off"
    folded_answers: list[int | None] = dataclasses.field(default_factory=lambda: [None])
    asr_threads: list[int | None] = dataclasses.field(default_factory=lambda: [None])
    llm_precisions: list[str | None] = dataclasses.field(default_factory=lambda: [None])
    llm_threads: list[int | None] = dataclasses.field(default_factory=lambda: [None])

    def compared(self) -> int:
        """How many settings vary (at most one may)."""
        lists = (self.checkpoints, self.folded_answers, self.asr_threads, self.llm_precisions, self.llm_threads)
        return sum(len(set(v)) > 1 for v in lists) + (self.speculation == "both")


def recognizer(inner: Any, cpu_threads: int) -> Any:
    """`inner`'s recognizer on `cpu_threads` threads: the same one when it already runs so, else a second instance of
    the same model and settings (warmed up)."""
    from egmf_core.features.audio import WhisperFrontend

    if inner.frontend.config.cpu_threads == cpu_threads:
        return inner.frontend
    frontend = WhisperFrontend(dataclasses.replace(inner.frontend.config, cpu_threads=cpu_threads))
    frontend.warm_up()
    return frontend


def precision_label(requested: str | None, used: str) -> str:
    """``llm fp32``, or ``llm auto (bf16)`` when the request was resolved to another format."""
    return f"llm {requested or used}" + (f" ({used})" if requested not in (None, used) else "")


def run_variants(v: Variants, n: int, offline_reps: int, wait_idle_s: float) -> tuple[list[dict[str, Any]], int]:
    """Every run of the schedule, labelled, and the index of the one reported in full (with the offline check): the
    last setting's first run (speculation on, for "both")."""
    loaded = {(name, p): load_analyzer(checkpoint=name, llm_precision=p)
              for name in dict.fromkeys(v.checkpoints) for p in dict.fromkeys(v.llm_precisions)}
    first = loaded[next(iter(loaded))][0]
    recognizers = {t: recognizer(first, t) for t in dict.fromkeys(v.asr_threads) if t is not None}
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[v.speculation]
    forward = [(key, m, k, t, lt) for key in loaded for m in modes for k in dict.fromkeys(v.folded_answers)
               for t in dict.fromkeys(v.asr_threads) for lt in dict.fromkeys(v.llm_threads)]
    schedule = forward + forward[::-1]  # e.g. off / on / on / off, or A / B / B / A: balanced against drift
    if len(schedule) == 2:  # one setting: a single run
        schedule = schedule[:1]
    report = schedule.index(forward[-1])
    runs = []
    defaults = {key: loaded[key][0].predictor.torch_threads for key in loaded}
    for i, ((name, p), m, k, t, lt) in enumerate(schedule):
        inner = loaded[(name, p)][0]
        model = inner.predictor.model
        if k is not None:
            model.folded_answers = k
        if t is not None:
            inner.frontend = recognizers[t]
        inner.predictor.torch_threads = lt if lt is not None else defaults[(name, p)]
        r = run_benchmark(n, offline_reps=offline_reps if i == report else 0, wait_idle_s=wait_idle_s,
                          speculative=m, loaded=loaded[(name, p)])
        r["checkpoint"] = name
        r["folded_answers"] = model.folded_answers
        r["label"] = (Path(name).stem if len(set(v.checkpoints)) > 1
                      else precision_label(p, r["llm_precision"]) if len(set(v.llm_precisions)) > 1
                      else f"folded {k}" if len(set(v.folded_answers)) > 1
                      else f"asr threads {t}" if len(set(v.asr_threads)) > 1
                      else f"llm threads {lt}" if len(set(v.llm_threads)) > 1 else speculation_label(r))
        runs.append(r)
    return runs, report


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a run, for a side-by-side comparison inside another run's report."""
    return {"label": res.get("label"), "speculative": res["speculative"], "llm_precision": res.get("llm_precision"),
            "latency_ms": res["latency_ms"], "rtf_overall": res["rtf"]["overall"],
            "analyze_ms": res["stages_ms"]["analyze"],
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
        rows = [row for r in mine for row in within_target_length(r["utterances"])]
        stages = [row["stages_ms"] for row in rows]
        out[lab] = {
            "latency_ms": latency_stats([row["latency_ms"] for row in rows]),
            "analyze_ms": latency_stats([row["analyze_ms"] for row in rows]),
            "wait_ms": latency_stats([row["latency_ms"] - row["analyze_ms"] for row in rows]),
            "asr_ms": latency_stats([s["asr_encoder"] + s["asr_decode"] for s in stages if "asr_decode" in s]),
            "llm_prefill_ms": latency_stats([s["llm_prefill"] for s in stages if "llm_prefill" in s]),
            "prompt_pass_tokens": latency_stats([row["prompt_pass_tokens"] for row in rows
                                                 if row.get("prompt_pass_tokens") is not None], 0),
            "llm_answer_ms": latency_stats([s["llm_answer"] for s in stages if "llm_answer" in s]),
            "answer_passes": sum(1 for row in rows if row.get("answer_tokens")),
            "rtf_overall": mean_or_none([r["rtf"]["overall"] for r in mine]),
            "llm_precision": sorted({str(r.get("llm_precision")) for r in mine})}
    if len(labels) == 2:
        a, b = out[labels[0]]["latency_ms"], out[labels[1]]["latency_ms"]
        if a.get("n") and b.get("n"):
            out["ratio"] = {"of": f"{labels[1]} / {labels[0]}", **{q: round(b[q] / a[q], 3) for q in ("p50", "p95")}}
    return out

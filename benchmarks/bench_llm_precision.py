"""bfloat16 and int8 vs fp32 LLM projections on CPU: `python benchmarks/bench_llm_precision.py`.

Issue 27 (2): a faster LLM pass chosen by what the CPU has (`egmf_core.precision`), with the fp32 answers kept.
Every precision of ``--precisions`` is loaded in one process, as `EGMFPredictor.load` serves it (LoRA merged,
projections transposed; int8 smoothed on its calibration call and checked: near-tie answers re-scored in fp32;
``int8-unchecked`` is int8 without the check), and compared with fp32 on:

- agreement: MELD test (the first ``--meld`` utterances, words and context) and RAVDESS test actors 13-16 as the live
  pipeline cuts them (voice): emotion and sentiment label agreement with fp32, the largest and mean absolute
  difference of the emotion probabilities and of the sentiment score, and each precision's accuracy;
- timing: one utterance at a time (the live path's batch), the precisions interleaved on the same utterances so
  that machine noise falls on all: median and p95 of the scoring pass (fusion + the LLM's prompt and answer passes),
  and the ratios to fp32;
- the floor: each precision's plain-matmul throughput on these cores at the prompt pass's shapes (GFLOP/s), and the
  prompt pass's FLOPs at that rate, so the headroom left is visible.

Results go to ``--out`` (.json + .md) with the CPU model and its bf16- and int8-related flags.

``--matmul-only`` measures the floor's matmul rates alone (fp32, bf16 and int8), loading only fp32: the evidence on
a CPU where `egmf_core.precision` refuses bf16 or int8 (no native instructions).

``--fit-check`` instead chooses int8's check margin (`egmf_core.precision.INT8_CHECK_MARGIN`) on dev data (MELD dev,
RAVDESS dev actors 11-12 as live cuts), never test: per candidate margin, the share of answers int8 alone gives
with a closest decision under it (those the check re-scores in fp32) and the agreement with fp32 once they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_matmul_backends import int8_product  # noqa: E402  (benchmarks/ is on the path above)
from bench_support import CPU_FLAGS, cpu_flag_table, cpu_model  # noqa: E402

from egmf_core.precision import int8_kernel  # noqa: E402
from egmf_core.predictor import EGMFPredictor  # noqa: E402
from egmf_core.research.eval_examples import dataset_examples  # noqa: E402
from egmf_core.research.evaluate import predict_examples  # noqa: E402

PRECISIONS = ("fp32", "bf16", "int8", "int8-unchecked")
#: Check margins `--fit-check` tabulates (logit gaps).
CHECK_MARGINS = (0.25, 0.5, 0.75, 1.0, 1.5)


def load(checkpoint: str, precision: str) -> EGMFPredictor:
    """A predictor as the CLI and the service load it; ``int8-unchecked``: int8 without its fp32 check."""
    if precision == "int8-unchecked":
        return EGMFPredictor.load(checkpoint, device="cpu", llm_precision="int8", int8_check_margin=0.0)
    return EGMFPredictor.load(checkpoint, device="cpu", llm_precision=precision)


def agreement(predictors: dict, examples: list, batch_size: int) -> dict:
    """Per precision other than fp32: its labels and probabilities on `examples` against fp32's, and the share of
    answers int8's check re-scored in fp32; and every precision's accuracy against the gold labels."""
    preds, rescored = {}, {}
    for name, pr in predictors.items():
        before = pr.check_counts["rescored"]
        preds[name] = predict_examples(pr, examples, batch_size, progress=True)  # pr.score: the check included
        rescored[name] = (pr.check_counts["rescored"] - before) / len(examples)
    gold = [e.input.emotion for e in examples]
    accuracy = {name: float(np.mean([p.emotion == g for p, g in zip(ps, gold)])) for name, ps in preds.items()}
    return {name: {**compare(preds["fp32"], ps), "rescored_fp32": rescored[name], "accuracy": accuracy}
            for name, ps in preds.items() if name != "fp32"}


def fit_check(predictors: dict, sets: dict, batch_size: int) -> dict:
    """Per dev set and candidate margin: the share of int8-unchecked answers whose closest decision is under it and
    the emotion / sentiment agreement with fp32 when those take fp32's answer (the check's re-score is the fp32
    pass itself: `tests/test_llm_precision.py`)."""
    out = {}
    for name, examples in sets.items():
        ref = predict_examples(predictors["fp32"], examples, batch_size, progress=True)
        low = predict_examples(predictors["int8-unchecked"], examples, batch_size, progress=True)
        margin = np.array([p.decision_margin for p in low])
        emo = np.array([a.emotion == b.emotion for a, b in zip(ref, low)])
        sen = np.array([a.sentiment_label == b.sentiment_label for a, b in zip(ref, low)])
        out[name] = {"n": len(examples), "unchecked": {"emotion": float(emo.mean()), "sentiment": float(sen.mean())},
                     "margins_of_changed_labels": sorted(float(m) for m in margin[~(emo & sen)]),
                     "by_margin": {str(t): {"rescored": float((margin < t).mean()),
                                            "emotion": float(np.where(margin < t, True, emo).mean()),
                                            "sentiment": float(np.where(margin < t, True, sen).mean())}
                                   for t in CHECK_MARGINS}}
    return out


def compare(ref: list, low: list) -> dict:
    """Label agreement and probability differences of `low`'s predictions against `ref`'s."""
    labels = sorted(ref[0].emotion_probs)
    p_ref = np.array([[p.emotion_probs[k] for k in labels] for p in ref])
    p_low = np.array([[p.emotion_probs[k] for k in labels] for p in low])
    s_ref = np.array([p.sentiment_score for p in ref], float)
    s_low = np.array([p.sentiment_score for p in low], float)
    same_emotion = sum(a.emotion == b.emotion for a, b in zip(ref, low))
    same_sentiment = sum(a.sentiment_label == b.sentiment_label for a, b in zip(ref, low))
    return {
        "n": len(ref),
        "emotion_agree": same_emotion, "emotion_agreement": same_emotion / len(ref),
        "sentiment_agree": same_sentiment, "sentiment_agreement": same_sentiment / len(ref),
        "prob_abs_diff_max": float(np.abs(p_ref - p_low).max()),
        "prob_abs_diff_mean": float(np.abs(p_ref - p_low).mean()),
        "sentiment_score_abs_diff_max": float(np.abs(s_ref - s_low).max()),
    }


def timing(predictors: dict, examples: list, repeats: int) -> dict:
    """Scoring pass per utterance (batch 1), precisions interleaved per utterance."""
    times: dict[str, list[float]] = {name: [] for name in predictors}
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in predictors}
    encoded: list[int] = []
    for name, pr in predictors.items():  # first passes pay for lazy initialisation
        pr.score([examples[0].input])
    for _ in range(repeats):
        for e in examples:
            for name, pr in predictors.items():
                t0 = time.perf_counter()
                pred = pr.score([e.input])[0]
                times[name].append((time.perf_counter() - t0) * 1000)
                for stage, ms in (pred.timings_ms or {}).items():
                    stages[name].setdefault(stage, []).append(ms)
                if name == "fp32" and pred.prompt_tokens:
                    encoded.append(pred.prompt_tokens.get("encoded", 0))
    out: dict = {name: {"p50_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
                        "mean_ms": float(np.mean(t)), "n": len(t),
                        "stage_p50_ms": {k: float(np.median(v)) for k, v in stages[name].items()}}
                 for name, t in times.items()}
    out["encoded_tokens_p50"] = int(np.median(encoded)) if encoded else None
    out["speedup"] = {name: {"p50": out["fp32"]["p50_ms"] / out[name]["p50_ms"],
                             "p95": out["fp32"]["p95_ms"] / out[name]["p95_ms"],
                             "mean": out["fp32"]["mean_ms"] / out[name]["mean_ms"]}
                      for name in predictors if name != "fp32"}
    return out


def matmul_floor(model, tokens: int, precisions: tuple[str, ...], repeats: int = 20) -> dict:
    """Plain-matmul GFLOP/s (int8: GOP/s of the int8 kernel this CPU runs, `egmf_core.precision.int8_kernel`) per
    precision at the decoder's projection shapes for a `tokens`-row prompt, and the projections' time at that rate:
    the floor of a prompt pass of that length."""
    cfg = model.llm.config
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]  # q k v o gate up down
    flops = 2 * tokens * sum(i * o for i, o in shapes) * layers
    out = {"tokens": tokens, "projection_gflop": flops / 1e9}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
    for name in precisions:
        dtype = dtypes[name]
        mats = [(torch.randn(tokens, i).mul(20).to(dtype), torch.randn(i, o).mul(20).to(dtype)) for i, o in shapes]
        if dtype == torch.int8 and int8_kernel() == "onnxruntime":
            calls = [partial(int8_product(w.numpy()), x.numpy()) for x, w in mats]
        else:
            calls = [partial(torch._int_mm if dtype == torch.int8 else torch.matmul, x, w) for x, w in mats]
        for call in calls:
            call()
        t0 = time.perf_counter()
        for _ in range(repeats):
            for call in calls:
                call()
        seconds = (time.perf_counter() - t0) / repeats
        gflops = 2 * tokens * sum(i * o for i, o in shapes) / seconds / 1e9
        out[name] = {"gflops": gflops, "projections_floor_ms": flops / (gflops * 1e9) * 1000}
    return out


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    precisions = result["precisions"]
    title = ("int8's check margin, chosen on dev data" if result.get("fit_check")
             else "LLM projections: bfloat16 and int8 vs fp32 (CPU)")
    lines = [f"# {title}", "",
             f"`{result['command']}` on {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; "
             f"flags: {', '.join(m['flags']) or 'none of ' + ', '.join(CPU_FLAGS)}; {result['date']}; "
             f"model {result['model']}. Every precision loaded once, in one process.", ""]
    if result.get("agreement"):
        lines += ["## Agreement with fp32", "",
                  "| set | precision | n | emotion labels equal | sentiment labels equal | max abs prob diff "
                  "| mean abs prob diff | max abs sentiment score diff | accuracy fp32 / this | re-scored in fp32 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, per_precision in result["agreement"].items():
            for precision, a in per_precision.items():
                acc = a["accuracy"]
                lines.append(f"| {name} | {precision} | {a['n']} | {a['emotion_agree']} "
                             f"({100 * a['emotion_agreement']:.1f} %) | "
                             f"{a['sentiment_agree']} ({100 * a['sentiment_agreement']:.1f} %) | "
                             f"{a['prob_abs_diff_max']:.4f} | {a['prob_abs_diff_mean']:.5f} | "
                             f"{a['sentiment_score_abs_diff_max']:.4f} | "
                             f"{100 * acc['fp32']:.2f} / {100 * acc[precision]:.2f} | "
                             f"{100 * a.get('rescored_fp32', 0.0):.1f} % |")
        lines.append("")
    if result.get("fit_check"):
        lines += ["## Agreement with fp32 by check margin", "",
                  "Answers of int8 alone whose closest decision (logit gap to the runner-up) is under the margin are "
                  "re-scored in fp32; agreement with fp32 once they are:", "",
                  "| dev set | n | margin | re-scored | emotion labels equal | sentiment labels equal |",
                  "|---|---|---|---|---|---|"]
        for name, f in result["fit_check"].items():
            u = f["unchecked"]
            lines.append(f"| {name} | {f['n']} | none (int8 alone) | 0 % | {100 * u['emotion']:.1f} % | "
                         f"{100 * u['sentiment']:.1f} % |")
            for t, r in f["by_margin"].items():
                lines.append(f"| {name} | {f['n']} | {t} | {100 * r['rescored']:.1f} % | {100 * r['emotion']:.1f} % "
                             f"| {100 * r['sentiment']:.1f} % |")
        lines.append("")
        for name, f in result["fit_check"].items():
            lines.append(f"{name}: int8-alone margins of the answers whose labels differ from fp32's: "
                         + ", ".join(f"{m:.3f}" for m in f["margins_of_changed_labels"]) + ".")
        lines.append("")
    if "timing" in result:
        lines += timing_lines(result["timing"], precisions)
    if "floor" in result:
        f = result["floor"]
        lines += [f"## Floor: the decoder projections of a {f['tokens']}-token prompt pass "
                  f"({f['projection_gflop']:.1f} GFLOP) at the plain-matmul rate of these cores", "",
                  "| precision | plain matmul GFLOP/s (int8: GOP/s) | projections at that rate, ms |", "|---|---|---|"]
        lines += [f"| {p} | {f[p]['gflops']:.1f} | {f[p]['projections_floor_ms']:.1f} |" for p in PRECISIONS if p in f]
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def timing_lines(t: dict, precisions: list[str]) -> list[str]:
    lines = ["## Scoring pass per utterance (batch 1, interleaved)", "",
             "| precision | n | p50 ms | p95 ms | mean ms | stages p50 ms |", "|---|---|---|---|---|---|"]
    lines += [f"| {p} | {t[p]['n']} | {t[p]['p50_ms']:.1f} | {t[p]['p95_ms']:.1f} | {t[p]['mean_ms']:.1f} | "
              + ", ".join(f"{k} {v:.1f}" for k, v in t[p]["stage_p50_ms"].items()) + " |" for p in precisions]
    lines += [""] + [f"{p} is {r['p50']:.2f}x as fast as fp32 at p50, {r['p95']:.2f}x at p95, {r['mean']:.2f}x in "
                     "the mean." for p, r in t["speedup"].items()]
    return lines + [f"Median prompt pass: {t['encoded_tokens_p50']} encoded tokens.", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                    help="compared with fp32, which is always loaded")
    ap.add_argument("--meld", type=int, default=600, help="first N MELD test utterances for the agreement")
    ap.add_argument("--ravdess", type=int, default=None, help="first N RAVDESS test clips (default all 240)")
    ap.add_argument("--timing-utterances", type=int, default=40, help="MELD test utterances timed one at a time")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the service's ModelServer uses 1)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--timing-only", action="store_true", help="skip the agreement sets")
    ap.add_argument("--matmul-only", action="store_true",
                    help="only the plain-matmul rate of every format at a 64-token prompt's projection shapes (loads "
                         "fp32 alone: for a CPU where bf16 or int8 are refused)")
    ap.add_argument("--fit-check", action="store_true",
                    help="only tabulate int8's check margin on dev data (MELD dev, RAVDESS dev live cuts)")
    ap.add_argument("--out", default="benchmarks/results/llm_precision")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fit_check:
        args.precisions = ["int8-unchecked"]
    precisions = ("fp32",) + tuple(p for p in PRECISIONS if p in args.precisions and p != "fp32"
                                   and not args.matmul_only)
    predictors = {p: load(args.checkpoint, p) for p in precisions}
    ref = predictors["fp32"].model
    result: dict = {
        "command": "python benchmarks/bench_llm_precision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": predictors["fp32"].version,
        "precisions": list(precisions),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": args.threads,
                    "flags": [f for f, have in cpu_flag_table().items() if have], "loadavg_before": os.getloadavg()[0]},
        "agreement": {},
    }
    if args.fit_check:
        sets = {f"MELD dev (first {args.meld})": dataset_examples(ref, "meld", "dev", args.meld),
                "RAVDESS dev actors 11-12, live cuts": dataset_examples(ref, "ravdess", "dev", audio_view="live")}
        result["fit_check"] = fit_check(predictors, sets, args.batch_size)
        write_report(result, Path(args.out))
        print(Path(args.out).with_suffix(".md").read_text())
        return 0
    if args.matmul_only:
        result["floor"] = matmul_floor(ref, 64, ("fp32", "bf16", "int8"), repeats=3)
        write_report(result, Path(args.out))
        print(Path(args.out).with_suffix(".md").read_text())
        return 0
    meld = dataset_examples(ref, "meld", "test", args.meld)
    if not args.timing_only:
        print(f"agreement: MELD test first {len(meld)} ...", file=sys.stderr, flush=True)
        result["agreement"][f"MELD test (first {args.meld})"] = agreement(predictors, meld, args.batch_size)
        ravdess = dataset_examples(ref, "ravdess", "test", args.ravdess, audio_view="live")
        print(f"agreement: RAVDESS test live cuts ({len(ravdess)}) ...", file=sys.stderr, flush=True)
        result["agreement"]["RAVDESS test actors 13-16, live cuts"] = agreement(predictors, ravdess, args.batch_size)
    print("timing ...", file=sys.stderr, flush=True)
    result["timing"] = timing(predictors, meld[: args.timing_utterances], args.repeats)
    result["floor"] = matmul_floor(ref, result["timing"]["encoded_tokens_p50"] or 100,
                                   tuple(p for p in precisions if p != "int8-unchecked"))
    write_report(result, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    python benchmarks/bench_streaming_latency.py --speculation on --llm-precision fp32 auto
                                                            # the LLM's projections in fp32 vs bf16 (where native)
    python benchmarks/bench_streaming_latency.py --speculation on --llm-threads 2 1
                                                            # the LLM's passes on 2 or 1 torch threads

Results: ``benchmarks/results/streaming_latency.json`` (every utterance's row) and ``.md`` (the summary).

What is measured and why (latency, real-time factor, stages, the cost of context, the machine's load, the
targets), and where each part lives: ``benchmarks/latency/__init__.py``. This file is the command: its options, and
the calls to the parts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from egmf_core.precision import PRECISIONS  # noqa: E402
from latency.report import write_report  # noqa: E402  (benchmarks/ is on the path above)
from latency.variants import Variants, run_variants, side_by_side  # noqa: E402


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
    ap.add_argument("--speculation", choices=("both", "on", "off"),
                    help="the pipeline's speculative end of utterance: 'both' (default) streams the conversation "
                         "four times with the same loaded model, off / on / on / off (order-balanced against the "
                         "machine's drift), reports the first 'on' run in full and both modes pooled side by side; "
                         "when another option compares settings, the default is 'on' (the CLI's live default)")
    ap.add_argument("--checkpoint", nargs="+", metavar="CKPT",
                    help="checkpoint(s) to stream with (default: the shipped one); two or more are compared side by "
                         "side, streamed in the order A / B / B / A")
    ap.add_argument("--folded-answers", nargs="+", type=int, metavar="K",
                    help="answer trees the prompt pass carries (EGMFModel.folded_answers; default: the model's); two "
                         "or more values are compared side by side on one loaded model, A / B / B / A")
    ap.add_argument("--asr-threads", nargs="+", type=int, metavar="N",
                    help="recognizer CPU threads (EGMFAnalyzerConfig.cpu_threads; default: the CLI's); two or more "
                         "values are compared side by side, one recognizer loaded per value, A / B / B / A")
    ap.add_argument("--llm-precision", nargs="+", choices=PRECISIONS, metavar="P",
                    help=f"number format of the LLM's projections ({', '.join(PRECISIONS)}; EGMFAnalyzerConfig."
                         "llm_precision; default: the CLI's, auto = bf16 where the CPU has native bfloat16 and it "
                         "measures faster, else fp32); two or more values are compared side by side, one model "
                         "loaded per value, A / B / B / A")
    ap.add_argument("--llm-threads", nargs="+", type=int, metavar="N",
                    help="torch intra-op threads of the LLM's passes (EGMFPredictor.torch_threads; default: "
                         "precision.pass_threads: 1 for bf16 and int8, every core but one for fp32); two or more "
                         "values are compared side by side on one loaded model, A / B / B / A")
    ap.add_argument("--out", help="results folder (default benchmarks/results; --quick: a temporary folder)")
    a = ap.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    n = a.utterances or (5 if a.quick else 50)
    reps = a.offline_reps if a.offline_reps is not None else (2 if a.quick else 8)
    t0 = time.monotonic()
    variants = Variants(checkpoints=a.checkpoint or ["default"], speculation=a.speculation or "both",
                        folded_answers=a.folded_answers or [None], asr_threads=a.asr_threads or [None],
                        llm_precisions=a.llm_precision or [None], llm_threads=a.llm_threads or [None])
    if a.speculation is None and variants.compared() > 1:  # another setting is compared: speculation as live
        variants.speculation = "on"
    if variants.compared() > 1:
        ap.error("compare one thing at a time: several --checkpoint, --folded-answers, --asr-threads, "
                 "--llm-precision or --llm-threads, or --speculation both")
    if any(t < 1 for t in variants.asr_threads if t is not None):
        ap.error(f"--asr-threads: expected thread counts >= 1, got {a.asr_threads}")
    if any(t < 1 for t in variants.llm_threads if t is not None):
        ap.error(f"--llm-threads: expected thread counts >= 1, got {a.llm_threads}")
    runs, report = run_variants(variants, n, reps, a.wait_idle)
    res = runs[report]  # reported in full, with the offline check
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

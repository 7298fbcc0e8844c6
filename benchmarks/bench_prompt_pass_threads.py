"""The live prompt pass on 1 vs 2 torch threads, per LLM precision: `python benchmarks/bench_prompt_pass_threads.py`.

Why `egmf_core.precision.pass_threads` runs bf16 and int8 passes on one thread: a live prompt pass encodes ~30-50 new
ids (plus the folded answer trees) over a conversation's cached context, so its matmuls are short, and on two threads
its ~4,000 small operations each pay OpenMP's hand-off once they cross torch's grain size. Each (precision, threads)
runs in a process of its own (torch's thread pool is per process): the shipped checkpoint loaded as the CLI loads
it, a three-turn conversation whose context is primed (cached), then one utterance with RAVDESS test audio and a
text of 4 lengths, ``--repeats`` times each; the prompt pass's time (`Prediction.timings_ms["llm_prefill"]`), median
per length. int8 runs without its fp32 check here (the check's re-score is another pass). Results: ``--out``
(.json + .md) with the CPU model and its flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import cpu_model  # noqa: E402  (benchmarks/ is on the path above)

CONTEXT = ("Hello, thanks for calling.", "I have a problem with my bill.", "Sure, let me check that for you.")
TEXTS = ("Okay.", "Kids are talking by the door.", "I really do not think that this is going to work out for us.",
         "Well, I went to the store yesterday and they told me that the thing I ordered was never shipped, can you "
         "believe it?")


def measure(precision: str, threads: int, repeats: int) -> dict:
    """In this process: prompt-pass ms per number of new ids, with the predictor's passes on `threads` threads."""
    import torch

    from egmf_core.predictor import EGMFPredictor
    from egmf_core.research.eval_examples import dataset_examples

    torch.set_num_threads(threads)
    pr = EGMFPredictor.load("default", device="cpu", llm_precision=precision,
                            **({"int8_check_margin": 0.0} if precision == "int8" else {}))
    pr.torch_threads = threads
    pr.warm_up()
    audio = dataset_examples(pr.model, "ravdess", "test", limit=1, audio_view="live")[0].input.audio
    rows: dict[int, list[float]] = {}
    folded = 0
    for _ in range(repeats):
        for text in TEXTS:
            conv = pr.new_conversation()
            for i, line in enumerate(CONTEXT):
                pr.predict(conv, text=line, speaker=f"S{i % 2}")
            pr.prime_later(conv).result()  # the context's KV cache, as between live turns
            pred, _ = pr.predict_uncommitted(conv, text, "S1", audio)
            rows.setdefault(pred.prompt_tokens["encoded"], []).append(pred.timings_ms["llm_prefill"])
            folded = pred.prompt_tokens["folded"]
    return {"precision": precision, "threads": threads, "folded_nodes": folded,
            "prompt_pass_ms": {str(k): float(np.median(v)) for k, v in sorted(rows.items())}}


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    runs = result["runs"]
    ids = sorted({int(k) for r in runs for k in r["prompt_pass_ms"]})
    lines = ["# The live prompt pass on 1 vs 2 torch threads", "",
             f"`{result['command']}` on {result['cpu']}, {result['cores']} cores, flags {', '.join(result['flags'])}; "
             f"{result['date']}; {result['repeats']} repeats, median ms of the prompt pass (new ids plus "
             f"{runs[0]['folded_nodes']} folded answer-tree nodes over a primed 3-turn context); one process per row.",
             "", "| precision | threads | " + " | ".join(f"{i} new ids" for i in ids) + " |",
             "|---|---|" + "---|" * len(ids)]
    for r in runs:
        lines.append(f"| {r['precision']} | {r['threads']} | "
                     + " | ".join(f"{r['prompt_pass_ms'].get(str(i), float('nan')):.0f}" for i in ids) + " |")
    lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precisions", nargs="+", default=["int8", "bf16", "fp32"], choices=["int8", "bf16", "fp32"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/prompt_pass_threads")
    ap.add_argument("--one", nargs=2, metavar=("PRECISION", "THREADS"), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return 0
    from egmf_core.precision import cpu_flags

    runs = []
    for precision in args.precisions:
        for threads in args.threads:
            print(f"{precision}, {threads} thread(s) ...", file=sys.stderr, flush=True)
            done = subprocess.run([sys.executable, __file__, "--one", precision, str(threads), "--repeats",
                                   str(args.repeats)], capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {"command": "python benchmarks/bench_prompt_pass_threads.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(), "cores": os.cpu_count(),
              "flags": sorted({"avx512_bf16", "amx_bf16", "avx512_vnni", "avx2"} & cpu_flags()),
              "repeats": args.repeats, "runs": runs}
    write_report(result, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-utterance latency of the fusion stack: PyTorch vs onnxruntime (CPU EP), side by side in one run.

    python benchmarks/bench_fusion_engines.py            # writes benchmarks/results/fusion_engines.{json,md}

One utterance per call (batch 1) at 2 s, 5 s and 8 s of audio (Whisper states at 50 Hz, face features at 10 Hz,
3.5 utterance tokens per second), every modality present. The same weights run in both engines: the default
checkpoint's fusion stack when it exists (`--checkpoint`), else a random-initialised stack with SmolLM2's
dimensions (latency does not depend on the weight values). The ONNX graph is exported fresh by the same code as
`python -m export`. onnxruntime is timed through `export.runner.FusionEngine`, exactly as serving calls it (torch
tensors in and out, IO binding), and also as a bare `session.run` on numpy arrays.

Runs are interleaved (PyTorch, onnxruntime, PyTorch, ...) so that load from other processes hits both alike, and
both use the same number of threads; each thread count is measured separately (default 1 and 2). The machine's
load average is recorded: on a shared 2-core machine, a second busy process makes any 2-thread run much slower.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LLM_HIDDEN, EMBED_RMS = 576, 0.12  # SmolLM2-135M (used when no checkpoint is available)


def load_fusion(checkpoint: str | None):
    """FusionStack with a checkpoint's fusion weights (no LLM needed), or random init; returns (stack, source)."""
    import torch
    from safetensors import safe_open

    from egmf_core.checkpoint import read_metadata, resolve
    from egmf_core.config import EGMFConfig
    from egmf_core.fusion import FusionStack

    if checkpoint:
        path = resolve(checkpoint)
        cfg, _ = read_metadata(path)
        with safe_open(str(path), framework="pt") as fh:
            # Training-only heads (e.g. an auxiliary classifier) are not part of the inference graph.
            state = {k.split(".", 1)[1]: fh.get_tensor(k) for k in fh.keys()
                     if k.startswith("fusion.") and not k.startswith("fusion.aux_head.")}
        hidden = state["text_in.0.weight"].shape[0]
        stack = FusionStack(cfg.fusion, cfg.ablation, hidden, float(state["embed_rms"]))
        stack.load_state_dict(state)
        return stack.eval(), f"checkpoint {path}"
    cfg = EGMFConfig()
    torch.manual_seed(0)
    return FusionStack(cfg.fusion, cfg.ablation, LLM_HIDDEN, EMBED_RMS).eval(), "random init (SmolLM2 dims)"


def utterance(stack, seconds: float, seed: int = 0):
    import torch

    f = stack.cfg
    g = torch.Generator().manual_seed(seed)
    ta = int(seconds * f.audio_rate)
    ta -= ta % f.audio_stride
    tv, tt = int(seconds * f.visual_rate), int(3.5 * seconds) + 1
    return (
        torch.randn(1, tt, stack.llm_hidden, generator=g) * float(stack.embed_rms), torch.ones(1, tt, dtype=torch.bool),
        torch.randn(1, ta, f.audio_dim, generator=g) * 0.6, torch.ones(1, ta, dtype=torch.bool),
        torch.rand(1, tv, f.visual_dim, generator=g) * 0.5, torch.ones(1, tv, dtype=torch.bool),
    )


def stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {"median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3), "n": len(samples)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="auto", help="checkpoint path, 'default', 'none' (random init) or 'auto' "
                    "(default checkpoint if it exists, else random init)")
    ap.add_argument("--lengths", default="2,5,8", help="utterance seconds (default 2,5,8)")
    ap.add_argument("--threads", default="1,2", help="thread counts to measure, same for both engines (default 1,2)")
    ap.add_argument("--iters", type=int, default=60, help="timed calls per engine and setting (default 60)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import onnxruntime as ort
    import torch

    from egmf_core.checkpoint import DEFAULT_CHECKPOINT
    from export.onnx_export import OUTPUT_NAMES, example_inputs, export_fusion
    from export.runner import FusionEngine

    checkpoint = {"auto": "default" if DEFAULT_CHECKPOINT.is_file() else None,
                  "none": None}.get(args.checkpoint, args.checkpoint)
    stack, source = load_fusion(checkpoint)
    print(f"fusion stack: {source}; {sum(p.numel() for p in stack.parameters()) / 1e6:.2f} M params", flush=True)
    tmpdir = tempfile.TemporaryDirectory(prefix="bench_fusion_")
    tmp = Path(tmpdir.name)
    start = time.perf_counter()
    onnx_path = export_fusion(stack, tmp / "fusion.onnx",
                              example_inputs(stack.cfg, stack.llm_hidden, float(stack.embed_rms)))
    print(f"exported {onnx_path.name} in {time.perf_counter() - start:.1f} s", flush=True)

    load_before = os.getloadavg()
    lengths = [float(x) for x in args.lengths.split(",")]
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        engine = FusionEngine(onnx_path, stack.cfg, stack.llm_hidden, float(stack.embed_rms), providers=["cpu"],
                              threads=threads)
        assert engine.provider == "CPUExecutionProvider", engine.active_providers
        for seconds in lengths:
            inputs = utterance(stack, seconds)
            names = ("text_embeds", "text_valid", "audio", "audio_valid", "visual", "visual_valid")
            feeds = {n: t.numpy() for n, t in zip(names, inputs)}
            with torch.inference_mode():
                ref = stack(*inputs)
                got = engine(*inputs)
                max_abs = max(float((getattr(ref, k) - getattr(got, k)).abs().max()) for k in OUTPUT_NAMES)
                times = {"pytorch": [], "onnxruntime": [], "onnxruntime_session_run": []}
                calls = {
                    "pytorch": lambda: stack(*inputs),
                    "onnxruntime": lambda: engine(*inputs),
                    "onnxruntime_session_run": lambda: engine.run_numpy(feeds),
                }
                for _ in range(args.warmup):
                    for fn in calls.values():
                        fn()
                order = list(calls)
                for i in range(args.iters):
                    for name in (order if i % 2 == 0 else order[::-1]):  # alternate to spread drift evenly
                        t0 = time.perf_counter()
                        calls[name]()
                        times[name].append((time.perf_counter() - t0) * 1000.0)
            row = {"threads": threads, "audio_seconds": seconds,
                   "shape": {"text_len": int(inputs[0].shape[1]), "audio_len": int(inputs[2].shape[1]),
                             "visual_len": int(inputs[4].shape[1])},
                   **{k: stats(v) for k, v in times.items()}, "max_abs_diff": max_abs}
            row["ratio_pytorch_over_onnxruntime"] = round(
                row["pytorch"]["median_ms"] / row["onnxruntime"]["median_ms"], 2)
            rows.append(row)
            print(f"threads {threads}, {seconds:g} s: PyTorch {row['pytorch']['median_ms']:.2f} ms "
                  f"(p95 {row['pytorch']['p95_ms']:.2f}), "
                  f"onnxruntime {row['onnxruntime']['median_ms']:.2f} ms (p95 {row['onnxruntime']['p95_ms']:.2f}), "
                  f"ratio {row['ratio_pytorch_over_onnxruntime']:.2f}x", flush=True)
    load_after = os.getloadavg()
    tmpdir.cleanup()

    from bench_support import cpu_model  # benchmarks/ is the script's folder

    cpu = cpu_model()
    result = {
        "benchmark": "fusion stack per-utterance latency, PyTorch vs onnxruntime CPU EP",
        "command": "python benchmarks/bench_fusion_engines.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "python": sys.version.split()[0]},
        "fusion": source, "batch": 1, "iters": args.iters, "onnxruntime_intra_op_spinning": False, "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion_engines.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Fusion stack latency per utterance: PyTorch vs onnxruntime (CPU)",
        "",
        f"{result['date']}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"{source}; batch 1, {args.iters} interleaved calls per engine; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. onnxruntime = `export.runner.FusionEngine` (what serving calls); "
        "ratio = PyTorch median / onnxruntime median. onnxruntime's intra-op threads do not spin between calls "
        "(FusionEngine's default): a spinning session made the next PyTorch call on this 2-core machine ~6x slower, "
        "which would also slow the LLM forward that follows the fusion stack in serving.",
        "",
        "| threads | audio | PyTorch median | PyTorch p95 | onnxruntime median | onnxruntime p95 | ratio | "
        "bare session.run median | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads']} | {r['audio_seconds']:g} s | {r['pytorch']['median_ms']:.2f} ms | "
            f"{r['pytorch']['p95_ms']:.2f} ms | "
            f"{r['onnxruntime']['median_ms']:.2f} ms | {r['onnxruntime']['p95_ms']:.2f} ms | "
            f"{r['ratio_pytorch_over_onnxruntime']:.2f}x | {r['onnxruntime_session_run']['median_ms']:.2f} ms | "
            f"{r['max_abs_diff']:.1e} |"
        )
    lines += ["", f"Command: `{result['command'].strip()}`", ""]
    (out / "fusion_engines.md").write_text("\n".join(lines))
    print(f"wrote {out / 'fusion_engines.json'} and {out / 'fusion_engines.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

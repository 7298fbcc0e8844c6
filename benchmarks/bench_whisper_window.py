"""Whisper encoder window: cost, transcripts and the model's answers at 30 s (native) vs shorter windows.

    python benchmarks/bench_whisper_window.py     # writes benchmarks/results/whisper_window.{json,md}

The recognizer zero-pads every utterance to its input window, so its encoder costs the same ~0.5 s on this CPU for
a 1 s or a 8 s utterance. `WhisperFrontendConfig.window_s` shortens the window. The encoder states then change a
little (their attention sees less padding), so this measures, on RAVDESS dev (actors 11-12, all 120 clips, never
the test actors), per window: the encoder time per utterance (median), the word error rate against the known
sentence, and the shipped checkpoint's 8-class accuracy and agreement with its answers at 30 s. Windows run
interleaved clip by clip, so load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_streaming_latency import cpu_model, write_table_report  # noqa: E402  (benchmarks/ is the script's folder)

NATIVE = 30.0


def run(windows: list[float], limit: int | None, batch: int = 8) -> dict:
    import torch

    from egmf_core.evaluate import dataset_examples
    from egmf_core.data import load_dataset
    from egmf_core.features.audio import WhisperFrontend, WhisperFrontendConfig, load_audio
    from egmf_core.metrics import word_error_rate
    from egmf_core.predictor import EGMFPredictor

    torch.set_num_threads(2)
    frontends = {w: WhisperFrontend(WhisperFrontendConfig(window_s=w)) for w in windows}
    predictor = EGMFPredictor.load("default", device="cpu")
    model = predictor.model
    records = list(load_dataset("ravdess", "dev"))[:limit]
    examples = dataset_examples(model, "ravdess", "dev", limit=limit, audio=lambda rec: None)
    if len(examples) != len(records):  # RAVDESS: one labelled example per clip, in record order
        raise RuntimeError(f"{len(records)} clips but {len(examples)} examples")
    rows: dict[float, dict[str, list]] = {w: {"encoder_ms": [], "wer": [], "inputs": []} for w in windows}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for i, (rec, ex) in enumerate(zip(records, examples)):
        audio = load_audio(rec.audio_path)
        for w in windows:
            result = frontends[w].process(audio)
            rows[w]["encoder_ms"].append(result.encoder_ms)
            rows[w]["wer"].append(word_error_rate(rec.text, result.text))
            rows[w]["inputs"].append(dataclasses.replace(ex.input, audio=result.encoder_states))
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{len(records)} clips recognized ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    gold = [e.input.emotion for e in examples]
    answers: dict[float, list[str]] = {}
    with torch.no_grad():
        for w in windows:
            inputs = rows[w]["inputs"]
            answers[w] = [p.emotion for k in range(0, len(inputs), batch) for p in model.score(inputs[k:k + batch])]
    ref = answers[NATIVE] if NATIVE in answers else None
    table = {}
    for w in windows:
        table[f"{w:g}"] = {
            "encoder_ms_p50": round(float(np.median(rows[w]["encoder_ms"])), 1),
            "wer_mean": round(100 * float(np.mean(rows[w]["wer"])), 2),
            "accuracy8": round(100 * float(np.mean([a == g for a, g in zip(answers[w], gold)])), 2),
            "agreement_with_30s": None if ref is None else round(
                100 * float(np.mean([a == b for a, b in zip(answers[w], ref)])), 2),
        }
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
                   f"{os.getloadavg()[0]:.2f} after (1 min)",
        "model_version": predictor.version,
        "data": f"RAVDESS dev (actors 11-12), {len(records)} clips",
        "windows": table,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Whisper encoder window: cost vs transcripts and the model's answers",
        "",
        f"{result['date']}; {result['machine']}. Model `{result['model_version']}` (trained on 30 s-window "
        f"features); faster-whisper tiny.en int8, 2 threads. Data: {result['data']}.",
        "",
        "| window (s) | encoder ms p50 | WER % (mean) | accuracy8 % | agreement with 30 s % |",
        "|---|---|---|---|---|",
    ]
    for w, r in result["windows"].items():
        agree = "-" if r["agreement_with_30s"] is None else f"{r['agreement_with_30s']:.2f}"
        lines.append(f"| {w} | {r['encoder_ms_p50']:.0f} | {r['wer_mean']:.2f} | {r['accuracy8']:.2f} | {agree} |")
    command = result.get("command", "python benchmarks/bench_whisper_window.py")
    lines += ["", f"Command: `{command}`; numbers in `whisper_window.json`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=float, nargs="+", default=[30.0, 10.0], help="windows in seconds")
    ap.add_argument("--limit", type=int, default=None, help="first N dev clips (default: all 120)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "whisper_window")
    args = ap.parse_args(argv)
    result = run(args.windows, args.limit)
    write_table_report(args.out, result, markdown, "bench_whisper_window.py", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Whisper encoder window: cost, transcripts and the model's answers at 30 s (native) vs shorter windows.

    python benchmarks/bench_whisper_window.py               # RAVDESS dev -> benchmarks/results/whisper_window.{json,md}
    python benchmarks/bench_whisper_window.py --split test  # -> whisper_window_test.{json,md}

The recognizer zero-pads every utterance to its input window, so its encoder costs the same ~0.5 s on this CPU for
a 1 s or a 8 s utterance. `WhisperFrontendConfig.window_s` shortens the window. The encoder states then change a
little (their attention sees less padding), so this measures, on RAVDESS dev (actors 11-12, all 120 clips, never
the test actors), per window: the encoder time per utterance (median), the word error rate against the known
sentence, and the shipped checkpoint's 8-class accuracy and agreement with its answers at 30 s, with the known sentence
as the text and with the recognizer's transcript (what it gets live), and per window the clips only the 30 s window
or only this window got right (paired counts: McNemar's test reads them). Windows run interleaved clip by clip, so
load from other processes hits them alike. Choose on dev (actors 11-12); test (13-16) only reports.
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

from bench_support import cpu_model, write_table_report  # noqa: E402  (benchmarks/ is the script's folder)

NATIVE = 30.0
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "whisper_window"
ACTORS = {"train": "actors 01-10", "dev": "actors 11-12", "test": "actors 13-16"}


def run(windows: list[float], limit: int | None, batch: int = 8, split: str = "dev") -> dict:
    import torch

    from egmf_core.research.eval_examples import dataset_examples
    from egmf_core.data import load_dataset
    from egmf_core.features.audio import WhisperFrontend, WhisperFrontendConfig, load_audio
    from egmf_core.research.metrics import word_error_rate
    from egmf_core.predictor import EGMFPredictor

    torch.set_num_threads(2)
    frontends = {w: WhisperFrontend(WhisperFrontendConfig(window_s=w)) for w in windows}
    predictor = EGMFPredictor.load("default", device="cpu")
    model = predictor.model
    records = list(load_dataset("ravdess", split))[:limit]
    examples = dataset_examples(model, "ravdess", split, limit=limit, audio=lambda rec: None)
    if len(examples) != len(records):  # RAVDESS: one labelled example per clip, in record order
        raise RuntimeError(f"{len(records)} clips but {len(examples)} examples")
    rows: dict[float, dict[str, list]] = {w: {"encoder_ms": [], "wer": [], "inputs": [], "asr_inputs": []}
                                          for w in windows}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for i, (rec, ex) in enumerate(zip(records, examples)):
        audio = load_audio(rec.audio_path)
        for w in windows:
            result = frontends[w].process(audio)
            rows[w]["encoder_ms"].append(result.encoder_ms)
            rows[w]["wer"].append(word_error_rate(rec.text, result.text))
            rows[w]["inputs"].append(dataclasses.replace(ex.input, audio=result.encoder_states))
            turn = model.prompts.make_turn(ex.input.current.speaker, result.text.strip())
            rows[w]["asr_inputs"].append(dataclasses.replace(rows[w]["inputs"][-1], current=turn))
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{len(records)} clips recognized ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    gold = [e.input.emotion for e in examples]
    answers: dict[tuple[float, str], list[str]] = {}
    with torch.no_grad():
        for w in windows:
            for text, key in (("sentence", "inputs"), ("transcript", "asr_inputs")):
                inputs = rows[w][key]
                answers[w, text] = [p.emotion for k in range(0, len(inputs), batch)
                                    for p in model.score(inputs[k:k + batch])]
    right = {k: [a == g for a, g in zip(v, gold)] for k, v in answers.items()}
    table = {}
    for w in windows:
        r: dict = {"encoder_ms_p50": round(float(np.median(rows[w]["encoder_ms"])), 1),
                   "wer_mean": round(100 * float(np.mean(rows[w]["wer"])), 2)}
        for text in ("sentence", "transcript"):
            ref = answers.get((NATIVE, text))
            r[text] = {
                "accuracy8": round(100 * float(np.mean(right[w, text])), 2),
                "agreement_with_30s": None if ref is None else round(
                    100 * float(np.mean([a == b for a, b in zip(answers[w, text], ref)])), 2),
                "only_30s_right": None if ref is None else int(sum(
                    a and not b for a, b in zip(right[NATIVE, text], right[w, text]))),
                "only_this_right": None if ref is None else int(sum(
                    b and not a for a, b in zip(right[NATIVE, text], right[w, text]))),
            }
        table[f"{w:g}"] = r
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
                   f"{os.getloadavg()[0]:.2f} after (1 min)",
        "model_version": predictor.version,
        "data": f"RAVDESS {split} ({ACTORS[split]}), {len(records)} clips",
        "windows": table,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Whisper encoder window: cost vs transcripts and the model's answers",
        "",
        f"{result['date']}; {result['machine']}. Model `{result['model_version']}` (trained on 30 s-window "
        f"features); faster-whisper tiny.en int8, 2 threads. Data: {result['data']}. Text: the clip's known sentence, "
        "or the recognizer's transcript at that window (live). Paired: clips only the 30 s window got right / only "
        "this window got right, same text.",
        "",
        "| window (s) | encoder ms p50 | WER % (mean) | accuracy8 %, sentence | agreement with 30 s % | paired | "
        "accuracy8 %, transcript | agreement with 30 s % | paired |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(r: dict) -> str:
        agree = "-" if r["agreement_with_30s"] is None else f"{r['agreement_with_30s']:.2f}"
        paired = "-" if r["only_30s_right"] is None else f"{r['only_30s_right']} / {r['only_this_right']}"
        return f"{r['accuracy8']:.2f} | {agree} | {paired}"

    for w, r in result["windows"].items():
        lines.append(f"| {w} | {r['encoder_ms_p50']:.0f} | {r['wer_mean']:.2f} | {cells(r['sentence'])} | "
                     f"{cells(r['transcript'])} |")
    command = result.get("command", "python benchmarks/bench_whisper_window.py")
    lines += ["", f"Command: `{command}`; numbers in the JSON file of the same name.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=float, nargs="+", default=[30.0, 10.0], help="windows in seconds")
    ap.add_argument("--split", choices=sorted(ACTORS), default="dev",
                    help="RAVDESS split (choose on dev; test only to report)")
    ap.add_argument("--limit", type=int, default=None, help="first N clips of the split (default: all)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    result = run(args.windows, args.limit, split=args.split)
    if args.out == DEFAULT_OUT and args.split != "dev":
        args.out = args.out.with_name(f"{args.out.name}_{args.split}")
    write_table_report(args.out, result, markdown, "bench_whisper_window.py", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Labels on speech not recorded like the training data: `python benchmarks/bench_real_speech.py [--checkpoint X]`.

Three parts (issue 25), one report (`benchmarks/results/real_speech.{json,md}`):

(a) RAVDESS test actors 13-16 (240 clips, speakers never trained on) under each channel condition of
    `egmf_core.research.degrade.CONDITIONS` (clean, -20 dB, +12 dB through a limiter, loudness-normalized to
    -16 LUFS, phone band G.711 mu-law, MP3 32 kbit/s, white noise at 10 dB SNR), each clip degraded as recorded, then
    cut and encoded as the live pipeline does (`egmf_core.research.feature_lookup.whisper_audio_lookup("live")`: VAD
    cut, 1 s room-tone framing, the checkpoint's loudness normalization, the 10 s window) with the clip's known
    sentence as the text: 8-class accuracy, macro F1 and ECE per condition, and the worst drop from clean.
(b) The real recordings in ../shared/data/media with sound (5 talking-head interview / speech clips, the MEAD clips
    with audio) through the CLI's own path (`streaming.cli.main --file ... --json`: VAD, recognizer, face features,
    predictor): every utterance's label and calibrated confidence.
(c) False alarms: the share of neutral and calm utterances (RAVDESS test neutral + calm clips in MELD's seven labels,
    per condition; the talking-head utterances) given a label other than neutral with calibrated confidence >= 0.5;
    and the talking-head utterances labelled anger, disgust or fear at >= 0.5 (none allowed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import cpu_model, write_report_files  # noqa: E402  (benchmarks/ is on the path above)

from egmf_core.checkpoint import checkpoint_version, load_checkpoint  # noqa: E402
from egmf_core.research.degrade import CONDITIONS  # noqa: E402
from egmf_core.research.eval_examples import dataset_examples  # noqa: E402
from egmf_core.research.evaluate import emotion_calibration, predict_examples  # noqa: E402
from egmf_core.research.feature_lookup import whisper_audio_lookup  # noqa: E402
from egmf_core.research.fit_calibration import as_default_label_set  # noqa: E402
from egmf_core.research.metrics import classification_report  # noqa: E402

MEDIA = ROOT.parent / "shared" / "data" / "media"
ALARM_CONFIDENCE = 0.5
HARSH = ("anger", "disgust", "fear")


def false_alarm(label: str, confidence: float) -> bool:
    return label not in ("neutral", "calm") and confidence >= ALARM_CONFIDENCE


def ravdess_conditions(model, conditions: list[str], limit: int | None) -> dict:
    """Part (a) and RAVDESS's share of part (c)."""
    loudness = model.cfg.fusion.audio_loudness_lufs
    out = {}
    for name in conditions:
        t0 = time.perf_counter()
        lookup = whisper_audio_lookup("live", loudness, degradation=None if name == "clean" else name)
        examples = dataset_examples(model, "ravdess", "test", limit, audio=lookup, label_set="ravdess")
        preds = predict_examples(model, examples)
        labels = model.prompts.label_sets["ravdess"]
        gold = [e.input.emotion for e in examples]
        rep = classification_report(gold, [p.emotion for p in preds], labels)
        calm = as_default_label_set([e for e in examples if e.input.emotion in ("neutral", "calm")])
        calm_preds = predict_examples(model, calm)
        alarms = [false_alarm(p.emotion, p.emotion_probs[p.emotion]) for p in calm_preds]
        out[name] = {
            "n": rep["n"],
            "no_speech_cut": int(sum(e.input.audio is None for e in examples)),
            "accuracy": rep["accuracy"],
            # live, a clip the VAD does not cut gives no event at all; here it is answered from its words alone
            "accuracy_cut_clips": float(np.mean([p.emotion == e.input.emotion for e, p in zip(examples, preds)
                                                 if e.input.audio is not None]) * 100),
            "macro_f1": float(np.mean(list(rep["per_class_f1"].values()))),
            "ece": emotion_calibration(model, "ravdess", gold, preds)["calibrated"]["ece"],
            "false_alarm": {"n": len(alarms), "rate": float(np.mean(alarms)) if alarms else float("nan"),
                            "labels": [p.emotion for p, a in zip(calm_preds, alarms) if a]},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"  {name}: acc8 {rep['accuracy']:.2f} macro F1 {out[name]['macro_f1']:.2f} ECE {out[name]['ece']:.3f} "
              f"false alarms {sum(alarms)}/{len(alarms)} ({out[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return out


def media_files() -> list[tuple[Path, str]]:
    """(file, what it is): the talking heads are calm interview / speech clips; MEAD clips with audio, their label."""
    files = [(p, "calm") for p in sorted((MEDIA / "talking_heads").glob("*.mp4"))]
    with open(MEDIA / "mead" / "labels.csv", newline="") as fh:
        files += [(MEDIA / "mead" / row["file"], row["emotion"]) for row in csv.DictReader(fh)
                  if row["has_audio"] == "yes"]
    return files


def real_recordings(checkpoint: str) -> list[dict]:
    """Part (b): each file through the CLI (`python -m streaming --file F --json`) with one loaded analyzer."""
    from streaming.analyzer import EGMFAnalyzerConfig, EGMFUtteranceAnalyzer
    from streaming.cli import main as cli_main

    analyzer = EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(checkpoint=checkpoint))
    rows = []
    for path, kind in media_files():
        buf = io.StringIO()
        code = cli_main(["--file", str(path), "--json", "--checkpoint", checkpoint],
                        analyzer_factory=lambda a: analyzer, out=buf, err=io.StringIO())
        if code != 0:
            raise RuntimeError(f"the CLI failed on {path} (exit {code})")
        for line in buf.getvalue().splitlines():
            ev = json.loads(line)
            if ev.get("type") != "utterance":
                continue
            emo = ev["emotion"]
            rows.append({"file": f"{path.parent.name}/{path.name}", "kind": kind, "start": ev["start"],
                         "text": ev["text"], "emotion": emo["label"], "confidence": emo["confidence"],
                         "sentiment": ev["sentiment"]["label"], "sentiment_score": ev["sentiment"]["score"],
                         "modalities": ev["modalities"]})
    return rows


def markdown(result: dict) -> str:
    lines = ["# Labels on real speech", "",
             f"`python benchmarks/bench_real_speech.py --checkpoint {result['checkpoint']}`; model "
             f"`{result['model_version']}`; {result['cpu']} ({result['date']}).", "",
             "## (a) RAVDESS test actors 13-16, live cut under each channel condition (known sentence as text)", "",
             "| condition | 8-class accuracy | clips the VAD did not cut | accuracy on the cut clips | macro F1 | "
             "ECE (15 bins) | false alarms on neutral + calm |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["ravdess"].items():
        fa = r["false_alarm"]
        lines.append(f"| {name} | {r['accuracy']:.2f} | {r['no_speech_cut']} | {r['accuracy_cut_clips']:.2f} | "
                     f"{r['macro_f1']:.2f} | {r['ece']:.3f} | "
                     f"{fa['rate'] * 100:.1f} % ({round(fa['rate'] * fa['n'])}/{fa['n']}) |")
    s = result["summary"]
    lines += ["", f"Worst condition: {s['worst_condition']} ({s['worst_drop']:+.2f} points from clean).", "",
              "## (b) Real recordings through the CLI (`python -m streaming --file F --json`)", "",
              "| file | what it is | start (s) | text | emotion | confidence | sentiment |",
              "|---|---|---|---|---|---|---|"]
    for r in result["recordings"]:
        text = r["text"].replace("|", "/")
        lines.append(f"| {r['file']} | {r['kind']} | {r['start']:.1f} | {text} | {r['emotion']} | "
                     f"{r['confidence']:.2f} | "
                     f"{r['sentiment']} {r['sentiment_score']:+.1f} |")
    lines += ["", "## (c) False alarms (a label other than neutral with calibrated confidence >= 0.5)", "",
              f"- RAVDESS test neutral + calm clips, clean: {s['ravdess_clean_false_alarm'] * 100:.1f} %; "
              "worst condition "
              f"{s['ravdess_worst_false_alarm'] * 100:.1f} % ({s['ravdess_worst_false_alarm_condition']})",
              f"- Talking-head utterances: {s['talking_heads_false_alarm'] * 100:.1f} % "
              f"({s['talking_heads_alarms']}/{s['talking_heads_utterances']}); "
              "labelled anger / disgust / fear at >= 0.5: "
              f"{s['talking_heads_harsh']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--conditions", nargs="*", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--limit", type=int, default=None, help="first N RAVDESS test clips (smoke runs)")
    ap.add_argument("--no-recordings", action="store_true", help="skip part (b)")
    ap.add_argument("--out", default="benchmarks/results/real_speech", help="report path without extension")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    model = load_checkpoint(args.checkpoint)
    result: dict = {"checkpoint": args.checkpoint,
                    "model_version": checkpoint_version(args.checkpoint, model.cfg.backbone.name),
                    "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "limit": args.limit,
                    "loudness_lufs": model.cfg.fusion.audio_loudness_lufs,
                    "temperatures": model.calibration.emotion_temperature}
    print("(a) RAVDESS test under each condition", file=sys.stderr, flush=True)
    result["ravdess"] = ravdess_conditions(model, args.conditions, args.limit)
    del model
    if not args.no_recordings:
        print("(b) real recordings through the CLI", file=sys.stderr, flush=True)
    result["recordings"] = [] if args.no_recordings else real_recordings(args.checkpoint)
    rav = result["ravdess"]
    clean = rav.get("clean", next(iter(rav.values())))
    worst = min(rav, key=lambda k: rav[k]["accuracy"])
    worst_fa = max(rav, key=lambda k: rav[k]["false_alarm"]["rate"])
    heads = [r for r in result["recordings"] if r["kind"] == "calm"]
    alarms = [r for r in heads if false_alarm(r["emotion"], r["confidence"])]
    result["summary"] = {
        "clean_accuracy": clean["accuracy"],
        "worst_condition": worst,
        "worst_drop": rav[worst]["accuracy"] - clean["accuracy"],
        "ravdess_clean_false_alarm": clean["false_alarm"]["rate"],
        "ravdess_worst_false_alarm": rav[worst_fa]["false_alarm"]["rate"],
        "ravdess_worst_false_alarm_condition": worst_fa,
        "talking_heads_utterances": len(heads),
        "talking_heads_alarms": len(alarms),
        "talking_heads_false_alarm": len(alarms) / len(heads) if heads else float("nan"),
        "talking_heads_harsh": sum(r["emotion"] in HARSH and r["confidence"] >= ALARM_CONFIDENCE for r in heads),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_report_files(Path(args.out), result, markdown, json_end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m egmf_core.research.evaluate --checkpoint <path|default> --dataset meld|ravdess|... --split test [--limit N]`.

Runs the fast scoring path over a dataset split and writes a JSON report: emotion accuracy / weighted F1 /
per-class F1 / confusion matrix, sentiment accuracy / weighted F1 and score MAE / correlation (MELD), RAVDESS's
8-class accuracy, and the paper's sanity checks (gate weights: mean and entropy; experts' mean pairwise cosine).
The MMSA sentiment benchmarks (`--dataset mosi|mosei|sims|simsv2`, a converted folder) get MMSA's regression
metrics instead (`metrics.mosei_regression_report` / `sims_regression_report`) on the data set's own label scale.

Scoring and the report are here (`predict_examples`, `report`, used by training's dev selection and the ablations
too); the examples of a split are loaded by `egmf_core.research.eval_examples` and their audio and face features
looked up by `egmf_core.research.feature_lookup`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..checkpoint import CheckpointError, checkpoint_version, load_checkpoint
from ..data import DatasetError
from ..data.mmsa import MMSA_DATASETS
from .eval_examples import dataset_examples, mmsa_examples, open_mmsa
from .examples import Example, text_length
from .feature_lookup import AUDIO_VIEWS
from .metrics import (
    calibration_report,
    classification_report,
    expert_similarity,
    gate_report,
    mosei_regression_report,
    reliability_diagram,
    score_report,
    sims_regression_report,
)
from ..model import EGMFModel
from ..model_io import Prediction

# Datasets with emotion labels to score (`egmf_core.data` also loads unlabelled media sets).
EVAL_DATASETS: tuple[str, ...] = ("meld", "ravdess", "meld_raw", "iemocap", "cherma", "mead")


@dataclass(frozen=True)
class MmsaScoring:
    """How an MMSA benchmark is scored: MMSA's metrics, and the one that training's checkpoint selection uses."""

    report: Callable[[Sequence[float], Sequence[float]], dict]
    # Acc-2 over all clips ("has-0" for MOSI/MOSEI): in percent like the emotion benchmarks' parts of the
    # selection score, and defined on any dev set (non-0 Acc-2 is nan when every label is 0).
    selection: str


MMSA_SCORING: dict[str, MmsaScoring] = {
    "mosi": MmsaScoring(mosei_regression_report, "acc2_has0"),
    "mosei": MmsaScoring(mosei_regression_report, "acc2_has0"),
    "sims": MmsaScoring(sims_regression_report, "acc2"),
    "simsv2": MmsaScoring(sims_regression_report, "acc2"),
}


def predict_examples(
    model: EGMFModel, examples: Sequence[Example], batch_size: int = 16, progress: bool = False
) -> list[Prediction]:
    """Score examples in length-sorted batches (less padding), returning predictions in the original order."""
    order = sorted(range(len(examples)), key=lambda i: text_length(examples[i].input))
    preds: list[Prediction | None] = [None] * len(examples)
    start = time.perf_counter()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        for i, p in zip(idx, model.score([examples[i].input for i in idx])):
            preds[i] = p
        if progress and (b // batch_size) % 10 == 0:
            done = min(b + batch_size, len(order))
            rate = done / (time.perf_counter() - start)
            print(f"  evaluated {done}/{len(order)} ({rate:.1f} utt/s)", file=sys.stderr, flush=True)
    return preds  # type: ignore[return-value]


def report(model: EGMFModel, examples: Sequence[Example], preds: Sequence[Prediction]) -> dict:
    """Metrics for one dataset's examples (all of one label set): emotion and sentiment classification, or MMSA's
    regression metrics for a sentiment-only label set; the gate and expert checks for both."""
    if model.prompts.is_score_only(examples[0].input.label_set):
        out = {"sentiment_regression": regression_report(examples, preds)}
    else:
        out = emotion_report(model, examples, preds)
    out["gate"] = gate_report(np.array([p.alpha for p in preds]))
    out["expert_cosine"] = expert_similarity(np.stack([p.expert_outputs for p in preds]))
    out["modalities"] = {m: int(sum(p.modalities[m] for p in preds)) for m in ("audio", "video", "text")}
    return out


def regression_report(examples: Sequence[Example], preds: Sequence[Prediction]) -> dict:
    """MMSA's metrics of the predicted scores against the clips' original labels, both on the data set's own scale
    (the labels exactly as stored, `meta["label"]`, not the [-1, 1] sentiment scaled back)."""
    dataset = examples[0].record.dataset
    if dataset not in MMSA_SCORING:
        raise ValueError(f"sentiment-only scoring is defined for the MMSA benchmarks {tuple(MMSA_SCORING)}, not "
                         f"{dataset!r}")
    gold = [float(e.record.meta["label"]) for e in examples]
    return MMSA_SCORING[dataset].report([p.sentiment_score for p in preds], gold)


def emotion_report(model: EGMFModel, examples: Sequence[Example], preds: Sequence[Prediction]) -> dict:
    """Emotion classification, and sentiment classification and score error where the data has sentiment."""
    label_set = examples[0].input.label_set
    labels = model.prompts.label_sets[label_set]
    gold = [e.input.emotion for e in examples]
    out: dict = {"emotion": classification_report(gold, [p.emotion for p in preds], labels),
                 "emotion_calibration": emotion_calibration(model, label_set, gold, preds)}
    if label_set == "ravdess":
        to7 = lambda lab: "neutral" if lab == "calm" else lab  # noqa: E731
        out["emotion_7class"] = classification_report(
            [to7(g) for g in gold], [to7(p.emotion) for p in preds], model.cfg.task.emotions
        )
    with_sent = [(e, p) for e, p in zip(examples, preds) if e.input.sentiment is not None]
    if with_sent:
        s_gold = [model.prompts.sentiment_label(e.input.sentiment) for e, _ in with_sent]
        out["sentiment"] = classification_report(s_gold, [p.sentiment_label for _, p in with_sent],
                                                 model.cfg.task.sentiments)
        out["sentiment_score"] = score_report([e.input.sentiment for e, _ in with_sent],
                                              [p.sentiment_score for _, p in with_sent])
    return out


def emotion_calibration(model: EGMFModel, label_set: str, gold: Sequence[str], preds: Sequence[Prediction]) -> dict:
    """How far the emotion confidences are from the accuracy they claim (`metrics.calibration_report`, 15 bins), with
    the model's calibration (`egmf_core.calibration`: what every user sees) and without it (its temperature undone,
    the LLM's raw softmax): the before/after of the checkpoint's temperature scaling."""
    labels = model.prompts.label_sets[label_set]
    t = model.calibration.row_temperatures(label_set, [p.voice_prior for p in preds])
    probs = np.array([[p.emotion_probs[lab] for lab in labels] for p in preds], float)
    y = [labels.index(g) for g in gold]
    raw = np.log(np.clip(probs, 1e-300, 1.0)) * t[:, None]
    raw = np.exp(raw - raw.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    voiced = sum(p.voice_prior for p in preds)
    return {"temperature": model.calibration.temperature(label_set),
            "temperature_voiced": model.calibration.temperature(label_set, voiced=True), "voiced_rows": voiced,
            "calibrated": calibration_report(probs, y), "uncalibrated": calibration_report(raw, y)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default", help="checkpoint file, or 'default' for the shipped one")
    ap.add_argument("--dataset", required=True, choices=EVAL_DATASETS + tuple(MMSA_DATASETS))
    ap.add_argument("--label-set", default=None, help="emotion labels offered (default: RAVDESS's own for ravdess, "
                    "MELD's seven otherwise; IEMOCAP's benchmarks: iemocap6, iemocap4); not for the MMSA data sets, "
                    "which are answered in their own sentiment-only label set")
    ap.add_argument("--mmsa-folder", default=None, help="converted MMSA folder (python -m egmf_core.data.mmsa "
                    "convert) for mosi/mosei/sims/simsv2; default <data dir>/mmsa/<dataset>")
    ap.add_argument("--split", default="test")
    ap.add_argument("--audio", choices=AUDIO_VIEWS, default="clip",
                    help="datasets with audio files: the whole clip (default, as the checkpoint was trained) or the "
                    "clip as the live segmenter cuts and frames it (what the model gets live)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N utterances")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None,
                    help="JSON report path (default benchmarks/results/eval_<dataset>_<split>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        t0 = time.perf_counter()
        model = load_checkpoint(args.checkpoint)
        examples = _cli_examples(model, args)
        preds = predict_examples(model, examples, args.batch_size, progress=True)
        result = {
            "checkpoint": str(args.checkpoint),
            "model_version": checkpoint_version(args.checkpoint, model.cfg.backbone.name),
            "dataset": args.dataset,
            "split": args.split,
            "label_set": examples[0].input.label_set,
            "audio": args.audio,
            "limit": args.limit,
            **report(model, examples, preds),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    except (CheckpointError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    live = "_live" if args.audio == "live" else ""
    out = Path(args.out or f"benchmarks/results/eval_{args.dataset}_{args.split}{live}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if "emotion_calibration" in result:
        cal = result["emotion_calibration"]
        reliability_diagram({"uncalibrated (T=1)": cal["uncalibrated"], f"calibrated ({temperatures(cal)})":
                             cal["calibrated"]}, str(out.with_suffix(".png")),
                            f"{args.dataset} {args.split} ({result['label_set']} labels)")
    if "sentiment_regression" in result:
        _print_regression(args.dataset, args.split, result["sentiment_regression"])
    else:
        _print_emotion(args.dataset, args.split, result)
    print(f"  gate alpha mean {np.round(result['gate']['alpha_mean'], 3).tolist()} entropy "
          f"{result['gate']['entropy_mean']:.3f} expert cosine {result['expert_cosine']:.3f}")
    print(f"  report: {out}")
    return 0


def _cli_examples(model: EGMFModel, args: argparse.Namespace) -> list[Example]:
    if args.dataset not in MMSA_DATASETS:
        return dataset_examples(model, args.dataset, args.split, args.limit, label_set=args.label_set,
                                audio_view=args.audio)
    if args.label_set is not None:
        raise ValueError(f"--label-set does not apply to {args.dataset}: it is answered in its own sentiment-only "
                         f"label set {args.dataset!r}")
    return mmsa_examples(model, open_mmsa(args.dataset, args.split, args.mmsa_folder), args.limit)


def _print_regression(dataset: str, split: str, r: dict) -> None:
    """MMSA's metrics in its names' order; MOSI/MOSEI and SIMS report different accuracies."""
    print(f"{dataset} {split}: n={r['n']} MAE {r['mae']:.4f} Corr {r['corr']:.4f}")
    if "acc7" in r:
        print(f"  Acc-2 has0 {r['acc2_has0']:.2f} F1 {r['f1_has0']:.2f} | non0 {r['acc2_non0']:.2f} "
              f"F1 {r['f1_non0']:.2f} (n={r['n_non0']}) | Acc-5 {r['acc5']:.2f} Acc-7 {r['acc7']:.2f}")
    else:
        print(f"  Acc-2 {r['acc2']:.2f} Acc-3 {r['acc3']:.2f} Acc-5 {r['acc5']:.2f} F1 {r['f1']:.2f}")


def temperatures(cal: dict) -> str:
    """The temperatures an `emotion_calibration` result applied, e.g. "T=2.51" or "T=2.51; voice-guided rows 3.11"."""
    voiced = cal.get("voiced_rows", 0) and cal.get("temperature_voiced", cal["temperature"]) != cal["temperature"]
    return f"T={cal['temperature']:.2f}" + (f"; voice-guided rows {cal['temperature_voiced']:.2f}" if voiced else "")


def _print_emotion(dataset: str, split: str, result: dict) -> None:
    emo = result["emotion"]
    print(f"{dataset} {split}: n={emo['n']} emotion acc {emo['accuracy']:.2f} weighted F1 {emo['weighted_f1']:.2f}")
    cal = result["emotion_calibration"]
    print(f"  ECE (15 bins) {cal['calibrated']['ece']:.3f} calibrated ({temperatures(cal)}), "
          f"{cal['uncalibrated']['ece']:.3f} uncalibrated; mean confidence {cal['calibrated']['mean_confidence']:.3f}")
    if "sentiment" in result:
        print(f"  sentiment acc {result['sentiment']['accuracy']:.2f} weighted F1 "
              f"{result['sentiment']['weighted_f1']:.2f} score MAE {result['sentiment_score']['mae']:.3f} r "
              f"{result['sentiment_score']['pearson']:.3f}")


if __name__ == "__main__":
    sys.exit(main())

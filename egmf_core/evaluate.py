"""`python -m egmf_core.evaluate --checkpoint <path|default> --dataset meld|ravdess|... --split test [--limit N]`.

Runs the fast scoring path over a dataset split and writes a JSON report: emotion accuracy / weighted F1 /
per-class F1 / confusion matrix, sentiment accuracy / weighted F1 and score MAE / correlation (MELD), RAVDESS's
8-class accuracy, and the paper's sanity checks (gate weights: mean and entropy; experts' mean pairwise cosine).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint
from .data import DatasetError, UtteranceRecord, load_dataset
from .examples import AudioLookup, Example, build_examples, text_length
from .metrics import classification_report, expert_similarity, gate_report, score_report
from .model import EGMFModel, Prediction

log = logging.getLogger(__name__)
# Datasets with labels to score (`egmf_core.data` also loads unlabelled media sets).
EVAL_DATASETS: tuple[str, ...] = ("meld", "ravdess", "meld_raw", "iemocap", "cherma")


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
    """Metrics for one dataset's examples (all of one label set)."""
    label_set = examples[0].input.label_set
    labels = model.prompts.label_sets[label_set]
    gold = [e.input.emotion for e in examples]
    out: dict = {"emotion": classification_report(gold, [p.emotion for p in preds], labels)}
    if label_set == "ravdess":
        to7 = lambda lab: "neutral" if lab == "calm" else lab  # noqa: E731
        out["emotion_7class"] = classification_report(
            [to7(g) for g in gold], [to7(p.emotion) for p in preds], model.cfg.task.emotions
        )
    with_sent = [(e, p) for e, p in zip(examples, preds) if e.input.sentiment is not None]
    if with_sent:
        s_gold = [model.prompts.sentiment_label(e.input.sentiment) for e, _ in with_sent]
        out["sentiment"] = classification_report(s_gold, [p.sentiment_label for _, p in with_sent], model.cfg.task.sentiments)
        out["sentiment_score"] = score_report([e.input.sentiment for e, _ in with_sent], [p.sentiment_score for _, p in with_sent])
    out["gate"] = gate_report(np.array([p.alpha for p in preds]))
    out["expert_cosine"] = expert_similarity(np.stack([p.expert_outputs for p in preds]))
    out["modalities"] = {m: int(sum(p.modalities[m] for p in preds)) for m in ("audio", "video", "text")}
    return out


def dataset_examples(
    model: EGMFModel,
    dataset: str,
    split: str,
    limit: int | None = None,
    audio: AudioLookup | None = None,
    label_set: str | None = None,
) -> list[Example]:
    """The labelled examples of a split. `label_set` defaults to RAVDESS's own for RAVDESS and MELD's seven
    otherwise; IEMOCAP's benchmarks are `iemocap6`/`iemocap4`, for a checkpoint whose config lists them.
    Unlabelled records (no emotion in the label set) are context for their successors but are not scored."""
    label_set = label_set or ("ravdess" if dataset == "ravdess" else "default")
    model.prompts.check_label_set(label_set)
    records: list[UtteranceRecord] = list(load_dataset(dataset, split))
    if limit is not None:
        records = records[:limit]  # a prefix keeps whole dialogues' past context intact
    if audio is None and any(r.audio_path for r in records):
        audio = whisper_audio_lookup()
    examples = build_examples(records, model.prompts, audio=audio, label_set=label_set)
    labelled = [e for e in examples if e.input.emotion is not None]
    if not labelled:
        raise DatasetError(f"{dataset} {split}: no utterance has a label in the label set {label_set!r}")
    if len(labelled) < len(examples):
        log.info("%s %s: %d unlabelled utterances kept as context only", dataset, split, len(examples) - len(labelled))
    return labelled


def whisper_audio_lookup() -> AudioLookup:
    """Audio features of a record's file: Whisper encoder states through the on-disk feature cache."""
    from .features.audio import WhisperFrontend
    from .features.cache import FeatureCache

    frontend, cache = WhisperFrontend(), FeatureCache()
    return lambda rec: frontend.encoder_states_file(rec.audio_path, cache) if rec.audio_path else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default", help="checkpoint file, or 'default' for the shipped one")
    ap.add_argument("--dataset", required=True, choices=EVAL_DATASETS)
    ap.add_argument("--label-set", default=None, help="emotion labels offered (default: RAVDESS's own for ravdess, "
                    "MELD's seven otherwise; IEMOCAP's benchmarks: iemocap6, iemocap4)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N utterances")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="JSON report path (default benchmarks/results/eval_<dataset>_<split>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        t0 = time.perf_counter()
        model = load_checkpoint(args.checkpoint)
        examples = dataset_examples(model, args.dataset, args.split, args.limit, label_set=args.label_set)
        preds = predict_examples(model, examples, args.batch_size, progress=True)
        result = {
            "checkpoint": str(args.checkpoint),
            "dataset": args.dataset,
            "split": args.split,
            "label_set": examples[0].input.label_set,
            "limit": args.limit,
            **report(model, examples, preds),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    except (CheckpointError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"benchmarks/results/eval_{args.dataset}_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    emo = result["emotion"]
    print(f"{args.dataset} {args.split}: n={emo['n']} emotion acc {emo['accuracy']:.2f} weighted F1 {emo['weighted_f1']:.2f}")
    if "sentiment" in result:
        print(f"  sentiment acc {result['sentiment']['accuracy']:.2f} weighted F1 {result['sentiment']['weighted_f1']:.2f}"
              f" score MAE {result['sentiment_score']['mae']:.3f} r {result['sentiment_score']['pearson']:.3f}")
    print(f"  gate alpha mean {np.round(result['gate']['alpha_mean'], 3).tolist()} entropy {result['gate']['entropy_mean']:.3f}"
          f" expert cosine {result['expert_cosine']:.3f}")
    print(f"  report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

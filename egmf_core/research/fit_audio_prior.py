"""`python -m egmf_core.research.fit_audio_prior --checkpoint CKPT --out CKPT_WITH_PRIOR`: fit the voice prior.

The prior (`egmf_core.audio_prior`) is a logistic regression on the mean and spread of an utterance's Whisper
encoder states, whose log-probabilities guide the LLM's emotion answer with a strength per label set. Every choice is
made without the test actors (13-16):

1. Regularization C: leave-two-actors-out cross-validation over RAVDESS actors 01-12 (six folds), trained on each
   fold's other actors' live cuts (clean, plus the channel-degraded copies training made for 01-10), scored on the
   held-out actors' clean live cuts; the C with the best mean accuracy wins.
2. Strength per label set: on the dev actors 11-12, which neither the LLM nor a prior trained on 01-10 has heard, the
   LLM's raw first-answer-token log-probabilities plus strength x the prior's; the strength with the best accuracy
   (ties: the smaller) on a grid. `ravdess`: its eight labels; `default` (what the CLI and the service answer):
   MELD's seven, calm counted as neutral.
3. The prior that ships is the one trained on 01-10 (step 2's): the dev actors stay unheard by it, so the
   confidence calibration fitted next on them (`egmf_core.research.fit_calibration`) sees the prior as it meets new speakers.
   (Refit on 01-12, the prior scored 91.7 % on the dev actors it had then heard, and temperatures fitted there left
   RAVDESS test ECE at 0.25.)

The written checkpoint is a copy of `--checkpoint` with the prior in its metadata (tensors byte for byte). Its
confidence calibration, if any, was fitted without the prior: run `python -m egmf_core.research.fit_calibration` on the
result afterwards (scripts/train_default.sh does). The report (`--report`, JSON + markdown) has every fold and grid
point.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio_prior import METADATA_KEY, AudioPrior, voice_statistics
from ..calibration import Calibration
from ..checkpoint import load_checkpoint, read_file, write_file
from .evaluate import dataset_examples, whisper_audio_lookup
from .examples import Example
from .fit_calibration import RAVDESS_TO_DEFAULT, as_default_label_set, label_log_probs

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
STRENGTH_GRID = tuple(round(0.25 * k, 2) for k in range(17))  # 0 .. 4
#: The actors that choose the strengths (RAVDESS's dev split): neither the LLM nor the dev prior trained on them.
DEV_ACTORS = ("11", "12")


def actor_of(e: Example) -> str:
    """The RAVDESS actor of an example (two digits), from its file name (03-01-05-01-02-01-12.wav: the last field)."""
    return Path(e.record.audio_path).stem.split("-")[-1]


def design(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Voice statistics and labels of the examples that have audio."""
    kept = [e for e in examples if e.input.audio is not None and len(e.input.audio)]
    return np.stack([voice_statistics(e.input.audio) for e in kept]), np.array([e.input.emotion for e in kept])


def fit_prior(x: np.ndarray, y: np.ndarray, c: float, labels: Sequence[str]) -> AudioPrior:
    """Standardize, then a multinomial logistic regression with inverse regularization `c`."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=3000).fit((x - mean) / scale, y)
    order = [list(clf.classes_).index(lab) for lab in labels]
    return AudioPrior(tuple(labels), mean.astype(np.float32), scale.astype(np.float32),
                      clf.coef_[order].astype(np.float32), clf.intercept_[order].astype(np.float32),
                      merge=dict(RAVDESS_TO_DEFAULT))


def prior_accuracy(prior: AudioPrior, x: np.ndarray, y: np.ndarray) -> float:
    z = (x - prior.mean) / prior.scale
    pred = np.array(prior.labels)[np.argmax(z @ prior.weight.T + prior.bias, axis=1)]
    return float((pred == y).mean() * 100)


def prior_log_probs(prior: AudioPrior, examples: Sequence[Example], labels: Sequence[str]) -> np.ndarray:
    return np.stack([prior.label_log_probs(e.input.audio, labels) for e in examples])


def best_strength(llm_lp: np.ndarray, prior_lp: np.ndarray, gold: np.ndarray) -> tuple[float, dict[str, float]]:
    """Grid search: accuracy (%) of argmax(llm + s * prior) per strength; the best (smallest on ties)."""
    acc = {str(s): float((np.argmax(llm_lp + s * prior_lp, axis=1) == gold).mean() * 100) for s in STRENGTH_GRID}
    best = max(STRENGTH_GRID, key=lambda s: (round(acc[str(s)], 6), -s))
    return best, acc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.fit_audio_prior", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--out", required=True, help="the checkpoint to write (may equal --checkpoint)")
    ap.add_argument("--degraded-copies", type=int, default=2,
                    help="channel-degraded copies of each training clip (egmf_core.research.degrade.random_chain k), 0 = none")
    ap.add_argument("--report", default="benchmarks/results/audio_prior_fit", help="report path without extension")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model = load_checkpoint(args.checkpoint)
    model.audio_prior, model.calibration = None, Calibration()  # the LLM's raw answers
    labels = list(model.prompts.label_sets["ravdess"])
    lufs = model.cfg.fusion.audio_loudness_lufs

    print("live-cut features of RAVDESS 01-12 ...", file=sys.stderr, flush=True)
    clean = {split: dataset_examples(model, "ravdess", split, audio_view="live") for split in ("train", "dev")}
    copies = [dataset_examples(model, "ravdess", split, label_set="ravdess",
                               audio=whisper_audio_lookup("live", lufs, degradation=f"random:{k}"))
              for k in range(args.degraded_copies) for split in ("train", "dev")]
    pool_clean = [e for split in clean.values() for e in split if e.input.audio is not None]
    pool_copies = [e for c in copies for e in c if e.input.audio is not None]
    actors = sorted({actor_of(e) for e in pool_clean})
    folds = [actors[i:i + 2] for i in range(0, len(actors), 2)]

    # 1. C by leave-two-actors-out cross-validation
    cv: dict[str, list[float]] = {}
    for c in C_GRID:
        for held in folds:
            train = [e for e in pool_clean + pool_copies if actor_of(e) not in held]
            test = [e for e in pool_clean if actor_of(e) in held]
            prior = fit_prior(*design(train), c, labels)
            cv.setdefault(str(c), []).append(prior_accuracy(prior, *design(test)))
        print(f"  C={c}: fold accuracies {[round(a, 1) for a in cv[str(c)]]}", file=sys.stderr, flush=True)
    best_c = max(C_GRID, key=lambda c: float(np.mean(cv[str(c)])))

    # 2. strengths on the dev actors, with a prior that has not heard them
    dev = [e for e in clean["dev"] if e.input.audio is not None]
    train_01_10 = [e for e in pool_clean + pool_copies if actor_of(e) not in DEV_ACTORS]
    dev_prior = fit_prior(*design(train_01_10), best_c, labels)
    print("scoring the dev actors with the LLM ...", file=sys.stderr, flush=True)
    strengths, grids = {}, {}
    for name, examples in (("ravdess", dev), ("default", as_default_label_set(dev))):
        set_labels = model.prompts.label_sets[name]
        llm_lp, gold = label_log_probs(model, examples)
        strengths[name], grids[name] = best_strength(llm_lp, prior_log_probs(dev_prior, examples, set_labels), gold)

    # 3. the shipped prior: step 2's, which has not heard the dev actors that calibration is fitted on
    n_clean = sum(actor_of(e) not in DEV_ACTORS for e in pool_clean)
    prior = AudioPrior(dev_prior.labels, dev_prior.mean, dev_prior.scale, dev_prior.weight, dev_prior.bias, strengths,
                       dev_prior.merge, f"RAVDESS actors 01-10 live cuts ({n_clean} clean + "
                       f"{len(train_01_10) - n_clean} degraded); C={best_c} by leave-two-actors-out CV over 01-12; "
                       "strengths on actors 11-12")
    tensors, meta = read_file(args.checkpoint)
    meta[METADATA_KEY] = prior.to_json()
    out = write_file(tensors, meta, args.out)

    report = {"checkpoint": str(args.checkpoint), "out": str(out), "c": best_c, "strength": strengths,
              "cv_accuracy": cv, "folds": folds, "dev_prior_accuracy": prior_accuracy(dev_prior, *design(dev)),
              "strength_grid_accuracy": grids, "clips": {"clean": len(pool_clean), "degraded": len(pool_copies)},
              "seconds": round(time.perf_counter() - t0, 1)}
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Voice prior fit (RAVDESS actors 01-12; no test actor)", "",
             f"`python -m egmf_core.research.fit_audio_prior --checkpoint {args.checkpoint} --out {args.out}`; "
             f"{report['seconds']:.0f} s.", "",
             "Leave-two-actors-out accuracy (8-class, clean live cuts of the held-out actors) per C:", "",
             "| C | " + " | ".join("actors " + "+".join(f) for f in folds) + " | mean |",
             "|---|" + "---|" * (len(folds) + 1)]
    for c, accs in cv.items():
        mark = " (chosen)" if float(c) == best_c else ""
        lines.append(f"| {c}{mark} | " + " | ".join(f"{a:.1f}" for a in accs) + f" | {np.mean(accs):.2f} |")
    lines += ["", f"Dev actors 11-12 (prior trained on 01-10: {report['dev_prior_accuracy']:.2f} % alone): accuracy of "
              "argmax(LLM log-prob + strength x prior log-prob):", "",
              "| strength | " + " | ".join(f"{name} labels" for name in grids) + " |", "|---|" + "---|" * len(grids)]
    for s in STRENGTH_GRID:
        lines.append(f"| {s:g} | " + " | ".join(f"{grids[n][str(s)]:.2f}" for n in grids) + " |")
    lines += ["", f"Chosen: C = {best_c}, strengths {strengths}."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"checkpoint with the voice prior: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

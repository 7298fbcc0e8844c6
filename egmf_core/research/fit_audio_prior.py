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
3. The prior written is the one trained on 01-10 (step 2's): the dev actors stay unheard by it, so the familiar-voice
   threshold and the confidence calibration fitted next on them (`egmf_core.research.fit_voice_domain`,
   `egmf_core.research.fit_calibration`) see the prior as it meets new speakers. (Refit on 01-12 before calibrating,
   the prior scored 91.7 % on the dev actors it had then heard, and temperatures fitted there left RAVDESS test ECE
   at 0.25.)
4. `--refit-all-actors`, last, on a checkpoint that has steps 1-3, the domain and the calibration: the classifier
   refit on every actor the recipe allows (01-12, clean + degraded copies) with C chosen again by step 1, in the
   prior's own standardized coordinates, so its strengths, familiar-voice domain and the temperatures (all fitted
   where the speakers were unheard) stay as they are: the cross-fitting way to use the dev actors for training too.
   Why more actors: the learning curve in the report (held-out accuracy of priors trained on 8 vs 10 actors, the
   same held-out pairs) says what two more speakers are worth; the LLM is not run.

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
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio_prior import METADATA_KEY, AudioPrior, voice_statistics
from ..calibration import Calibration
from ..checkpoint import load_checkpoint, read_audio_prior, read_file, write_file
from .eval_examples import dataset_examples
from .feature_lookup import whisper_audio_lookup
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


def fit_classifier(z: np.ndarray, y: np.ndarray, c: float, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Weight (C, d) and bias (C,), rows in `labels` order: a multinomial logistic regression with inverse
    regularization `c` on standardized statistics `z`."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=3000).fit(z, y)
    order = [list(clf.classes_).index(lab) for lab in labels]
    return clf.coef_[order].astype(np.float32), clf.intercept_[order].astype(np.float32)


def fit_prior(x: np.ndarray, y: np.ndarray, c: float, labels: Sequence[str]) -> AudioPrior:
    """Standardize by the pool's own statistics, then `fit_classifier`."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    weight, bias = fit_classifier((x - mean) / scale, y, c, labels)
    return AudioPrior(tuple(labels), mean.astype(np.float32), scale.astype(np.float32), weight, bias,
                      merge=dict(RAVDESS_TO_DEFAULT))


def refit_on(prior: AudioPrior, x: np.ndarray, y: np.ndarray, c: float, fitted_on: str) -> AudioPrior:
    """Step 4: the classifier refit on `x`, `y` in `prior`'s standardized coordinates; every other field kept."""
    weight, bias = fit_classifier((x - prior.mean) / prior.scale, y, c, prior.labels)
    return replace(prior, weight=weight, bias=bias, fitted_on=fitted_on)


def learning_curve(pool: Sequence[Example], folds: Sequence[Sequence[str]], c: float,
                   labels: Sequence[str], clean: Sequence[Example]) -> dict[str, list[float]]:
    """Held-out accuracy per fold of priors trained on all other actors vs on all but one more pair (the next fold):
    what two more training speakers are worth, on the same held-out actors."""
    curve: dict[str, list[float]] = {}
    for i, held in enumerate(folds):
        test = design([e for e in clean if actor_of(e) in held])
        dropped = folds[(i + 1) % len(folds)]
        for out in (set(held) | set(dropped), set(held)):
            train = [e for e in pool if actor_of(e) not in out]
            n_actors = len({actor_of(e) for e in train})
            curve.setdefault(f"{n_actors} actors", []).append(prior_accuracy(fit_prior(*design(train), c, labels),
                                                                              *test))
    return curve


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
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.fit_audio_prior",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--out", required=True, help="the checkpoint to write (may equal --checkpoint)")
    ap.add_argument("--degraded-copies", type=int, default=2,
                    help="channel-degraded copies of each training clip "
                         "(egmf_core.research.degrade.random_chain k), 0 = none")
    ap.add_argument("--refit-all-actors", action="store_true",
                    help="step 4: refit the checkpoint's prior on actors 01-12, keeping its strengths, domain and "
                         "calibration (run after fit_voice_domain and fit_calibration)")
    ap.add_argument("--report", default="benchmarks/results/audio_prior_fit", help="report path without extension")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    existing = read_audio_prior(args.checkpoint) if args.refit_all_actors else None
    if args.refit_all_actors and existing is None:
        raise SystemExit(f"{args.checkpoint}: --refit-all-actors needs a checkpoint with a voice prior (steps 1-3)")
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
    report: dict = {"checkpoint": str(args.checkpoint), "c": best_c, "cv_accuracy": cv, "folds": folds,
                    "clips": {"clean": len(pool_clean), "degraded": len(pool_copies)}}

    if existing is not None:
        # 4. every allowed actor, in the existing prior's coordinates; strengths, domain, calibration kept
        curve = learning_curve(pool_clean + pool_copies, folds, best_c, labels, pool_clean)
        prior = refit_on(existing, *design(pool_clean + pool_copies), best_c,
                         f"RAVDESS actors {actors[0]}-{actors[-1]} live cuts ({len(pool_clean)} clean + "
                         f"{len(pool_copies)} degraded); C={best_c} by leave-two-actors-out CV; standardization, "
                         f"strengths, domain and calibration from the prior fitted on 01-10 "
                         f"({existing.fitted_on})")
        report.update(step="refit on all actors", learning_curve=curve,
                      train_accuracy=prior_accuracy(prior, *design(pool_clean)))
        strengths = prior.strength
    else:
        # 2. strengths on the dev actors, with a prior that has not heard them
        dev = [e for e in clean["dev"] if e.input.audio is not None]
        train_01_10 = [e for e in pool_clean + pool_copies if actor_of(e) not in DEV_ACTORS]
        dev_prior = fit_prior(*design(train_01_10), best_c, labels)
        print("scoring the dev actors with the LLM ...", file=sys.stderr, flush=True)
        strengths, grids = {}, {}
        for name, examples in (("ravdess", dev), ("default", as_default_label_set(dev))):
            set_labels = model.prompts.label_sets[name]
            llm_lp, gold, _ = label_log_probs(model, examples)
            strengths[name], grids[name] = best_strength(llm_lp, prior_log_probs(dev_prior, examples, set_labels), gold)

        # 3. the prior written: step 2's, which has not heard the dev actors that calibration is fitted on
        n_clean = sum(actor_of(e) not in DEV_ACTORS for e in pool_clean)
        prior = replace(dev_prior, strength=strengths,
                        fitted_on=f"RAVDESS actors 01-10 live cuts ({n_clean} clean + {len(train_01_10) - n_clean} "
                                  f"degraded); C={best_c} by leave-two-actors-out CV over 01-12; strengths on actors "
                                  "11-12")
        report.update(step="fit on 01-10", strength=strengths, strength_grid_accuracy=grids,
                      dev_prior_accuracy=prior_accuracy(dev_prior, *design(dev)))
    tensors, meta = read_file(args.checkpoint)
    meta[METADATA_KEY] = prior.to_json()
    out = write_file(tensors, meta, args.out)
    report.update(out=str(out), seconds=round(time.perf_counter() - t0, 1))
    write_report(args, report, strengths)
    print(f"checkpoint with the voice prior: {out}")
    return 0


def write_report(args: argparse.Namespace, report: dict, strengths: dict[str, float]) -> None:
    """The report as JSON and markdown (`--report` without extension), and the markdown on stdout."""
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    command = " ".join(["python -m egmf_core.research.fit_audio_prior", "--checkpoint", str(args.checkpoint),
                        "--out", str(args.out)] + (["--refit-all-actors"] if args.refit_all_actors else []))
    folds, cv, best_c = report["folds"], report["cv_accuracy"], report["c"]
    lines = ["# Voice prior fit (RAVDESS actors 01-12; no test actor)", "",
             f"`{command}`; {report['seconds']:.0f} s.", "",
             "Leave-two-actors-out accuracy (8-class, clean live cuts of the held-out actors) per C:", "",
             "| C | " + " | ".join("actors " + "+".join(f) for f in folds) + " | mean |",
             "|---|" + "---|" * (len(folds) + 1)]
    for c, accs in cv.items():
        mark = " (chosen)" if float(c) == best_c else ""
        lines.append(f"| {c}{mark} | " + " | ".join(f"{a:.1f}" for a in accs) + f" | {np.mean(accs):.2f} |")
    if "learning_curve" in report:
        lines += ["", f"Learning curve at C = {best_c}: held-out accuracy of the same actor pairs, the prior trained "
                  "on every other actor or on all but one more pair:", "",
                  "| trained on | " + " | ".join("actors " + "+".join(f) for f in folds) + " | mean |",
                  "|---|" + "---|" * (len(folds) + 1)]
        for n, accs in report["learning_curve"].items():
            lines.append(f"| {n} | " + " | ".join(f"{a:.1f}" for a in accs) + f" | {np.mean(accs):.2f} |")
        lines += ["", f"Refit on all {report['clips']['clean']} clean + {report['clips']['degraded']} degraded clips "
                  f"of actors 01-12 (training accuracy on the clean ones {report['train_accuracy']:.2f} %); "
                  f"strengths {strengths}, familiar-voice domain and calibration kept."]
    else:
        grids = report["strength_grid_accuracy"]
        lines += ["", f"Dev actors 11-12 (prior trained on 01-10: {report['dev_prior_accuracy']:.2f} % alone): "
                  "accuracy of argmax(LLM log-prob + strength x prior log-prob):", "",
                  "| strength | " + " | ".join(f"{name} labels" for name in grids) + " |",
                  "|---|" + "---|" * len(grids)]
        for s in STRENGTH_GRID:
            lines.append(f"| {s:g} | " + " | ".join(f"{grids[n][str(s)]:.2f}" for n in grids) + " |")
        lines += ["", f"Chosen: C = {best_c}, strengths {strengths}."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

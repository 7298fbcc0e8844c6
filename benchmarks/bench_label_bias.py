"""Would per-class logit biases raise MELD's weighted F1? `python benchmarks/bench_label_bias.py`.

The shipped model under-predicts sadness and over-predicts neutral and surprise on MELD, so a bias per label on the
text-led answers (label = argmax(calibrated log-probabilities + b)) is the cheapest candidate for MELD's weighted F1,
which issue 25 asks to raise. This benchmark decides whether it carries to unseen dialogues before anything ships:
MELD dev is scored once with the shipped checkpoint, then split into folds (5 folds x 5 shuffles); on each, biases are
fitted on the other folds and the held-out fold's weighted F1 is compared with and without them. Two families:

- ``free``: one bias per label (neutral fixed at 0), coordinate ascent on weighted F1 over a grid of -1.5..1.5;
- ``prior shift``: b = lambda x (log gold frequency - log mean predicted probability), one parameter.

The test split is never read. Results: ``--out`` (.json + .md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import write_table_report  # noqa: E402  (benchmarks/ is on the path above)
from egmf_core.research.metrics import weighted_f1  # noqa: E402

GRID = np.round(np.arange(-1.5, 1.51, 0.1), 2)
LAMBDAS = np.round(np.arange(0.0, 2.01, 0.1), 2)
FOLDS, SHUFFLES = 5, 5


def fit_free(log_p: np.ndarray, gold: np.ndarray, fixed: int, rounds: int = 3) -> np.ndarray:
    """One bias per label (label `fixed` stays 0), coordinate ascent on weighted F1."""
    b = np.zeros(log_p.shape[1])
    for _ in range(rounds):
        for c in range(log_p.shape[1]):
            if c == fixed:
                continue
            best, best_v = weighted_f1(gold, (log_p + b).argmax(1)), b[c]
            for v in GRID:
                trial = b.copy()
                trial[c] = v
                score = weighted_f1(gold, (log_p + trial).argmax(1))
                if score > best + 1e-9:
                    best, best_v = score, v
            b[c] = best_v
    return b


def fit_prior_shift(log_p: np.ndarray, gold: np.ndarray, fixed: int) -> np.ndarray:
    """b = lambda x (log gold frequency - log mean predicted probability), lambda by weighted F1."""
    freq = np.bincount(gold, minlength=log_p.shape[1]) / len(gold)
    direction = np.log(freq + 1e-3) - np.log(np.exp(log_p).mean(axis=0))
    lam = max(LAMBDAS, key=lambda v: (weighted_f1(gold, (log_p + v * direction).argmax(1)), -v))
    return lam * direction


FAMILIES: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {"free": fit_free,
                                                                             "prior shift": fit_prior_shift}


def cross_validate(log_p: np.ndarray, gold: np.ndarray, fixed: int, fit, seed: int = 0) -> dict:
    """Held-out weighted F1 without and with biases fitted on the other folds, per fold of every shuffle."""
    rng = np.random.default_rng(seed)
    base, adjusted = [], []
    for _ in range(SHUFFLES):
        folds = np.array_split(rng.permutation(len(gold)), FOLDS)
        for k in range(FOLDS):
            held = folds[k]
            train = np.concatenate([folds[j] for j in range(FOLDS) if j != k])
            b = fit(log_p[train], gold[train], fixed)
            base.append(weighted_f1(gold[held], log_p[held].argmax(1)))
            adjusted.append(weighted_f1(gold[held], (log_p[held] + b).argmax(1)))
    gain = np.array(adjusted) - np.array(base)
    return {"held_out_without": float(np.mean(base)), "held_out_with": float(np.mean(adjusted)),
            "gain": float(gain.mean()), "gain_se": float(gain.std(ddof=1) / np.sqrt(len(gain))),
            "folds_gaining": int((gain > 0).sum()), "folds": len(gain)}


def markdown(result: dict) -> str:
    lines = ["# Per-label logit biases for MELD's text-led answers (cross-validated on MELD dev)", "",
             f"`{result['command']}`, {result['date']}. MELD dev ({result['n']} utterances) scored once with the "
             f"shipped checkpoint (weighted F1 {result['dev_weighted_f1']:.2f}); {FOLDS} folds x {SHUFFLES} "
             "shuffles, biases fitted on the other folds. Gold / predicted counts: "
             + ", ".join(f"{lab} {g}/{p}" for lab, g, p in zip(result["labels"], result["gold_counts"],
                                                             result["pred_counts"])) + ".", "",
             "| family | held-out wF1 without | with | gain (+- s.e.) | folds gaining | fitted on all of dev |",
             "|---|---|---|---|---|---|"]
    for name, r in result["families"].items():
        lines.append(f"| {name} | {r['held_out_without']:.2f} | {r['held_out_with']:.2f} | {r['gain']:+.2f} "
                     f"(+- {r['gain_se']:.2f}) | {r['folds_gaining']}/{r['folds']} | "
                     + ", ".join(f"{lab} {v:+.1f}" for lab, v in zip(result["labels"], r["bias_all_dev"])) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--limit", type=int, default=None, help="first N MELD dev utterances (smoke runs)")
    ap.add_argument("--out", default="benchmarks/results/label_bias")
    args = ap.parse_args(argv)
    from egmf_core.checkpoint import load_checkpoint
    from egmf_core.research.eval_examples import dataset_examples
    from egmf_core.research.fit_calibration import label_log_probs

    model = load_checkpoint(args.checkpoint)
    examples = dataset_examples(model, "meld", "dev", args.limit)
    labels = list(model.prompts.label_sets["default"])
    log_p, gold, voiced = label_log_probs(model, examples)
    if voiced.any():
        raise SystemExit("MELD dev rows came out voice-led: this benchmark is about the text-led answers")
    fixed = labels.index("neutral")
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n": int(len(gold)),
                    "labels": labels, "dev_weighted_f1": weighted_f1(gold, log_p.argmax(1)),
                    "gold_counts": np.bincount(gold, minlength=len(labels)).tolist(),
                    "pred_counts": np.bincount(log_p.argmax(1), minlength=len(labels)).tolist(), "families": {}}
    for name, fit in FAMILIES.items():
        r = cross_validate(log_p, gold, fixed, fit)
        r["bias_all_dev"] = [float(v) for v in fit(log_p, gold, fixed)]
        result["families"][name] = r
        print(f"{name}: gain {r['gain']:+.2f} +- {r['gain_se']:.2f}", file=sys.stderr, flush=True)
    write_table_report(Path(args.out), result, markdown, "bench_label_bias.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

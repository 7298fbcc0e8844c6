"""The dev evaluation after every epoch and the selection score that picks the best checkpoint.

The selection score is the mean of MELD dev weighted F1, RAVDESS dev accuracy and each further dev set's part
(emotion weighted F1, or an MMSA benchmark's Acc-2); a fusion-only stage selects on the auxiliary head's accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model import EGMFModel
from .evaluate import MMSA_SCORING, predict_examples, report
from .examples import Example

__all__ = ["evaluate_dev", "evaluate_aux", "summary_line", "compact_results"]


def evaluate_dev(model: EGMFModel, dev: dict[str, list[Example]], batch_size: int) -> dict:
    model.eval()
    results = {}
    for name, examples in dev.items():
        preds = predict_examples(model, examples, batch_size)
        results[name] = report(model, examples, preds)
    model.train()
    parts = []
    if "meld" in results:
        parts.append(results["meld"]["emotion"]["weighted_f1"])
    if "ravdess" in results:
        parts.append(results["ravdess"]["emotion"]["accuracy"])
    parts += [_dev_part(name, r) for name, r in results.items() if name not in ("meld", "ravdess")]
    results["selection_score"] = float(np.mean(parts))
    return results


def _dev_part(name: str, result: dict) -> float:
    """A further dev set's part of the selection score, in percent: emotion weighted F1, or an MMSA benchmark's
    Acc-2."""
    if "sentiment_regression" in result:
        return result["sentiment_regression"][MMSA_SCORING[name].selection]
    return result["emotion"]["weighted_f1"]


@torch.no_grad()
def evaluate_aux(model: EGMFModel, dev: dict[str, list[Example]]) -> dict:
    """Dev accuracy of the auxiliary emotion head (fusion-only stage)."""
    model.eval()
    results: dict = {}
    for name, examples in dev.items():
        correct = 0
        for b in range(0, len(examples), 64):
            batch = [e.input for e in examples[b : b + 64]]
            fusion, _ = model.run_fusion(batch)
            pred = model.fusion.aux_head(fusion.enhanced).argmax(-1).tolist()
            correct += sum(model.aux_labels[p] == x.emotion for p, x in zip(pred, batch))
        results[name] = {"aux_accuracy": 100.0 * correct / len(examples)}
    model.train()
    results["selection_score"] = float(np.mean([r["aux_accuracy"] for r in results.values()]))
    return results


def summary_line(results: dict) -> str:
    """One line for the log: each dev set's scores and the selection score."""
    if all("aux_accuracy" in r for k, r in results.items() if k != "selection_score"):
        accs = ", ".join(f"{k} aux acc {r['aux_accuracy']:.2f}" for k, r in results.items() if k != "selection_score")
        return f"{accs} (selection {results['selection_score']:.2f})"
    out = []
    if "meld" in results:
        out.append(f"MELD dev wF1 {results['meld']['emotion']['weighted_f1']:.2f} sentiment wF1 "
                   f"{results['meld']['sentiment']['weighted_f1']:.2f}")
    if "ravdess" in results:
        out.append(f"RAVDESS dev acc8 {results['ravdess']['emotion']['accuracy']:.2f}")
    out += [_dev_summary(name, r) for name, r in results.items() if name not in ("meld", "ravdess", "selection_score")]
    return "; ".join(out) + f" (selection {results['selection_score']:.2f})"


def _dev_summary(name: str, result: dict) -> str:
    if "sentiment_regression" in result:
        r = result["sentiment_regression"]
        key = MMSA_SCORING[name].selection
        return f"{name} dev MAE {r['mae']:.3f} corr {r['corr']:.3f} {key} {r[key]:.2f}"
    return f"{name} dev wF1 {result['emotion']['weighted_f1']:.2f}"


def compact_results(results: dict) -> dict:
    """The dev results kept in a best checkpoint's metadata: the selection score and each set's headline scores."""
    out = {"selection_score": results["selection_score"]}
    for name in ("meld", "ravdess"):
        if name in results and "aux_accuracy" in results[name]:
            out[name] = {"aux_accuracy": results[name]["aux_accuracy"]}
        elif name in results:
            out[name] = {"emotion_wf1": results[name]["emotion"]["weighted_f1"],
                         "emotion_acc": results[name]["emotion"]["accuracy"]}
    for name, r in results.items():
        if isinstance(r, dict) and "sentiment_regression" in r:
            reg = r["sentiment_regression"]
            out[name] = {key: reg[key] for key in ("mae", "corr", MMSA_SCORING[name].selection)}
    return out

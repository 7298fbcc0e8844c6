"""Evaluation metrics: classification scores plus the paper's own sanity checks on the gate and the experts."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, weighted F1 (in percent, as the field reports them), per-class F1 and the confusion matrix."""
    labels = list(labels)
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": 100.0 * accuracy_score(y_true, y_pred),
        "weighted_f1": 100.0 * f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0),
        "per_class_f1": {lab: 100.0 * float(f) for lab, f in zip(labels, per_class)},
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def score_report(targets: Sequence[float], scores: Sequence[float]) -> dict:
    """MAE and Pearson correlation of predicted sentiment scores against the -1/0/+1 targets."""
    t, s = np.asarray(targets, float), np.asarray(scores, float)
    ok = np.isfinite(s)
    t, s = t[ok], s[ok]
    corr = float(np.corrcoef(t, s)[0, 1]) if len(t) > 1 and t.std() > 0 and s.std() > 0 else float("nan")
    return {"n": int(ok.sum()), "unparsed": int((~ok).sum()), "mae": float(np.abs(t - s).mean()) if len(t) else float("nan"), "pearson": corr}


def gate_report(alphas: np.ndarray) -> dict:
    """Mean gate weights and mean per-utterance entropy (nats); a collapsed gate has entropy ~0, a useless one ~ln 3."""
    a = np.asarray(alphas, float)
    entropy = -(a * np.log(np.clip(a, 1e-12, 1.0))).sum(axis=1)
    return {
        "alpha_mean": a.mean(axis=0).tolist(),
        "alpha_std": a.std(axis=0).tolist(),
        "entropy_mean": float(entropy.mean()),
        "entropy_max": math.log(a.shape[1]),
    }


def expert_similarity(expert_outputs: np.ndarray) -> float:
    """Mean pairwise cosine similarity of the experts' outputs (B, E, d): near 1 means the experts are redundant."""
    x = np.asarray(expert_outputs, float)
    x = x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)
    sims = [float((x[:, i] * x[:, j]).sum(-1).mean()) for i in range(x.shape[1]) for j in range(i + 1, x.shape[1])]
    return float(np.mean(sims))

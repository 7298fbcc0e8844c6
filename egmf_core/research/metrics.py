"""Evaluation metrics: classification scores plus the paper's own sanity checks on the gate and the experts."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def weighted_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Weighted F1 in percent of label indices (decision-rule searches over log-probability arrays)."""
    return float(100.0 * f1_score(gold, pred, average="weighted"))


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
    return {"n": int(ok.sum()), "unparsed": int((~ok).sum()),
            "mae": float(np.abs(t - s).mean()) if len(t) else float("nan"), "pearson": corr}


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


# --- MMSA-style regression metrics (CMU-MOSI / CMU-MOSEI / CH-SIMS) --------------------------------------------------
#
# Published numbers on these benchmarks come from the MMSA toolkit's `MetricsTop` (thuiar/MMSA,
# src/MMSA/utils/metricsTop.py), so these functions follow it line by line, conventions included, rather than a
# "cleaner" definition that would make our numbers incomparable. MMSA receives float32 tensors, so thresholds and
# rounding are applied to float32 values here too; MAE and correlation are computed in float64. MMSA rounds results
# to 4 decimals for printing; these return unrounded floats. Accuracies and F1 are in percent, MAE and correlation raw.


def _regression_inputs(preds: Sequence[float], labels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Flatten to float32 and refuse what MMSA would silently mis-score: unequal lengths, empty or non-finite input.

    Non-finite predictions (e.g. unparsed model outputs) are rejected rather than dropped, because dropping them
    would score a model only on the clips it managed to answer.
    """
    p = np.asarray(preds, dtype=np.float32).reshape(-1)
    t = np.asarray(labels, dtype=np.float32).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"preds has {p.size} values but labels has {t.size}")
    if p.size == 0:
        raise ValueError("preds and labels are empty")
    for name, x in (("preds", p), ("labels", t)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} has {int((~np.isfinite(x)).sum())} non-finite values")
    return p, t


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    """`np.corrcoef(p, t)[0, 1]` as MMSA computes it, but nan (without a warning) when either side is constant."""
    p, t = p.astype(np.float64), t.astype(np.float64)
    if p.size < 2 or p.std() == 0 or t.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, t)[0, 1])


def _binary_scores(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and weighted F1 in percent; nan for an empty set (MMSA itself would crash there)."""
    if truth.size == 0:
        return float("nan"), float("nan")
    acc = 100.0 * accuracy_score(truth, pred)
    return acc, 100.0 * f1_score(truth, pred, average="weighted", zero_division=0)


def _multiclass_acc(pred: np.ndarray, truth: np.ndarray) -> float:
    """MMSA's `__multiclass_acc`: both sides `np.round`ed (half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2), in percent."""
    return 100.0 * float(np.mean(np.round(pred) == np.round(truth)))


def mosei_regression_report(preds: Sequence[float], labels: Sequence[float]) -> dict:
    """CMU-MOSI / CMU-MOSEI sentiment metrics exactly as MMSA's `MetricsTop.__eval_mosei_regression` reports them.

    `preds` and `labels` are on the datasets' own [-3, 3] scale: multiply a [-1, 1] sentiment score by 3 first.

    - `mae`, `corr`: mean absolute error and Pearson correlation on the raw values (`corr` is nan when either side
      is constant).
    - `acc2_has0`, `f1_has0` ("Has0"): negative (< 0) vs non-negative (>= 0) over all clips.
    - `acc2_non0`, `f1_non0` ("Non0"): clips labelled exactly 0 are dropped, then negative (< 0) vs positive (> 0);
      `n_non0` clips remain (nan scores when none do). Papers' "Acc-2 / F1" is usually this pair, sometimes reported
      as "has0/non0".
    - `acc5`, `acc7`: both sides clipped to [-2, 2] / [-3, 3] and rounded to the nearest integer (half to even,
      as `np.round`) before comparing.

    F1 is sklearn's weighted F1. MMSA's names: Has0_acc_2, Has0_F1_score, Non0_acc_2, Non0_F1_score, Mult_acc_5,
    Mult_acc_7, MAE, Corr.
    """
    p, t = _regression_inputs(preds, labels)
    acc2_has0, f1_has0 = _binary_scores(t >= 0, p >= 0)
    non0 = t != 0
    acc2_non0, f1_non0 = _binary_scores(t[non0] > 0, p[non0] > 0)
    return {
        "n": int(t.size),
        "mae": float(np.abs(p.astype(np.float64) - t.astype(np.float64)).mean()),
        "corr": _pearson(p, t),
        "acc2_has0": acc2_has0,
        "f1_has0": f1_has0,
        "acc2_non0": acc2_non0,
        "f1_non0": f1_non0,
        "n_non0": int(non0.sum()),
        "acc5": _multiclass_acc(np.clip(p, -2.0, 2.0), np.clip(t, -2.0, 2.0)),
        "acc7": _multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(t, -3.0, 3.0)),
    }


# MMSA's SIMS class edges; every class is the half-open interval (lower, upper].
SIMS_BINS_2: tuple[float, ...] = (-1.01, 0.0, 1.01)
SIMS_BINS_3: tuple[float, ...] = (-1.01, -0.1, 0.1, 1.01)
SIMS_BINS_5: tuple[float, ...] = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)


def _sims_classes(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Class index i where edges[i] < x <= edges[i+1], compared in float32 as MMSA does (x is already in [-1, 1])."""
    return np.digitize(x, np.asarray(edges[1:-1], dtype=np.float32), right=True)


def sims_regression_report(preds: Sequence[float], labels: Sequence[float]) -> dict:
    """CH-SIMS / CH-SIMS v2 sentiment metrics exactly as MMSA's `MetricsTop.__eval_sims_regression` reports them.

    Predictions and labels are first clipped to [-1, 1]; every metric, MAE and correlation included, uses the
    clipped values. `acc2`, `acc3`, `acc5` bin both sides with `SIMS_BINS_2/3/5` (classes (lower, upper]: e.g. 2-class
    is <= 0 vs > 0) and compare; `f1` is the weighted F1 of the 2-class bins. MMSA's names: Mult_acc_2, Mult_acc_3,
    Mult_acc_5, F1_score, MAE, Corr.
    """
    p, t = _regression_inputs(preds, labels)
    p, t = np.clip(p, -1.0, 1.0), np.clip(t, -1.0, 1.0)
    p2, t2 = _sims_classes(p, SIMS_BINS_2), _sims_classes(t, SIMS_BINS_2)
    return {
        "n": int(t.size),
        "mae": float(np.abs(p.astype(np.float64) - t.astype(np.float64)).mean()),
        "corr": _pearson(p, t),
        "acc2": 100.0 * float(np.mean(p2 == t2)),
        "acc3": 100.0 * float(np.mean(_sims_classes(p, SIMS_BINS_3) == _sims_classes(t, SIMS_BINS_3))),
        "acc5": 100.0 * float(np.mean(_sims_classes(p, SIMS_BINS_5) == _sims_classes(t, SIMS_BINS_5))),
        "f1": 100.0 * f1_score(t2, p2, average="weighted", zero_division=0),
    }


def word_error_rate(ref: str, hyp: str) -> float:
    """Word-level Levenshtein distance / reference words (case and punctuation ignored)."""
    norm = lambda s: "".join(ch.lower() if ch.isalnum() or ch == "'" else " " for ch in s).split()
    r, h = norm(ref), norm(hyp)
    d = np.arange(len(h) + 1)
    for i, rw in enumerate(r, 1):
        prev, d[0] = d.copy(), i
        for j, hw in enumerate(h, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (rw != hw))
    return float(d[len(h)]) / max(1, len(r))


def calibration_report(probs: np.ndarray, gold: Sequence[int], bins: int = 15) -> dict:
    """Expected calibration error over `bins` equal-width confidence bins (Guo et al., 2017), with the per-bin
    confidence / accuracy / count a reliability diagram draws, plus NLL, Brier score and mean confidence.
    `probs`: (N, C) rows summing to 1; `gold`: the true class index per row. ECE in [0, 1], not percent."""
    p = np.asarray(probs, float)
    y = np.asarray(gold, int)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, conf, minlength=bins)
    acc_sum = np.bincount(which, correct, minlength=bins)
    ece = float(np.abs(acc_sum - conf_sum).sum() / max(1, len(y)))
    onehot = np.eye(p.shape[1])[y]
    with np.errstate(divide="ignore"):
        nll = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))
    nonzero = count > 0
    return {
        "n": int(len(y)),
        "ece": ece,
        "nll": nll,
        "brier": float(np.mean(((p - onehot) ** 2).sum(axis=1))),
        "mean_confidence": float(conf.mean()),
        "accuracy": float(correct.mean()),
        "bins": {"edges": edges.tolist(), "count": count.tolist(),
                 "confidence": np.where(nonzero, conf_sum / np.maximum(count, 1), np.nan).tolist(),
                 "accuracy": np.where(nonzero, acc_sum / np.maximum(count, 1), np.nan).tolist()},
    }


def fit_temperature(log_probs: np.ndarray, gold: Sequence[int], weights: Sequence[float] | None = None) -> float:
    """The temperature T minimizing the (weighted) NLL of softmax(log_probs / T): temperature scaling. `log_probs` may
    be any logits up to a per-row constant (log-probabilities of a softmax work). Searched on log T in [0.05, 20]."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z = np.asarray(log_probs, float)
    y = np.asarray(gold, int)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)

    def nll(log_t: float) -> float:
        lp = log_softmax(z / math.exp(log_t), axis=1)[np.arange(len(y)), y]
        return float(-(w * lp).sum() / w.sum())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def reliability_diagram(reports: dict[str, dict], path: str, title: str) -> None:
    """A PNG reliability diagram: accuracy vs confidence per bin for each named `calibration_report` (e.g. before and
    after calibration), the diagonal for reference, ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for (name, rep), marker in zip(reports.items(), "os^D"):
        b = rep["bins"]
        ok = [i for i, c in enumerate(b["count"]) if c > 0]
        ax.plot([b["confidence"][i] for i in ok], [b["accuracy"][i] for i in ok], marker=marker,
                label=f"{name}: ECE {rep['ece']:.3f} (n={rep['n']})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label's probability)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""`python -m egmf_core.research.gate_analysis --checkpoint <path|default> [--datasets meld ravdess] [--limit N] [--out-dir DIR]`.

Does the hierarchical gate route? The paper's case for expert-guided fusion breaks when the gate weights alpha
collapse onto one expert, when the experts compute the same thing, or when alpha hardly changes with the input. This
scores each dataset once with `egmf_core.research.evaluate`'s code and reports, per dataset and per gold emotion, the
mean weight of each expert and the gate's entropy, the experts' mean pairwise output cosine, the across-utterance spread
of alpha and a rank test of alpha across gold emotions, with a flag for each break condition. The MMSA sentiment
benchmarks (`--datasets mosei`, ...) have no emotion labels: there the groups are the sign of the gold sentiment score
(negative / neutral / positive), and the report says so. Writes gate_analysis.md, gate_analysis.json and
gate_alpha_hist.png (alpha per expert per dataset) into the out dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.stats import kruskal

from .analysis import (
    EXPERT_NAMES,
    ExampleSets,
    add_dataset_args,
    command_line,
    dataset_title,
    describe_examples,
    fmt_triple,
    markdown_table,
    parse_limits,
    parse_mmsa_folders,
    progress,
)
from ..checkpoint import CheckpointError, checkpoint_version, load_checkpoint
from ..data import DatasetError
from .evaluate import predict_examples
from .metrics import expert_similarity, gate_report

# Break conditions. Thresholds are conventions, stated in the report so a reader can apply their own.
COLLAPSE_MAX_ALPHA = 0.95  # mean (over utterances) of the largest weight above this: one expert does all the work
REDUNDANT_COSINE = 0.9  # experts' mean pairwise output cosine above this: they compute the same thing
STATIC_STD = 0.01  # every expert's weight varies less than this across utterances: the gate ignores its input
SIGNIFICANCE = 0.01  # Kruskal-Wallis p below this / (active experts): alpha depends on the gold emotion
# How the utterances are grouped for the rank test and the per-group table, by `gate_statistics(by=...)`: the JSON
# keys are `per_<by>`, `kruskal_wallis_by_gold_<by>` and the flag `<by>_dependent`.
GROUPINGS: dict[str, str] = {
    "emotion": "gold emotion",
    "sentiment_sign": "gold sentiment sign (no emotion labels: negative < 0, neutral = 0, positive > 0)",
}
SENTIMENT_SIGNS: tuple[str, ...] = ("negative", "neutral", "positive")


def sentiment_signs(scores: Sequence[float]) -> list[str]:
    """An MMSA data set's groups for the gate: the sign of each clip's gold sentiment score (it has no emotions)."""
    return [SENTIMENT_SIGNS[int(np.sign(s)) + 1] for s in scores]


def kruskal_by_group(values: np.ndarray, groups: Sequence[str]) -> dict:
    """Kruskal-Wallis H test of one expert's weight across groups (gold emotions, or gold sentiment signs).

    A rank test, because gate weights are bounded and skewed (ANOVA's normal residuals do not hold). With thousands of
    utterances even a negligible difference is significant, so the effect size epsilon^2 = H / (n - 1) (0: no
    difference, 1: the emotion determines the ranks) comes with it. None where the test is undefined: fewer than two
    emotions, or a constant weight (a dropped expert).
    """
    groups = np.asarray(groups)
    samples = [values[groups == g] for g in dict.fromkeys(groups.tolist())]
    if len(samples) < 2 or np.ptp(values) == 0:
        return {"H": None, "p": None, "epsilon_squared": None}
    h, p = kruskal(*samples)
    return {"H": float(h), "p": float(p), "epsilon_squared": float(h / (len(values) - 1))}


def gate_statistics(
    alpha: np.ndarray, expert_outputs: np.ndarray, gold: Sequence[str], labels: Sequence[str], by: str = "emotion"
) -> dict:
    """Everything the report says about one dataset's gate: alpha (N, 3), expert outputs (N, 3, d), each utterance's
    group `gold` among `labels` (gold emotions, or for `by="sentiment_sign"` the signs of gold sentiment scores)."""
    if by not in GROUPINGS:
        raise ValueError(f"gate_statistics by={by!r}: expected one of {tuple(GROUPINGS)}")
    a = np.asarray(alpha, dtype=float)
    entropy = -(a * np.log(np.clip(a, 1e-12, 1.0))).sum(axis=1)
    base = gate_report(a)
    gold_arr = np.asarray(gold)
    per_group = {}
    for lab in labels:
        rows = gold_arr == lab
        if rows.any():
            per_group[lab] = {"n": int(rows.sum()), "alpha_mean": a[rows].mean(axis=0).tolist(),
                                "entropy_mean": float(entropy[rows].mean())}
    tests = [kruskal_by_group(a[:, i], gold) for i in range(a.shape[1])]
    active = int((a.max(axis=0) > 0).sum())  # a dropped expert's weight is exactly 0 everywhere
    cosine = expert_similarity(expert_outputs)
    max_alpha_mean = float(a.max(axis=1).mean())
    flags = {
        "collapsed": max_alpha_mean > COLLAPSE_MAX_ALPHA,
        "redundant": cosine > REDUNDANT_COSINE,
        "static": max(base["alpha_std"]) < STATIC_STD,
        f"{by}_dependent": any(t["p"] is not None and t["p"] < SIGNIFICANCE / active for t in tests),
    }
    return {
        "n": len(a),
        "alpha_mean": base["alpha_mean"],
        "alpha_std": base["alpha_std"],
        "entropy_mean": base["entropy_mean"],
        "entropy_relative": base["entropy_mean"] / math.log(a.shape[1]),
        "max_alpha_mean": max_alpha_mean,
        "argmax_share": (np.bincount(a.argmax(axis=1), minlength=a.shape[1]) / len(a)).tolist(),
        "expert_cosine": cosine,
        "grouped_by": by,
        f"kruskal_wallis_by_gold_{by}": tests,
        f"per_{by}": per_group,
        "flags": flags,
    }


def plot_histograms(alphas: dict[str, np.ndarray], path: Path) -> Path:
    """One row per dataset, one panel per expert: how the gate weight is distributed over utterances."""
    fig = Figure(figsize=(10, 2.6 * len(alphas) + 0.4), layout="constrained")
    axes = fig.subplots(len(alphas), 3, squeeze=False, sharex=True)
    bins = np.linspace(0.0, 1.0, 41)
    for r, (key, a) in enumerate(alphas.items()):
        for i, name in enumerate(EXPERT_NAMES):
            ax = axes[r][i]
            ax.hist(a[:, i], bins=bins, color=f"C{i}")
            ax.set_title(f"{key}: alpha {name} (mean {a[:, i].mean():.2f})", fontsize=9)
            ax.set_xlim(0.0, 1.0)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[r][0].set_ylabel("utterances")
    for ax in axes[-1]:
        ax.set_xlabel("gate weight")
    fig.savefig(path, dpi=100)
    return path


def render_markdown(result: dict, command: str, image: str) -> str:
    parts = [
        "# Gate analysis", "",
        f"Checkpoint `{result['checkpoint']}` (model `{result.get('model_version', '?')}`). Command: `{command}` "
        f"({result['seconds']:.0f} s).", "",
        "Break conditions of expert-guided fusion, per dataset: **collapsed** = mean of the largest gate weight > "
        f"{COLLAPSE_MAX_ALPHA} (one expert does all the work); **redundant** = experts' mean pairwise output cosine > "
        f"{REDUNDANT_COSINE}; **static** = every expert's weight has an across-utterance std < {STATIC_STD} (alpha "
        "does not depend on the input); **group-dependent** = a Kruskal-Wallis test of an expert's weight across the "
        f"groups gives p < {SIGNIFICANCE} / (active experts), with epsilon^2 = H / (n - 1) as the effect size. The "
        "groups are the gold emotions; the MMSA sentiment data sets have no emotion labels, so there they are the sign "
        "of the gold sentiment score (negative < 0, neutral = 0, positive > 0). "
        "Entropy is per utterance, in nats, relative to its maximum ln 3 (equal weights).", "",
    ]
    header = ["dataset", "n", "alpha mean (E1 / E2 / E3)", "alpha std", "entropy / ln 3", "mean max alpha",
              "argmax share", "expert cosine", "groups", "K-W p (E1 / E2 / E3)", "K-W epsilon^2", "collapsed",
              "redundant", "static", "group-dependent"]
    rows = []
    for key, d in result["datasets"].items():
        g = d["gate"]
        by = g["grouped_by"]
        tests = g[f"kruskal_wallis_by_gold_{by}"]
        rows.append([key, g["n"], fmt_triple(g["alpha_mean"]), fmt_triple(g["alpha_std"]),
                     f"{g['entropy_relative']:.3f}",
                     f"{g['max_alpha_mean']:.3f}", fmt_triple(g["argmax_share"]), f"{g['expert_cosine']:.3f}",
                     GROUPINGS[by].split(" (")[0], " / ".join(_num(t["p"], ".2g") for t in tests),
                     " / ".join(_num(t["epsilon_squared"], ".3f") for t in tests),
                     *("yes" if g["flags"][f] else "no"
                       for f in ("collapsed", "redundant", "static", f"{by}_dependent"))])
    parts += ["## Break conditions", "", markdown_table(header, rows), "",
              f"![gate weight histograms per expert and dataset]({image})", ""]
    for d in result["datasets"].values():
        g = d["gate"]
        by = g["grouped_by"]
        table = [[lab, e["n"], *(f"{x:.3f}" for x in e["alpha_mean"]), f"{e['entropy_mean']:.3f}"]
                 for lab, e in g[f"per_{by}"].items()]
        table.append(["all", g["n"], *(f"{x:.3f}" for x in g["alpha_mean"]), f"{g['entropy_mean']:.3f}"])
        column = GROUPINGS[by].split(" (")[0]
        parts += [f"## {dataset_title(d)}: gate by {GROUPINGS[by]}", "",
                  markdown_table([column, "n", *(f"alpha {n}" for n in EXPERT_NAMES), "entropy (nats)"], table), ""]
    parts.append("Raw numbers (every utterance's alpha included): the JSON file beside this one.")
    return "\n".join(parts) + "\n"


def _num(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.gate_analysis", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default", help="checkpoint file, or 'default' for the shipped one")
    add_dataset_args(ap)
    ap.add_argument("--out-dir", default="benchmarks/results", help="where gate_analysis.md/.json and the PNG go")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    datasets = list(dict.fromkeys(args.datasets))
    out_dir = Path(args.out_dir)
    start = time.perf_counter()
    try:
        limits = parse_limits(args.limit, datasets)
        folders = parse_mmsa_folders(args.mmsa_folder, datasets)
        model = load_checkpoint(args.checkpoint)
        sets = ExampleSets(args.split, limits, folders)
        results, alphas = {}, {}
        for spec in datasets:
            t0 = time.perf_counter()
            examples = sets.get(model, spec)
            preds = predict_examples(model, examples, args.batch_size, progress=True)
            alpha = np.array([p.alpha for p in preds], dtype=float)
            info = describe_examples(spec, args.split, limits[spec.name], examples)
            outputs = np.stack([p.expert_outputs for p in preds])
            if spec.is_mmsa:
                gate = gate_statistics(alpha, outputs, sentiment_signs(info["gold_score"]), SENTIMENT_SIGNS,
                                       by="sentiment_sign")
            else:
                gate = gate_statistics(alpha, outputs, info["gold_emotion"],
                                       model.prompts.label_sets[info["label_set"]])
            results[spec.key] = {**info, "gate": gate, "alpha": np.round(alpha, 6).tolist()}
            alphas[spec.key] = alpha
            flags = ", ".join(f for f, on in gate["flags"].items() if on) or "none"
            progress(f"{spec.key}: n={gate['n']} grouped by {GROUPINGS[gate['grouped_by']]}: alpha mean "
                     f"{fmt_triple(gate['alpha_mean'], 3)} entropy/ln3 {gate['entropy_relative']:.3f} expert cosine "
                     f"{gate['expert_cosine']:.3f} flags: {flags} ({time.perf_counter() - t0:.1f} s)")
    except (CheckpointError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    image = plot_histograms(alphas, out_dir / "gate_alpha_hist.png")
    result = {
        "checkpoint": str(args.checkpoint),
        "model_version": checkpoint_version(args.checkpoint, model.cfg.backbone.name),
        "split": args.split,
        "thresholds": {"collapse_max_alpha": COLLAPSE_MAX_ALPHA, "redundant_cosine": REDUNDANT_COSINE,
                       "static_std": STATIC_STD, "significance": SIGNIFICANCE},
        "datasets": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / "gate_analysis.json").write_text(json.dumps(result))
    (out_dir / "gate_analysis.md").write_text(render_markdown(result,
                                                              command_line("egmf_core.research.gate_analysis", argv),
                                                              image.name))
    progress(f"report: {out_dir / 'gate_analysis.md'}, {out_dir / 'gate_analysis.json'}, {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

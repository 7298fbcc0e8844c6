"""`python -m egmf_core.research.ablate --checkpoint <path|default> [--checkpoint ...] [--datasets meld ravdess] [--limit N]`.

The paper's ablation study (modalities, experts, gating, LoRA) as test-time ablations: each variant is the same
trained checkpoint reloaded with one switch of its config changed (`load_checkpoint(path, overrides=...)`) and scored
with `egmf_core.research.evaluate`'s code on the same examples. That measures how much a trained model relies on each
part. The paper's own numbers come from variants retrained without the part (`egmf_core.research.ablate_retrained`);
given such checkpoints (one `--checkpoint` each, `--variants full`), this command tabulates them side by side. Writes a
Markdown table and, beside it, the raw numbers (full reports and every utterance's prediction) as JSON. The MMSA
sentiment benchmarks (`--datasets mosei`, ...) are tabulated with MMSA's regression metrics instead of emotion F1 and
accuracy.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .analysis import (
    DatasetSpec,
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
from ..checkpoint import CheckpointError, checkpoint_version, load_checkpoint, read_metadata
from ..config import ConfigError, EGMFConfig
from ..data import DatasetError
from ..data.mmsa import MMSA_DATASETS
from .evaluate import predict_examples, report
from ..model_io import Prediction


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    # The checkpoint's own config -> `load_checkpoint` overrides. A function, because dropping one expert must keep
    # the checkpoint's other expert switches (a checkpoint retrained without E1 stays without it).
    overrides: Callable[[EGMFConfig], dict]


def _without_expert(i: int) -> Callable[[EGMFConfig], dict]:
    def overrides(cfg: EGMFConfig) -> dict:
        experts = list(cfg.ablation.experts)
        experts[i] = False
        return {"ablation": {"experts": experts}}

    return overrides


VARIANTS: tuple[Variant, ...] = (
    Variant("full", "full model", lambda cfg: {}),
    Variant("no_audio", "w/o audio", lambda cfg: {"ablation": {"use_audio": False}}),
    Variant("no_video", "w/o video", lambda cfg: {"ablation": {"use_video": False}}),
    Variant("no_text", "w/o text", lambda cfg: {"ablation": {"use_text": False}}),
    Variant("no_audio_video", "w/o audio+video", lambda cfg: {"ablation": {"use_audio": False, "use_video": False}}),
    Variant("no_e1", "w/o E1 (local)", _without_expert(0)),
    Variant("no_e2", "w/o E2 (semantic)", _without_expert(1)),
    Variant("no_e3", "w/o E3 (global)", _without_expert(2)),
    Variant("uniform_gating", "uniform gating", lambda cfg: {"ablation": {"gating": "uniform"}}),
    Variant("no_lora", "w/o LoRA", lambda cfg: {"lora": {"enabled": False}}),
)
VARIANT_NAMES: tuple[str, ...] = tuple(v.name for v in VARIANTS)

HEADER = """\
**Test-time ablations of one trained checkpoint, not retrained variants.** Each row reloads the same weights with
one part removed at inference (a modality masked, an expert's gate weight forced to 0, equal gate weights over the
experts, or the LLM without its LoRA adapter) and scores it with `egmf_core.research.evaluate`'s code on the same utterances.
This measures how much the trained model relies on each part; the paper instead retrains every variant, which
`python -m egmf_core.research.ablate_retrained` does (`ablations_retrained.md`). Checkpoints trained by hand with an
`ablation:` section in the YAML config (as `configs/default.yaml` shows; `lora: enabled: false` for w/o LoRA) can
also be given here, each with its own `--checkpoint` (with `--variants full`): one row block per checkpoint."""


def not_applicable(cfg: EGMFConfig, overrides: dict) -> str | None:
    """Why a variant cannot be made from this checkpoint, or None: it would change nothing (the checkpoint was
    trained without that part) or leave no valid model (e.g. no expert left)."""
    if not overrides:
        return None
    merged = cfg.to_dict()
    for section, values in overrides.items():
        merged[section].update(values)
    if merged == cfg.to_dict():
        return "already off in this checkpoint"
    try:
        EGMFConfig.from_dict(merged)
    except ConfigError as exc:
        return f"not a valid model: {exc}"
    return None


# MMSA's metrics as the tables show them, in MMSA's order: (score, column, digits). `scores` keeps those the data
# set's report has (MOSI/MOSEI: has-0 and non-0 Acc-2, Acc-5, Acc-7; SIMS: Acc-2/3/5 and F1).
REGRESSION_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("mae", "MAE", 3), ("corr", "Corr", 3),
    ("acc2_has0", "Acc-2 has-0", 2), ("f1_has0", "F1 has-0", 2), ("acc2_non0", "Acc-2 non-0", 2),
    ("f1_non0", "F1 non-0", 2),
    ("acc2", "Acc-2", 2), ("acc3", "Acc-3", 2), ("acc5", "Acc-5", 2), ("acc7", "Acc-7", 2), ("f1", "F1", 2),
)


def scores(rep: dict) -> dict[str, float]:
    """The table's numbers from one `evaluate.report` (percentages, except MMSA's MAE and Corr; gate entropy in
    nats): emotion and sentiment F1 and accuracy, or an MMSA data set's regression metrics."""
    if "sentiment_regression" in rep:
        reg = rep["sentiment_regression"]
        out = {m: reg[m] for m, _, _ in REGRESSION_COLUMNS if m in reg}
    else:
        out = {"emotion_accuracy": rep["emotion"]["accuracy"], "emotion_weighted_f1": rep["emotion"]["weighted_f1"]}
        if "sentiment" in rep:
            out["sentiment_weighted_f1"] = rep["sentiment"]["weighted_f1"]
    out["alpha_entropy"] = rep["gate"]["entropy_mean"]
    out["expert_cosine"] = rep["expert_cosine"]
    return out


def dataset_result(rep: dict, preds: Sequence[Prediction]) -> dict:
    """One variant on one dataset: its scores, the gate weights' range (to check masking and uniform gating
    exactly) and every utterance's answer, in example order (paired comparisons between variants need them)."""
    alpha = np.array([p.alpha for p in preds], dtype=float)
    return {
        "scores": scores(rep),
        "alpha_mean": rep["gate"]["alpha_mean"],
        "alpha_min": alpha.min(axis=0).tolist(),
        "alpha_max": alpha.max(axis=0).tolist(),
        "alpha_row_sum_max_error": float(np.abs(alpha.sum(axis=1) - 1.0).max()),
        "predictions": {"emotion": [p.emotion for p in preds], "sentiment_score": [p.sentiment_score for p in preds]},
        "report": rep,
    }


def run_ablations(
    checkpoints: Sequence[str],
    variants: Sequence[Variant],
    datasets: Sequence[DatasetSpec],
    split: str,
    limits: dict[str, int | None],
    batch_size: int = 16,
    mmsa_folders: dict[str, str] | None = None,
) -> dict:
    """Score every variant of every checkpoint on every dataset; returns the JSON-ready result."""
    sets = ExampleSets(split, limits, mmsa_folders)
    info: dict[str, dict] = {}
    blocks = []
    start = time.perf_counter()
    total, k = len(checkpoints) * len(variants), 0
    for ckpt in checkpoints:
        cfg, _ = read_metadata(ckpt)
        rows = []
        for variant in variants:
            k += 1
            overrides = variant.overrides(cfg)
            reason = not_applicable(cfg, overrides)
            if reason:
                progress(f"[{k}/{total}] {ckpt} {variant.label}: skipped ({reason})")
                rows.append({"variant": variant.name, "label": variant.label, "overrides": overrides,
                             "skipped": reason})
                continue
            t0 = time.perf_counter()
            model = load_checkpoint(ckpt, overrides=overrides)
            per_dataset = {}
            for spec in datasets:
                examples = sets.get(model, spec)
                info.setdefault(spec.key, describe_examples(spec, split, limits[spec.name], examples))
                preds = predict_examples(model, examples, batch_size, progress=True)
                per_dataset[spec.key] = dataset_result(report(model, examples, preds), preds)
            del model
            gc.collect()
            seconds = time.perf_counter() - t0
            rows.append({"variant": variant.name, "label": variant.label, "overrides": overrides,
                         "seconds": round(seconds, 1), "datasets": per_dataset})
            summary = " | ".join(f"{key} " + scores_line(r["scores"]) for key, r in per_dataset.items())
            progress(f"[{k}/{total}] {ckpt} {variant.label}: {summary} ({seconds:.1f} s; "
                     f"{time.perf_counter() - start:.0f} s elapsed)")
        _add_deltas(rows)
        blocks.append({"checkpoint": str(ckpt), "model_version": checkpoint_version(ckpt, cfg.backbone.name),
                       "variants": rows})
    return {
        "kind": "test-time ablations (parts removed at inference from trained checkpoints; not retrained)",
        "split": split,
        "datasets": info,
        "checkpoints": blocks,
        "seconds": round(time.perf_counter() - start, 1),
    }


def scores_line(s: dict[str, float]) -> str:
    """One variant's scores on one dataset, for the progress lines."""
    if "mae" in s:
        return " ".join(f"{label} {s[m]:.{digits}f}" for m, label, digits in REGRESSION_COLUMNS if m in s)
    out = f"emotion wF1 {s['emotion_weighted_f1']:.2f} acc {s['emotion_accuracy']:.2f}"
    if "sentiment_weighted_f1" in s:
        out += f" sentiment wF1 {s['sentiment_weighted_f1']:.2f}"
    return out


def _add_deltas(rows: list[dict]) -> None:
    """Each scored variant's difference to the full model of the same checkpoint (the first row)."""
    full = rows[0]["datasets"]
    for row in rows:
        for key, res in row.get("datasets", {}).items():
            res["delta_vs_full"] = {m: v - full[key]["scores"][m] for m, v in res["scores"].items()}


def render_markdown(result: dict, command: str) -> str:
    several = len(result["checkpoints"]) > 1
    models = ", ".join(f"`{b.get('model_version', b['checkpoint'])}`" for b in result["checkpoints"])
    parts = ["# Ablations", "", HEADER, "", f"Command: `{command}` ({result['seconds']:.0f} s). Model: {models}.", ""]
    for key, info in result["datasets"].items():
        full = result["checkpoints"][0]["variants"][0]  # always scored
        metrics = _columns(info, full["datasets"][key]["scores"])
        header = (["checkpoint"] if several else []) + ["variant"] + [m[1] for m in metrics] + [
            "alpha mean (E1 / E2 / E3)", "alpha entropy (nats)"]
        rows = []
        for block in result["checkpoints"]:
            for row in block["variants"]:
                cells = [block["checkpoint"]] if several else []
                cells.append(row["label"])
                if "skipped" in row:
                    rows.append(cells + [f"n/a: {row['skipped']}"] + [""] * (len(header) - len(cells) - 1))
                    continue
                res = row["datasets"][key]
                is_full = row["variant"] == "full"
                cells += [_cell(res, m, digits, is_full) for m, _, digits in metrics]
                cells += [fmt_triple(res["alpha_mean"]), _cell(res, "alpha_entropy", 3, is_full)]
                rows.append(cells)
        present = info["modalities_present"]
        counts = ", ".join(f"{m} {n}" for m, n in present.items())
        parts += [f"## {dataset_title(info)}", "", f"Modalities present (utterances): {counts}.{_absent_note(present)}",
                  "", markdown_table(header, rows), ""]
    parts.append("Scores in percent; (+/-x) is the difference to the full model of the same checkpoint. The gate "
                 "entropy's maximum is ln 3 = 1.099 nats (equal weights). Raw numbers: the JSON file beside this one.")
    if any(info["dataset"] in MMSA_DATASETS for info in result["datasets"].values()):
        parts.append("MMSA data sets: MMSA's metrics of the predicted sentiment score against the gold label on the "
                     "data set's own scale; MAE (lower is better) in label units and Corr (Pearson r) are not "
                     "percentages.")
    return "\n".join(parts) + "\n"


def _columns(info: dict, full_scores: dict[str, float]) -> list[tuple[str, str, int]]:
    """A dataset's metric columns: (score, header, digits). RAVDESS leads with its 8-class accuracy, the MMSA data
    sets show their regression metrics, the others emotion weighted F1 and accuracy (and sentiment F1 if scored)."""
    if "mae" in full_scores:
        return [c for c in REGRESSION_COLUMNS if c[0] in full_scores]
    if info["label_set"] == "ravdess":
        metrics = [("emotion_accuracy", "8-class acc", 2), ("emotion_weighted_f1", "emotion wF1", 2)]
    else:
        metrics = [("emotion_weighted_f1", "emotion wF1", 2), ("emotion_accuracy", "emotion acc", 2)]
    if "sentiment_weighted_f1" in full_scores:
        metrics.append(("sentiment_weighted_f1", "sentiment wF1", 2))
    return metrics


def _cell(res: dict, metric: str, digits: int, is_full: bool) -> str:
    value = f"{res['scores'][metric]:.{digits}f}"
    return value if is_full else f"{value} ({res['delta_vs_full'][metric]:+.{digits}f})"


def _absent_note(present: dict[str, int]) -> str:
    absent = [m for m, n in present.items() if n == 0]
    if not absent:
        return ""
    return (f" No utterance has {' or '.join(absent)}, so removing {'it' if len(absent) == 1 else 'them'} changes "
            "nothing: those rows equal the full model by construction.")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.ablate", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", default=None,
                    help="checkpoint file, or 'default' for the shipped one (repeatable: one row block per checkpoint)")
    add_dataset_args(ap)
    ap.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=list(VARIANT_NAMES),
                    help="variants to score (default: all); the full model is always scored, deltas are against it")
    ap.add_argument("--out", default="benchmarks/results/ablations.md", help="Markdown report; the JSON goes beside it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    checkpoints = list(dict.fromkeys(args.checkpoint or ["default"]))
    datasets = list(dict.fromkeys(args.datasets))
    variants = [v for v in VARIANTS if v.name == "full" or v.name in args.variants]
    try:
        limits = parse_limits(args.limit, datasets)
        folders = parse_mmsa_folders(args.mmsa_folder, datasets)
        result = run_ablations(checkpoints, variants, datasets, args.split, limits, args.batch_size, folders)
    except (CheckpointError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(result, command_line("egmf_core.research.ablate", argv)))
    out.with_suffix(".json").write_text(json.dumps(result))
    progress(f"report: {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

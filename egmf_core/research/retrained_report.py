"""The retrained ablations' Markdown report (:func:`render_markdown`): one table per test set, every variant's
mean (and spread over seeds) with its difference to the full model, its dev score and its gate statistics.

Apart from the sweep (`egmf_core.research.ablate_retrained`) because it reads only the sweep's JSON result.
"""

from __future__ import annotations

import numpy as np

from .ablate import REGRESSION_COLUMNS
from .analysis import fmt_triple, markdown_table

__all__ = ["HEADER_FUSION", "HEADER_ANSWERS", "render_markdown"]


HEADER_FUSION = """\
**Retrained ablations of the fusion stack.** Every row is trained from scratch without the part, with the same
recipe, data, seeds and number of steps, selected on dev, and scored on the test split. Fusion-only recipe: the
fusion stack learns through the auxiliary emotion head on f_enhanced (the vector the K pseudo tokens are projected
from) and is scored by that head, so the table measures what each part adds to the fused representation; the LLM is
not trained or run (the paper's own retrained variants also fine-tune the LLM; `--config` with `train.lm_weight > 0`
runs that recipe, practical on a GPU). Complements `ablations.md`, which removes parts from the shipped checkpoint
at inference."""

HEADER_ANSWERS = """\
**Retrained ablations.** Every row is trained from scratch without the part (LoRA + fusion, answer loss), with the
same recipe, data, seeds and number of steps, selected on dev, and scored by the LLM's answers on the test split with
`egmf_core.research.evaluate`'s code, as the paper's ablation table. Complements `ablations.md` """ \
    "(parts removed at inference)."


def render_markdown(result: dict, command: str) -> str:
    seeds = result["seeds"]
    runs = [r for row in result["variants"] for r in row.get("runs", [])]
    reused = sorted({r["reused_from"] for r in runs if "reused_from" in r})
    took = f"{result['seconds'] / 60:.0f} min"
    if reused:
        n = sum("reused_from" in r for r in runs)
        took += (f" for the runs it trained; {n} of {len(runs)} runs reused as recorded in {', '.join(reused)}, "
                 f"{sum(r['train_seconds'] for r in runs if 'reused_from' in r) / 60:.0f} min of training there")
    parts = ["# Retrained ablations", "", HEADER_FUSION if result["fusion_only"] else HEADER_ANSWERS, "",
             f"Command: `{command}` ({took}; seeds {', '.join(map(str, seeds))}; "
             f"{result['train']['epochs']} epochs of batch {result['train']['batch_size']} per run).", ""]
    full = next((r for r in result["variants"] if r["variant"] == "full" and "test" in r), None)
    for key, info in result["datasets"].items():
        n = full["test"][key]["n"] if full else "?"
        metrics = _metric_columns(full["test"][key]["mean"] if full else {})
        header = ["variant"] + [label for _, label, _ in metrics] + ["dev (selection)", "alpha mean (E1 / E2 / E3)",
                                                                     "alpha entropy", "expert cosine"]
        rows = []
        for row in result["variants"]:
            if "skipped" in row:
                rows.append([row["label"], f"not trained: {row['skipped']}"] + [""] * (len(header) - 2))
                continue
            t = row["test"][key]
            cells = [row["label"]]
            for m, _, digits in metrics:
                cell = f"{t['mean'][m]:.{digits}f}"
                if t["std"][m] is not None:
                    cell += f" ± {t['std'][m]:.{digits}f}"
                if full and row is not full:
                    cell += f" ({t['mean'][m] - full['test'][key]['mean'][m]:+.{digits}f})"
                cells.append(cell)
            dev = [r["dev_selection_score"] for r in row["runs"]]
            cells += [f"{np.mean(dev):.2f}", fmt_triple(t["alpha_mean"]), f"{t['mean']['alpha_entropy']:.3f}",
                      f"{t['mean']['expert_cosine']:.2f}"]
            rows.append(cells)
        limit = f"first {info['limit']}" if info["limit"] else "all"
        title = key.replace("@live", " (live cuts: each clip as the live segmenter cuts and frames it)")
        parts += [f"## {title}, test split ({limit}: n = {n})", "", markdown_table(header, rows), ""]
    spread = "mean ± standard deviation over the seeds" if len(seeds) > 1 else "one seed"
    parts.append(f"Scores in percent, {spread}; (+/-x) is the difference of the means to the full model. Dev: the "
                 "selection score of the kept checkpoint. Gate entropy in nats (ln 3 = 1.099 is equal weights). Raw "
                 "numbers and every run's config: the JSON file beside this one.")
    return "\n".join(parts) + "\n"


def _metric_columns(full_scores: dict) -> list[tuple[str, str, int]]:
    if "mae" in full_scores:
        return [c for c in REGRESSION_COLUMNS if c[0] in full_scores]
    cols = [("emotion_accuracy", "acc", 2), ("emotion_weighted_f1", "wF1", 2)]
    if "sentiment_weighted_f1" in full_scores:
        cols.append(("sentiment_weighted_f1", "sentiment wF1", 2))
    return cols

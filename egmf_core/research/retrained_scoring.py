"""Scoring one retrained variant on the test splits: by the LLM's answers (`egmf_core.research.evaluate`'s code) for
an answer-loss recipe, or by the auxiliary emotion head on f_enhanced for a fusion-only one (:func:`aux_report`).

Apart from the sweep (`egmf_core.research.ablate_retrained`) because it is the one part that runs a model, and the
auxiliary head's predictions are also used on their own (`benchmarks/bench_audio_probe.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .ablate import scores
from .analysis import DatasetSpec, ExampleSets
from ..checkpoint import load_checkpoint
from .evaluate import predict_examples, report
from .examples import Example
from .metrics import classification_report, expert_similarity, gate_report
from ..model import EGMFModel
from .retrained_plan import modalities_present

__all__ = ["aux_predictions", "aux_report", "score_run"]


@torch.inference_mode()
def aux_predictions(model: EGMFModel, examples: Sequence[Example],
                    batch_size: int = 32) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The auxiliary head's label for each example (argmax over the dataset's own labels, as the LLM's answer is
    constrained to them), with the gate weights (N, 3) and the experts' outputs (N, 3, d_h)."""
    label_set = examples[0].input.label_set
    labels = model.prompts.label_sets[label_set]
    columns = torch.tensor([model.aux_labels.index(lab) for lab in labels], device=model.device)
    preds, alphas, experts = [], [], []
    for b in range(0, len(examples), batch_size):
        fusion, _ = model.run_fusion([e.input for e in examples[b : b + batch_size]])
        logits = model.fusion.aux_head(fusion.enhanced)[:, columns]
        preds += [labels[i] for i in logits.argmax(-1).tolist()]
        alphas.append(fusion.alpha.float().cpu().numpy())
        experts.append(fusion.expert_outputs.float().cpu().numpy())
    return preds, np.concatenate(alphas), np.concatenate(experts)


def aux_report(model: EGMFModel, examples: Sequence[Example], batch_size: int = 32) -> dict:
    """The auxiliary head's emotion classification plus the gate and expert checks, in `evaluate.report`'s layout."""
    preds, alphas, experts = aux_predictions(model, examples, batch_size)
    labels = model.prompts.label_sets[examples[0].input.label_set]
    out = {"emotion": classification_report([e.input.emotion for e in examples], preds, labels)}
    out["gate"] = gate_report(alphas)
    out["expert_cosine"] = expert_similarity(experts)
    return out


def score_run(checkpoint: Path, fusion_only: bool, datasets: Sequence[DatasetSpec], sets: ExampleSets,
              batch_size: int) -> tuple[dict, set[str]]:
    """Test scores of one trained variant on every dataset (`ablate.scores`' keys, plus the mean gate weights), and
    the modalities the test examples have."""
    model = load_checkpoint(checkpoint)
    out, present = {}, set()
    for spec in datasets:
        examples = sets.get(model, spec)
        present |= modalities_present(examples)
        if fusion_only:
            rep = aux_report(model, examples, batch_size)
        else:
            rep = report(model, examples, predict_examples(model, examples, batch_size, progress=True))
        out[spec.key] = {"scores": scores(rep), "alpha_mean": rep["gate"]["alpha_mean"], "n": len(examples)}
    return out, present

"""The fold-ranking measurement (`egmf_core.research.fold_ranking`): it ranks labels as `EGMFModel.score` folds them,
on real MELD lines, and reports how often each ranking holds the answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egmf_core.config import EGMFConfig
from egmf_core.model import EGMFModel
from egmf_core.research.eval_examples import dataset_examples
from egmf_core.research.fold_ranking import markdown, ranks


@pytest.fixture(scope="module")
def model() -> EGMFModel:
    torch.manual_seed(0)
    return EGMFModel.build(EGMFConfig()).eval()


def test_ranks_measure_the_head_alone_and_with_the_prior(model, monkeypatch):
    """A strong prior on the label the aux head ranks last makes it the answer: the head alone ranks that answer
    last (6 labels above it), the head plus the prior first."""
    examples = dataset_examples(model, "meld", "dev", 4)
    labels = model.prompts.label_sets["default"]
    columns, _ = model._label_trees["default"]
    head = model.fusion.aux_head
    last = {}
    with torch.no_grad():
        for ex in examples:
            fusion, _ = model.run_fusion([ex.input])
            last[ex.input.current.text] = int(head(fusion.enhanced.to(head.weight.dtype)).float()[0, columns].argmin())

    def priors(rows):
        out = []
        for x in rows:
            bias = np.zeros(len(labels))
            bias[last[x.current.text]] = 50.0
            out.append((bias, False))
        return out

    monkeypatch.setattr(model, "label_priors", priors)
    r = ranks(model, examples, batch_size=2)
    assert r == {"head alone": [len(labels) - 1] * 4, "head + prior": [0] * 4}


def test_markdown_reports_both_rankings_per_set():
    result = {"date": "d", "machine": "m", "checkpoint": "c", "folded_answers": 3, "seconds": 1.0, "command": "x",
              "sets": {"MELD dev, words": {"n": 4, "head alone": {f"top{k}": 25.0 * k for k in (1, 2, 3, 4)},
                                           "head + prior": {f"top{k}": 100.0 for k in (1, 2, 3, 4)}}}}
    text = markdown(result)
    assert "| MELD dev, words | 4 | head alone | 25.0 | 50.0 | 75.0 | 100.0 |" in text
    assert "| MELD dev, words | 4 | head + prior | **100.0** |" in text

"""The auxiliary-head distillation (`egmf_core.research.distill_aux`): the fit, its metrics, and a checkpoint whose
answers stay exactly the same."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from egmf_core.research import distill_aux
from egmf_core.checkpoint import load_checkpoint, resolve
from egmf_core.research.distill_aux import HEAD_KEYS, DistillConfig, Pool, fit, hit_rates, write_checkpoint
from egmf_core.research.eval_examples import dataset_examples
from test_streaming_support import needs_espeak


def test_hit_rates_count_the_llm_answer_among_the_head_top_k():
    # three utterances, labels a/b/c; the head's scores are the features themselves (identity weight)
    enhanced = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    llm = torch.tensor([[0.9, 0.05, 0.05],  # answer a: the head's 1st
                        [0.1, 0.1, 0.8],  # answer c: the head's 2nd
                        [0.7, 0.2, 0.1]])  # answer a: the head's 3rd
    pool = Pool("p", enhanced, [0, 1, 2], llm)
    assert hit_rates(torch.eye(3), torch.zeros(3), pool) == {"top1": 33.33, "top2": 66.67, "top3": 100.0}


def test_fit_moves_the_head_to_the_llm_answers():
    g = torch.Generator().manual_seed(0)
    enhanced = torch.randn(200, 8, generator=g)
    teacher = torch.randn(4, 8, generator=g)
    llm = torch.softmax(enhanced @ teacher.t() * 3, -1)
    pools = [Pool("a", enhanced[:100], [0, 1, 2, 3], llm[:100])]
    held_out = Pool("b", enhanced[100:], [0, 1, 2, 3], llm[100:])
    w0, b0 = torch.zeros(4, 8), torch.zeros(4)
    w, b, losses = fit(w0, b0, pools, DistillConfig(steps=300, lr=0.05))
    assert losses[-1] < 0.2 * losses[0]
    assert hit_rates(w, b, held_out)["top1"] >= 90.0 > hit_rates(w0 + 1e-3 * torch.eye(4, 8), b0, held_out)["top1"]
    assert torch.equal(w0, torch.zeros(4, 8))  # the starting head is not changed in place


def test_config_refuses_bad_sizes():
    with pytest.raises(ValueError, match="DistillConfig.espeak must be >= 0, got -1"):
        DistillConfig(espeak=-1)
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1 and lr > 0"):
        DistillConfig(steps=0)


def test_written_checkpoint_changes_the_head_only(tmp_path):
    source = resolve("default")
    with safe_open(str(source), framework="pt") as f:
        before = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    w = torch.randn_like(before[HEAD_KEYS[0]])
    b = torch.randn_like(before[HEAD_KEYS[1]])
    out = tmp_path / "distilled.safetensors"
    write_checkpoint(source, out, w, b, {"what": "test"})
    with safe_open(str(out), framework="pt") as f:
        after = {k: f.get_tensor(k) for k in f.keys()}
        new_meta = f.metadata()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before if k not in HEAD_KEYS)
    assert torch.equal(after[HEAD_KEYS[0]], w) and torch.equal(after[HEAD_KEYS[1]], b)
    assert json.loads(new_meta["extra"])["aux_head_distilled"] == {"what": "test"}
    assert {k: v for k, v in new_meta.items() if k != "extra"} == {k: v for k, v in meta.items() if k != "extra"}

    # the same answers on real MELD dev utterances, whatever the head folds
    old, new = load_checkpoint(source), load_checkpoint(out)
    examples = [e.input for e in dataset_examples(old, "meld", "dev", 12)]
    for model in (old, new):
        model.eval()
    a, c = old.score(examples), new.score(examples)
    assert [(p.emotion, p.sentiment_score) for p in a] == [(p.emotion, p.sentiment_score) for p in c]
    for p, q in zip(a, c):
        assert p.emotion_probs == pytest.approx(q.emotion_probs, abs=1e-4)


@needs_espeak
def test_cli_end_to_end(tmp_path, capsys):
    out, report = tmp_path / "d.safetensors", tmp_path / "aux.md"
    rc = distill_aux.main(["--meld", "16", "--espeak", "4", "--dev-meld", "16", "--dev-espeak", "4", "--no-ravdess",
                           "--steps", "20", "--out", str(out), "--report", str(report)])
    assert rc == 0
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["train_sizes"] == {"MELD train, words": 16, "MELD train lines, espeak-ng speech": 4}
    assert set(result["dev"]) == {"MELD dev, words", "MELD dev lines, espeak-ng speech"}
    assert result["loss_last"] < result["loss_first"]
    assert out.is_file() and "| MELD dev, words | 16 |" in report.read_text()
    load_checkpoint(out)  # loads as a checkpoint like any other


def test_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    rc = distill_aux.main(["--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err

"""`python -m egmf_core.research.gate_analysis`: its files, statistics that agree with the raw alphas, and each break
flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from egmf_core.research import gate_analysis
from egmf_core.research.gate_analysis import gate_statistics

LIMITS = {"meld": 12, "ravdess": 8}  # RAVDESS's first 8 clips: 4 neutral + 4 calm, so the rank test is defined
LABELS = ["anger", "joy"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate")
    limits = [a for name, n in LIMITS.items() for a in ("--limit", f"{name}={n}")]
    assert gate_analysis.main(["--checkpoint", "default", "--datasets", "meld", "ravdess", *limits, "--out-dir",
                               str(out)]) == 0
    return out


@pytest.mark.slow
def test_writes_markdown_json_and_a_png(out_dir, shipped_model_version):
    png = out_dir / "gate_alpha_hist.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 500  # 2 dataset rows x 3 experts
    md = (out_dir / "gate_analysis.md").read_text()
    assert "## Break conditions" in md and "](gate_alpha_hist.png)" in md
    for name in LIMITS:
        assert f"## {name} test (first {LIMITS[name]} utterances" in md
    result = json.loads((out_dir / "gate_analysis.json").read_text())
    assert result["checkpoint"] == "default" and result["model_version"] == shipped_model_version
    assert f"(model `{shipped_model_version}`)" in md


@pytest.mark.slow
def test_statistics_agree_with_the_raw_alphas(out_dir):
    result = json.loads((out_dir / "gate_analysis.json").read_text())
    assert list(result["datasets"]) == list(LIMITS)
    for name, d in result["datasets"].items():
        a = np.array(d["alpha"])
        gold = np.array(d["gold_emotion"])
        g = d["gate"]
        assert a.shape == (LIMITS[name], 3) == (g["n"], 3)
        assert (a >= 0).all()
        np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(g["alpha_mean"], a.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(g["alpha_std"], a.std(axis=0), atol=1e-5)
        assert sum(e["n"] for e in g["per_emotion"].values()) == g["n"]
        for lab, e in g["per_emotion"].items():
            np.testing.assert_allclose(e["alpha_mean"], a[gold == lab].mean(axis=0), atol=1e-5)
        assert 0.0 <= g["entropy_relative"] <= 1.0
        assert g["max_alpha_mean"] == pytest.approx(a.max(axis=1).mean(), abs=1e-5)
        assert -1.0 <= g["expert_cosine"] <= 1.0
        assert set(g["flags"]) == {"collapsed", "redundant", "static", "emotion_dependent"}
        assert all(isinstance(v, bool) for v in g["flags"].values())
        assert g["flags"]["collapsed"] == (g["max_alpha_mean"] > gate_analysis.COLLAPSE_MAX_ALPHA)
        for t in g["kruskal_wallis_by_gold_emotion"]:
            assert 0.0 <= t["p"] <= 1.0 and t["epsilon_squared"] >= 0.0
    assert set(result["datasets"]["ravdess"]["gate"]["per_emotion"]) == {"neutral", "calm"}


def _gate(alpha: np.ndarray, outputs: np.ndarray | None = None) -> dict:
    rng = np.random.default_rng(1)
    outputs = rng.normal(size=(len(alpha), 3, 16)) if outputs is None else outputs
    return gate_statistics(alpha, outputs, ["anger"] * (len(alpha) // 2) + ["joy"] * (len(alpha) - len(alpha) // 2),
                           LABELS)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_routing_gate_raises_no_break_flag_and_depends_on_the_emotion():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=0.5, size=(100, 3))
    logits[50:, 0] += 1.5  # "joy" leans on E1
    g = _gate(_softmax(logits))
    assert g["flags"] == {"collapsed": False, "redundant": False, "static": False, "emotion_dependent": True}
    assert g["kruskal_wallis_by_gold_emotion"][0]["p"] < 1e-6
    assert g["per_emotion"]["joy"]["alpha_mean"][0] > g["per_emotion"]["anger"]["alpha_mean"][0]


def test_each_break_condition_is_flagged():
    rng = np.random.default_rng(0)
    collapsed = _softmax(np.column_stack([np.full(100, 6.0), rng.normal(size=100), rng.normal(size=100)]))
    assert _gate(collapsed)["flags"]["collapsed"]

    static = np.tile([0.5, 0.3, 0.2], (100, 1))
    g = _gate(static)
    assert g["flags"]["static"] and not g["flags"]["emotion_dependent"]
    assert g["kruskal_wallis_by_gold_emotion"][0] == {"H": None, "p": None, "epsilon_squared": None}

    same = np.repeat(rng.normal(size=(100, 1, 16)), 3, axis=1)  # three experts, one output
    g = _gate(_softmax(rng.normal(size=(100, 3))), same)
    assert g["expert_cosine"] == pytest.approx(1.0) and g["flags"]["redundant"]


def test_a_dropped_expert_has_no_rank_test():
    alpha = _softmax(np.random.default_rng(0).normal(size=(100, 3)))
    alpha[:, 2] = 0.0
    alpha /= alpha.sum(axis=1, keepdims=True)
    g = _gate(alpha)
    assert g["kruskal_wallis_by_gold_emotion"][2]["p"] is None
    assert g["argmax_share"][2] == 0.0

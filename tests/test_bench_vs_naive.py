"""The live-vs-naive benchmark (``benchmarks/bench_vs_naive.py``) on a 2-utterance conversation (``--quick``): both
reports are written, each pipeline streamed twice (live / naive / naive / live), and both pipelines produced a
label for every utterance. No timing thresholds: the numbers are the benchmark's to report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from test_streaming_support import REPO, needs_ravdess

pytestmark = [pytest.mark.slow, needs_ravdess,
              pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng missing")]


def test_two_utterance_report(tmp_path):
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_vs_naive.py"), "--quick", "--utterances", "2",
                    "--out", str(tmp_path)], check=True, cwd=REPO, capture_output=True, timeout=900)
    res = json.loads((tmp_path / "vs_naive.json").read_text())
    assert res["order"] == ["live", "naive", "naive", "live"] and res["utterances"] == 2
    assert [r["pipeline"] for r in res["runs"]] == res["order"]
    labels = {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}  # the shipped default label set
    for run in res["runs"]:
        rows = run["utterances"]
        assert [r["index"] for r in rows] == [1, 2], run["pipeline"]  # one result per utterance, none missed
        for r in rows:
            assert r["emotion"] in labels and r["sentiment_label"] in {"negative", "neutral", "positive"}, r
            assert r["latency_ms"] > 0 and r["analyze_ms"] > 0 and r["rtf"] > 0
    naive = [r for run in res["runs"] if run["pipeline"] == "naive" for r in run["utterances"]]
    assert {"transcribe", "audio_encoder", "generate"} <= set(naive[0]["stages_ms"])
    # the naive prompt holds the whole conversation: the second utterance's has the first as context
    assert [r["context_turns"] for r in naive[:2]] == [0, 1] and naive[0]["prompt_tokens"] < naive[1]["prompt_tokens"]
    s = res["summary"]
    for name in ("live", "naive"):
        assert s[name]["utterances"] == 4 and s[name]["latency_ms"]["p95"] >= s[name]["latency_ms"]["p50"] > 0
        assert s[name]["rtf"]["overall"] > 0
    assert set(s["ratio_naive_over_live"]) == {"p50", "p95"}
    ag = s["agreement"]["pooled"]
    assert ag["n"] == 4 and 0 <= ag["emotion_pct"] <= 100 and 0 <= ag["sentiment_label_pct"] <= 100
    # with one turn of context at most, the naive prompt holds the same turns as the live window
    assert ag["same_context"]["n"] == 4 and ag["longer_naive_context"]["n"] == 0
    m = res["machine"]
    assert m["cpu"] and len(m["load_average_before"]) == 3 and len(m["load_average_after"]) == 3
    assert set(m["cpu_flags"]) >= {"avx512_bf16", "amx_bf16", "avx512_vnni"}
    assert "Naive / live" in (tmp_path / "vs_naive.md").read_text()

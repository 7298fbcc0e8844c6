"""The encoder-window benchmark (``benchmarks/bench_whisper_window.py``) on four RAVDESS dev clips: every window gets
its encoder time, word error rate, accuracy and agreement, and the report is written. No timing thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_streaming_support import REPO, needs_ravdess

pytestmark = [pytest.mark.slow, needs_ravdess]


def test_window_report(tmp_path):
    out = tmp_path / "whisper_window"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_whisper_window.py"), "--windows", "30", "10",
                    "--limit", "4", "--out", str(out)], check=True, cwd=REPO, capture_output=True, timeout=600)
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["data"] == "RAVDESS dev (actors 11-12), 4 clips"
    assert set(res["windows"]) == {"30", "10"}
    for w, r in res["windows"].items():
        assert r["encoder_ms_p50"] > 0 and 0 <= r["wer_mean"] <= 100 and 0 <= r["accuracy8"] <= 100
        assert 0 <= r["agreement_with_30s"] <= 100
    assert res["windows"]["30"]["agreement_with_30s"] == 100.0
    assert "| 10 |" in out.with_suffix(".md").read_text()
